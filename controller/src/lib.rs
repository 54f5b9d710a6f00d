//! The Backporcher controller: the one component that decides, and the only writer to GitHub.
//!
//! Along the path a task takes:
//! - [`intake`]: issues arrive (the webhook route and its decoding, the poller) and become tasks;
//! - [`pipeline::triage`]: new tasks are triaged into the queue (model, priority, dependencies);
//! - [`grpc`]: runners lease queued tasks over mTLS and report back (the runner service, [`pki`]);
//!   [`reaper`] takes expired leases back; [`retention`] prunes what piles up by age;
//!   [`cleanup`] closes the PRs and deletes the branches ended tasks leave on GitHub;
//! - [`pipeline`]: the controller stages — push and PR, review, CI, merge — and the feedback
//!   loops (reflection, learnings, breaker, notifications); [`forge`] is GitHub and [`llm`] the
//!   model API they call; [`evidence`] is the signed record of every pushed attempt, which the
//!   PR, the reviewer and the API carry;
//! - [`http`]: what people use — the REST API for the dashboard and the CLI, health and metrics.
//!
//! Underneath: [`store`] holds every decision in PostgreSQL (and all the SQL); [`fanout`] is the
//! one LISTEN connection that wakes everyone; [`loops`] is the one shape of the background loops,
//! which [`server`] lists and wires together with everything else; [`config`] is what it all
//! reads.
//!
//! Boundaries: the controller never depends on the runner crate; wire types stay at the edges
//! (`proto` in [`grpc`], `api` in [`http`]); SQL lives in [`store`] only; no task state lives in
//! memory.
#![deny(missing_docs)]

pub mod cleanup;
pub mod config;
pub mod evidence;
pub mod fanout;
pub mod forge;
pub mod grpc;
pub mod http;
pub mod intake;
pub mod llm;
pub mod loops;
pub mod pipeline;
pub mod pki;
pub mod reaper;
pub mod retention;
pub mod server;
pub mod store;
