//! The Backporcher runner: enrolls with the controller once ([`identity`]), then leases tasks,
//! keeps their leases alive, ships their logs and reports their results ([`daemon`]), while an
//! [`executor::Executor`] does the actual work.
//!
//! Boundaries: the runner never depends on the controller crate; it talks to it only through the
//! gRPC contract in `proto`, converted to the domain types of [`task`] at the edge ([`client`]).
//! Leases are renewed by this daemon, never by the work itself.
#![deny(missing_docs)]

pub mod client;
pub mod daemon;
pub mod executor;
pub mod identity;
pub mod pin;
pub mod retry;
pub mod spool;
pub mod task;
