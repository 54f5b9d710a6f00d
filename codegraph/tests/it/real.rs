//! The real-code corpus: pinned releases of projects written elsewhere, fetched from their
//! package registries (crates.io, PyPI) by the test, checked against a SHA-256 written here and
//! cached outside the clone (`$HOME/.cache/backporcher/codegraph-corpus`, or
//! `BP_CODEGRAPH_CORPUS_DIR`). Their code is never committed; only the labels are
//! (`tests/real-corpus/<name>.txt`): target definitions and every direct caller of each, written
//! down by reading the code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One pinned release.
pub struct Project {
    /// Short name; the labels are `tests/real-corpus/<name>.txt`.
    pub name: &'static str,
    /// Version, part of the cache directory's name.
    pub version: &'static str,
    /// Where the registry serves the archive (a `.crate` or an sdist `.tar.gz`).
    pub url: &'static str,
    /// SHA-256 of the archive, as the registry publishes it.
    pub sha256: &'static str,
}

/// The projects of the real corpus.
pub const PROJECTS: [Project; 3] = [
    Project {
        name: "tokio",
        version: "1.54.1",
        url: "https://static.crates.io/crates/tokio/tokio-1.54.1.crate",
        sha256: "b52fd3255258d26fac7264ab5a76b53c13367136dc011d3d6ad4f8ed070396a3",
    },
    Project {
        name: "bytes",
        version: "1.12.2",
        url: "https://static.crates.io/crates/bytes/bytes-1.12.2.crate",
        sha256: "776dfebd015e2d8732c684a2c71003674ccb49457b539b9e82151ba38e96dd7c",
    },
    Project {
        name: "requests",
        version: "2.32.3",
        url: "https://files.pythonhosted.org/packages/63/70/2bf7780ad2d390a8d301ad0b550f1581eadbd9a20f896afe06353c2a2913/requests-2.32.3.tar.gz",
        sha256: "55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760",
    },
];

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BP_CODEGRAPH_CORPUS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache/backporcher/codegraph-corpus")
}

/// The unpacked source of `p`, fetched and checked on first use. Errors say what failed.
pub fn source(p: &Project) -> Result<PathBuf, String> {
    let root = cache_root();
    let dir = root.join(format!("{}-{}", p.name, p.version));
    let marker = dir.join(".codegraph-corpus-sha256");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == p.sha256) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let work = tempfile::tempdir_in(&root).map_err(|e| {
        format!(
            "cannot create a temporary directory in {}: {e}",
            root.display()
        )
    })?;
    let archive = work.path().join("archive.tar.gz");
    let out = xcmd::Cmd::new("curl", work.path())
        .args(["-sSfL", "--retry", "2", "--max-time", "120", "-o"])
        .arg(&archive)
        .arg(p.url)
        .to_std()
        .output()
        .map_err(|e| format!("cannot run curl (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot download {}: curl says {}",
            p.url,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let bytes = std::fs::read(&archive).map_err(|e| format!("cannot read the download: {e}"))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != p.sha256 {
        return Err(format!(
            "{} has SHA-256 {got}, expected {}: the registry served something else; do not use it",
            p.url, p.sha256
        ));
    }
    let unpack = work.path().join("unpack");
    std::fs::create_dir_all(&unpack).map_err(|e| e.to_string())?;
    let out = xcmd::Cmd::new("tar", work.path())
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpack)
        .to_std()
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot unpack {}: {}",
            p.url,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let top = unpack.join(format!("{}-{}", p.name, p.version));
    if !top.is_dir() {
        return Err(format!(
            "{} does not unpack to {}-{}/",
            p.url, p.name, p.version
        ));
    }
    std::fs::write(top.join(".codegraph-corpus-sha256"), p.sha256).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    match std::fs::rename(&top, &dir) {
        Ok(()) => Ok(dir),
        // another test process got there first with the same checked contents
        Err(_) if marker.exists() => Ok(dir),
        Err(e) => Err(format!(
            "cannot move the unpacked source to {}: {e}",
            dir.display()
        )),
    }
}

/// The labels of one project: the targets, and the `caller -> target` pairs.
pub struct Labels {
    /// Target definitions, `path::Qualified.name`.
    pub targets: BTreeSet<String>,
    /// Every direct caller of every target.
    pub calls: BTreeSet<(String, String)>,
}

/// Reads `tests/real-corpus/<name>.txt`: `target <name>` lines and `caller -> target` lines.
pub fn labels(name: &str) -> Labels {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/real-corpus/{name}.txt"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Labels {
        targets: BTreeSet::new(),
        calls: BTreeSet::new(),
    };
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(t) = l.strip_prefix("target ") {
            out.targets.insert(t.trim().to_string());
        } else {
            let (a, b) = l
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("bad label line {l:?} in {}", path.display()));
            let b = b.split('#').next().unwrap_or(b).trim();
            assert!(
                out.targets.contains(b),
                "{}: {b} is not declared as a target before {l:?}",
                path.display()
            );
            out.calls.insert((a.trim().to_string(), b.to_string()));
        }
    }
    out
}
