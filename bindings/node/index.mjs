// ESM entry point of kinesis-butler (the implementation is the CommonJS index.js).
import kinesisButler from './index.js'

export const {
  Consumer,
  setLogger,
  Batch,
  Record,
  ButlerError,
  ConnectionError,
  LeaseLostError,
  HandlerError,
  InvalidArgumentError,
  NotFoundError,
  UnauthenticatedError,
  StoppedError,
  ServerError,
} = kinesisButler
export default kinesisButler
