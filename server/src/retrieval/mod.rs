//! Reading Kinesis: the aws-sdk client and its GetRecords decoder, the polling reader and
//! enhanced fan-out, the delivery both share, KPL de-aggregation and retries.

pub mod delivery;
pub mod fanout;
pub mod get_records_decoder;
pub mod kinesis;
pub mod kpl;
pub mod memory;
pub mod reader;
pub mod retry;
pub mod source;
