//! Simulators of the services Backporcher cannot reach in tests or in the offline demo, speaking
//! their real wire protocols so the real clients cannot tell the difference.
//!
//! - [`github`]: the GitHub REST endpoints the controller uses, real git over smart HTTP, signed
//!   webhooks, and web pages for the links it hands out;
//! - [`model`]: a scripted Anthropic Messages API (`/v1/messages` with and without streaming,
//!   `/v1/messages/count_tokens`) that answers with scripted text and `tool_use` blocks, so the
//!   real Claude Code CLI really edits files.
//!
//! [`kit`] holds the few helpers every test crate shares; [`demo`] the offline demo's sample
//! repository, issues and scripts (also served by the `backporcher-sims` binary).
//!
//! Never a normal dependency of the controller or the runner: tests and the demo only.
#![deny(missing_docs)]

pub mod demo;
pub mod github;
pub mod kit;
pub mod model;
