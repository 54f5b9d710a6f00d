//! Shared pieces of the cross-component tests and benchmarks: a controller running in-process on
//! loopback ports with its own fresh database ([`harness`]), an executor whose behaviour the
//! task title scripts ([`executor`]), a fleet under load ([`fleet`]), hosts of a test network
//! ([`netns`]) and the multi-host rig with its chaos run ([`chaos`]). Runners are the real runner
//! daemon, in-process or as the `e2e-runner` binary when a test must kill one; controllers run
//! in-process, or as the `e2e-controller` binary on a host of the rig.
#![deny(missing_docs)]

pub mod chaos;
pub mod executor;
pub mod fleet;
pub mod full;
pub mod harness;
pub mod netns;
pub mod sources;
