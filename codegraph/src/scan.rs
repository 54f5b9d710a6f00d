//! Finding the files to parse: walks the repository respecting ignore files, skips oversized,
//! binary and generated files, and collects the layout files (`Cargo.toml`, `go.mod`) that
//! `layout.rs` turns into module paths. Reading and hashing the contents happens in `graph.rs`.

use std::fs;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::ignore::{IgnoreFile, ignored};
use crate::lang::Lang;

/// What the scan and the parser accept.
#[derive(Clone, Debug)]
pub struct Config {
    /// Files larger than this are skipped (bytes).
    pub max_file_bytes: u64,
    /// Directory names never entered, wherever they are (in addition to ignore files).
    pub skip_dirs: Vec<String>,
    /// Parsing threads; 0 means the machine's parallelism.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_file_bytes: 1024 * 1024,
            skip_dirs: [
                ".git",
                "node_modules",
                ".hg",
                ".svn",
                "__pycache__",
                ".venv",
                ".tox",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            threads: 0,
        }
    }
}

/// A source file found by the scan.
#[derive(Clone, Debug)]
pub struct Found {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    /// Its language.
    pub lang: Lang,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (0 if unknown).
    pub mtime_ns: u128,
}

/// The result of a scan.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Source files to parse, sorted by path.
    pub files: Vec<Found>,
    /// Layout files (`Cargo.toml`, `go.mod`) with their contents, sorted by path.
    pub layout: Vec<(String, String)>,
    /// Files skipped for size.
    pub skipped_large: usize,
}

/// Walks `root`, respecting `.gitignore`, `.ignore` and `.git/info/exclude`.
pub fn scan(root: &Path, config: &Config) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let mut stack = Vec::new();
    if let Ok(text) = fs::read_to_string(root.join(".git/info/exclude")) {
        stack.push(IgnoreFile::parse("", &text));
    }
    walk(root, "", config, &mut stack, &mut out)?;
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.layout.sort();
    Ok(out)
}

fn walk(
    root: &Path,
    rel: &str,
    config: &Config,
    stack: &mut Vec<IgnoreFile>,
    out: &mut Scan,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let pushed = push_ignore_files(&dir, rel, stack);
    let mut entries: Vec<_> = fs::read_dir(&dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            if config.skip_dirs.iter().any(|d| d == &name) || ignored(stack, &path, true) {
                continue;
            }
            walk(root, &path, config, stack, out)?;
            continue;
        }
        if !kind.is_file() || ignored(stack, &path, false) {
            continue;
        }
        if name == "Cargo.toml" || name == "go.mod" {
            if let Ok(text) = fs::read_to_string(entry.path()) {
                out.layout.push((path, text));
            }
            continue;
        }
        let Some(lang) = Lang::from_path(&name) else {
            continue;
        };
        if generated_name(&name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.len() > config.max_file_bytes {
            out.skipped_large += 1;
            continue;
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.files.push(Found {
            path,
            lang,
            size: meta.len(),
            mtime_ns,
        });
    }
    stack.truncate(stack.len() - pushed);
    Ok(())
}

fn push_ignore_files(dir: &Path, rel: &str, stack: &mut Vec<IgnoreFile>) -> usize {
    let mut pushed = 0;
    for name in [".gitignore", ".ignore"] {
        if let Ok(text) = fs::read_to_string(dir.join(name)) {
            stack.push(IgnoreFile::parse(rel, &text));
            pushed += 1;
        }
    }
    pushed
}

/// File names that mark generated code.
pub fn generated_name(name: &str) -> bool {
    const SUFFIXES: [&str; 10] = [
        ".min.js",
        "_pb2.py",
        "_pb2_grpc.py",
        ".pb.go",
        ".pb.cc",
        ".pb.h",
        ".g.cs",
        ".designer.cs",
        ".bundle.js",
        "_generated.go",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s)) || name.contains(".generated.")
}

/// Whether file contents look binary or generated (checked after reading, before parsing).
pub fn skip_contents(bytes: &[u8]) -> Option<&'static str> {
    let head = &bytes[..bytes.len().min(8000)];
    if head.contains(&0) {
        return Some("binary");
    }
    if std::str::from_utf8(bytes).is_err() {
        return Some("binary");
    }
    let top = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
    const MARKERS: [&str; 5] = [
        "@generated",
        "DO NOT EDIT",
        "Code generated by",
        "auto-generated",
        "autogenerated by",
    ];
    if MARKERS.iter().any(|m| top.contains(m)) {
        return Some("generated");
    }
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    if bytes.len() > 10_000 && bytes.len() / lines > 400 {
        return Some("minified");
    }
    None
}
