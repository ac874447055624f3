//! Benchmark support for Kinesis Butler.

pub mod fake_kinesis;
