//! Integration tests of the codegraph crate, one module per concern.

mod accuracy;
mod support;
