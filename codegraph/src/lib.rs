//! Code graph: parses a repository with tree-sitter, resolves references to definitions, answers navigation and blast-radius queries.
#![deny(missing_docs)]

pub mod blast;
pub mod extract;
pub mod facts;
mod graph;
pub mod ignore;
pub mod lang;
mod layout;
pub mod navigate;
pub mod render;
pub mod resolve;
pub mod scan;

pub use blast::{BlastOptions, BlastRadius, Change, Coverage, Covered, Impact, SymbolRef};
pub use graph::{Error, FileEntry, Graph, UpdateStats};
pub use navigate::{KeySymbol, NavFile, NavigateOptions, NavigationMap};
pub use render::RenderOptions;
pub use resolve::{Edge, EdgeKind, NodeId};
pub use scan::{Config, Stop};
