//! The runner↔controller gRPC contract, `backporcher.runner.v1`, generated from
//! `proto/runner.proto`, plus what both sides must agree on: the protocol constants they check
//! and the price table they meter with ([`prices`]).
//!
//! The controller's gRPC layer and the runner's client convert these wire types to their own
//! domain types at the edge.

#[allow(missing_docs, clippy::all)] // generated code
mod generated {
    tonic::include_proto!("backporcher.runner.v1");
}
pub use generated::*;

pub mod prices;

/// The protocol version this build speaks. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Size limits both sides apply (the controller may lower them in its configuration).
pub mod limits {
    /// Largest result bundle, in bytes.
    pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;
    /// Most log bytes stored per attempt.
    pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
    /// Largest gRPC message either side sends or accepts (both set it explicitly). Everything
    /// the controller sends fits well under it: the retry context is capped below.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Most bytes of retry context (earlier attempts' errors, CI logs, review feedback) sent
    /// with a task; the oldest entries are left out first.
    pub const MAX_RETRY_CONTEXT_BYTES: usize = 1024 * 1024;
}

/// Metadata header carrying the protocol version on every call.
pub const VERSION_HEADER: &str = "bp-protocol-version";

/// Checks the version header of a call; `Err` says what to do.
pub fn check_version(metadata: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
    let got = metadata
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match got {
        Some(PROTOCOL_VERSION) => Ok(()),
        Some(other) => Err(tonic::Status::failed_precondition(format!(
            "protocol version {other} is not supported; this side speaks version {PROTOCOL_VERSION}; upgrade the older of runner and controller"
        ))),
        None => Err(tonic::Status::failed_precondition(format!(
            "missing {VERSION_HEADER} header; this side speaks protocol version {PROTOCOL_VERSION}"
        ))),
    }
}

/// Adds the version header to an outgoing request.
pub fn with_version<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.metadata_mut().insert(
        VERSION_HEADER,
        tonic::metadata::MetadataValue::from(PROTOCOL_VERSION),
    );
    request
}
