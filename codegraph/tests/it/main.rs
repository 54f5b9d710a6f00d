//! Integration tests of the codegraph crate, one module per concern.

mod accuracy;
mod incremental;
mod queries;
mod real;
mod render;
mod resolution;
mod scan;
mod support;
mod typeflow;
