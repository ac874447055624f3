//! Coordination: the instance core, one group worker per app and stream, the balancer's
//! decision and the sessions.

pub mod balancer;
pub mod butler;
pub mod group;
pub mod session;
