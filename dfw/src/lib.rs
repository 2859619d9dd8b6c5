//! vdfw policy engine.
//!
//! Pure logic: no I/O, no threads, no clock reads. Callers pass time in, so timeouts are
//! tested with a fake clock.

pub mod compile;
pub mod conntrack;
pub mod crd;
pub mod flow;
pub mod identity;
pub mod inventory;
pub mod model;
pub mod stateful;
