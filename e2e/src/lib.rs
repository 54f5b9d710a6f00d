//! Shared pieces of the cross-component tests and benchmarks: a controller running in-process on
//! loopback ports with its own fresh database ([`harness`]), and an executor whose behaviour the
//! task title scripts ([`executor`]), a fleet under load ([`fleet`]). Runners are the real runner daemon, in-process or as the
//! `e2e-runner` binary when a test must kill one.
#![deny(missing_docs)]

pub mod executor;
pub mod fleet;
pub mod full;
pub mod harness;
pub mod sources;
