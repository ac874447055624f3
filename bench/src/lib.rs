//! Benchmark support for Kinesis Butler.

pub mod fake_kinesis;
pub mod process;
pub mod scale;
