//! The Backporcher controller: the one component that decides.
//!
//! It owns the task store in PostgreSQL ([`store`]), takes expired leases back ([`reaper`]), runs
//! the runner CA ([`pki`]) and the runner gRPC service ([`grpc`]), and serves its HTTP endpoints
//! ([`server`]). Later layers (the runner gRPC service, the forge, the
//! pipeline loops, the REST API) call into the store; none of them keeps task state in memory.
//!
//! Boundaries: the controller never depends on the runner crate; wire types stay at the edges;
//! SQL lives in [`store`] only.
#![deny(missing_docs)]

pub mod config;
pub mod forge;
pub mod grpc;
pub mod http;
pub mod intake;
pub mod model;
pub mod pipeline;
pub mod pki;
pub mod reaper;
pub mod server;
pub mod signals;
pub mod store;
