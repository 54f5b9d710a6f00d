//! Finding the files to parse: walks the repository respecting ignore files, skips oversized,
//! binary and generated files, and collects the layout files (`Cargo.toml`, `go.mod`) that
//! `layout.rs` turns into module paths. Reading and hashing the contents happens in `graph.rs`.
//!
//! The tree may have been written by someone hostile, so every file is read through
//! [`read_regular`] (no link followed, regular files only, size checked before reading), and a
//! [`Stop`] handed in by the caller ends a scan, parse or resolve that runs past its deadline or
//! is no longer wanted.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, UNIX_EPOCH};

use crate::ignore::{IgnoreFile, MAX_IGNORE_FILE, ignored};
use crate::lang::Lang;

/// Ends long work from outside: when [`Stop::stop`] was called or the deadline passed, the next
/// check fails and the build returns `Error::Stopped`.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Stop {
    /// A stop that also fires at `deadline`.
    pub fn at(deadline: Instant) -> Stop {
        Stop {
            flag: Arc::default(),
            deadline: Some(deadline),
        }
    }

    /// Asks the work to stop.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether the work should stop now.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Reads a regular file of at most `cap` bytes without following a link at its last component
/// and without blocking on a FIFO. `Ok(None)` for anything else (a link, a device, a FIFO, a
/// directory, a file over the cap).
pub fn read_regular(path: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > cap {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Ok(None);
    }
    Ok(Some(bytes))
}

fn read_text(path: &Path, cap: u64) -> Option<String> {
    read_regular(path, cap)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// What the scan and the parser accept.
#[derive(Clone, Debug)]
pub struct Config {
    /// Files larger than this are skipped (bytes).
    pub max_file_bytes: u64,
    /// Directory names never entered, wherever they are (in addition to ignore files).
    pub skip_dirs: Vec<String>,
    /// Parsing threads; 0 means the machine's parallelism.
    pub threads: usize,
    /// Ends the work early (deadline or request).
    pub stop: Stop,
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
            stop: Stop::default(),
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
    if let Some(text) = read_text(&root.join(".git/info/exclude"), MAX_IGNORE_FILE) {
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
        if config.stop.stopped() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped",
            ));
        }
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
            if let Some(text) = read_text(&entry.path(), config.max_file_bytes) {
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
        if let Some(text) = read_text(&dir.join(name), MAX_IGNORE_FILE) {
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
