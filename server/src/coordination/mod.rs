//! Coordination: the instance core, one group worker per app and stream, the balancer's
//! decision and the sessions.

pub(crate) mod admin;
pub(crate) mod announcer;
pub(crate) mod balancer;
pub(crate) mod butler;
pub(crate) mod decide;
pub(crate) mod group;
pub mod liveness;
pub(crate) mod session;
