//! The command line: every flag and its config-file key, and the `leases` command.

pub mod config;
pub mod config_file;
pub mod leases;
pub mod multilang;
