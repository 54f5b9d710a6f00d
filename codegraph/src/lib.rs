//! Code graph: parses a repository with tree-sitter, resolves references to definitions, answers navigation and blast-radius queries.
