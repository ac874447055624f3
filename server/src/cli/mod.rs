//! The command line: every flag and its config-file key, and the `leases` and `kcl` commands.

pub mod config;
pub mod config_file;
pub mod kcl;
pub mod leases;
pub mod multilang;
