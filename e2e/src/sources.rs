//! Real open-source code for the tests and benchmarks of repository environments: source
//! distributions from PyPI and crates from crates.io, fetched once and cached under
//! `~/.cache/backporcher/sources`.

use std::path::PathBuf;

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/backporcher/sources")
}

fn sh(cwd: &std::path::Path, script: &str) -> String {
    let out = xcmd::Cmd::new("bash", cwd)
        .args(["-c", script])
        .to_std()
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The source distribution of `name` `version` from PyPI, unpacked.
pub fn pypi_sdist(name: &str, version: &str) -> PathBuf {
    let cache = cache();
    let dir = cache.join(format!("{name}-{version}"));
    if dir.join("PKG-INFO").exists() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let url = sh(
        &cache,
        &format!(
            "curl -fsSL https://pypi.org/simple/{name}/ | grep -o 'https://[^\"#]*/{name}-{version}.tar.gz' | head -1"
        ),
    );
    assert!(!url.is_empty(), "no sdist of {name} {version} on PyPI");
    sh(&cache, &format!("curl -fsSL '{url}' | tar -xz"));
    dir
}

/// The source of crate `name` `version` from crates.io, unpacked.
pub fn crates_io_source(name: &str, version: &str) -> PathBuf {
    let cache = cache();
    let dir = cache.join(format!("{name}-{version}"));
    if dir.join("Cargo.toml").exists() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    sh(
        &cache,
        &format!(
            "curl -fsSL https://static.crates.io/crates/{name}/{name}-{version}.crate | tar -xz"
        ),
    );
    dir
}

/// Every text file under `dir` (relative paths), packaging leftovers left out.
pub fn files_of(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                if !rel.starts_with(".cargo_vcs_info") && rel != "Cargo.toml.orig" {
                    out.push((rel, text));
                }
            }
        }
    }
    out.sort();
    out
}
