//! The Backporcher runner: enrolls with the controller once ([`identity`]), then leases tasks,
//! keeps their leases alive, ships their logs and reports their results ([`daemon`]), while an
//! [`executor::Executor`] does the actual work — in production [`sandbox_executor`]: a checkout
//! from a local mirror ([`workspace`]), the agent CLI ([`agent`]) in a Docker sandbox
//! ([`sandbox`]) whose only model access is the metering [`gateway`], verify, commit, bundle.
//!
//! [`start`] puts a runner together (the binary, the demo and the tests use it).
//!
//! Boundaries: the runner never depends on the controller crate; it talks to it only through the
//! gRPC contract in `proto`, converted to the domain types of [`task`] at the edge ([`client`]).
//! Leases are renewed by this daemon, never by the work itself.
#![deny(missing_docs)]

pub mod agent;
pub mod agent_config;
pub mod bounded;
pub mod client;
pub mod daemon;
pub mod environment;
pub mod evidence;
pub mod executor;
pub mod firewall;
pub mod gateway;
pub mod graphs;
pub mod identity;
pub mod model_requests;
pub mod pin;
pub mod privileges;
pub mod prompt;
pub mod prune;
pub mod redact;
pub mod reproduce;
pub mod retry;
pub mod sandbox;
pub mod sandbox_executor;
pub mod spool;
pub mod start;
pub mod task;
pub mod workspace;
