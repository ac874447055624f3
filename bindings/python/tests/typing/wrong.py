"""Must NOT type-check: mypy has to reject each marked line."""

from kinesis_butler import Batch, Consumer

consumer = Consumer("http://127.0.0.1:50051", "app", ["orders"], start="yesterday")  # E: start
consumer.run(42)  # E: not callable
batch_data: str = Batch.records  # E: wrong type
Consumer("http://x", "app", ["s"], no_such_option=1)  # E: unknown option
