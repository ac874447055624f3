//! The gRPC surface: the `Butler` service, bearer-token auth and health. It translates
//! requests and errors and calls into [`crate::coordination`].

pub(crate) mod auth;
pub(crate) mod health;
pub(crate) mod service;
