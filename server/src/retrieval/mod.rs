//! Reading Kinesis: the aws-sdk client and its GetRecords decoder, the polling reader and
//! enhanced fan-out, the delivery both share, KPL de-aggregation and retries.

pub(crate) mod delivery;
pub(crate) mod fanout;
pub(crate) mod get_records_decoder;
pub mod kinesis;
pub(crate) mod kpl;
pub mod memory;
pub(crate) mod reader;
pub(crate) mod retry;
pub mod source;
