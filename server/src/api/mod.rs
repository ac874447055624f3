//! The gRPC surface: the `Butler` service, bearer-token auth and health. It translates
//! requests and errors and calls into [`crate::coordination`].

pub mod auth;
pub mod health;
pub mod service;
