//! Code graph: parses a repository with tree-sitter, resolves references to definitions, answers navigation and blast-radius queries.
#![deny(missing_docs)]

pub mod extract;
pub mod facts;
mod graph;
mod ignore;
pub mod lang;
mod layout;
pub mod resolve;
pub mod scan;

pub use graph::{Error, FileEntry, Graph, UpdateStats};
pub use resolve::{Edge, EdgeKind, NodeId};
pub use scan::Config;
