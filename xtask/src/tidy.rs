//! The checks behind `xtask tidy`: dependency boundaries, crate layout, module docs, banned crates,
//! and source rules (untrusted text is fenced only by `textguard`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Dependencies (normal and build) a crate must never have, with the reason.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "controller",
        "runner",
        "the controller and the runner meet only through proto/api",
    ),
    (
        "runner",
        "controller",
        "the controller and the runner meet only through proto/api",
    ),
    ("codegraph", "sqlx", "the code graph does no database IO"),
    ("codegraph", "tokio", "the code graph does no network IO"),
    ("codegraph", "reqwest", "the code graph does no network IO"),
    ("codegraph", "tonic", "the code graph does no network IO"),
    ("api", "sqlx", "API types carry no storage"),
    ("proto", "sqlx", "the wire contract carries no storage"),
    (
        "controller",
        "sim",
        "simulators are test and demo tools, never normal dependencies",
    ),
    (
        "runner",
        "sim",
        "simulators are test and demo tools, never normal dependencies",
    ),
    (
        "cli",
        "controller",
        "the CLI talks to the controller over its REST API only",
    ),
];

/// Crates that must never appear in `Cargo.lock`.
const BANNED_LOCKED: &[(&str, &str)] = &[("openssl-sys", "TLS is rustls with ring; no OpenSSL")];

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Every rule violation found under `root`.
pub fn check(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let manifests = match crate_manifests(root) {
        Ok(m) => m,
        Err(e) => return vec![e],
    };
    for (name, manifest) in &manifests {
        problems.extend(check_layout(name, manifest));
        let deps = normal_deps(manifest);
        for (krate, dep, why) in FORBIDDEN {
            if name == krate && deps.iter().any(|d| d == dep) {
                problems.push(format!("crate `{krate}` depends on `{dep}`: {why}"));
            }
        }
        problems.extend(check_docs(&root.join(name)));
        if !matches!(name.as_str(), "textguard" | "xtask") {
            problems.extend(check_fences(&root.join(name).join("src")));
        }
    }
    if let Ok(lock) = std::fs::read_to_string(root.join("Cargo.lock")) {
        for (banned, why) in BANNED_LOCKED {
            if lock.contains(&format!("name = \"{banned}\"")) {
                problems.push(format!("Cargo.lock contains `{banned}`: {why}"));
            }
        }
    }
    problems
}

fn crate_manifests(root: &Path) -> Result<BTreeMap<String, toml::Table>, String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read the root Cargo.toml: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("root Cargo.toml: {e}"))?;
    let members = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or("root Cargo.toml has no [workspace] members")?;
    let mut out = BTreeMap::new();
    for m in members {
        let m = m.as_str().ok_or("workspace members must be strings")?;
        if m.contains('/') || m.contains('*') {
            return Err(format!("workspace member `{m}` is not a flat folder name"));
        }
        let path = root.join(m).join("Cargo.toml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        out.insert(m.to_owned(), t);
    }
    Ok(out)
}

fn check_layout(folder: &str, manifest: &toml::Table) -> Vec<String> {
    let mut p = Vec::new();
    let package = manifest.get("package").and_then(|v| v.as_table());
    let Some(package) = package else {
        return vec![format!("{folder}/Cargo.toml has no [package]")];
    };
    if package.get("name").and_then(|v| v.as_str()) != Some(folder) {
        p.push(format!("crate in `{folder}/` must be named `{folder}`"));
    }
    for key in ["version", "edition", "publish"] {
        let inherited = package
            .get(key)
            .and_then(|v| v.as_table())
            .and_then(|t| t.get("workspace"))
            .and_then(|v| v.as_bool())
            == Some(true);
        if !inherited {
            p.push(format!(
                "{folder}: `{key}` must come from the workspace (`{key}.workspace = true`)"
            ));
        }
    }
    let lints = manifest
        .get("lints")
        .and_then(|l| l.get("workspace"))
        .and_then(|v| v.as_bool());
    if lints != Some(true) {
        p.push(format!("{folder}: add `[lints] workspace = true`"));
    }
    p
}

fn normal_deps(manifest: &toml::Table) -> Vec<String> {
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| manifest.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| {
            t.iter().map(|(name, spec)| {
                spec.get("package")
                    .and_then(|p| p.as_str())
                    .unwrap_or(name)
                    .to_owned()
            })
        })
        .collect()
}

/// Every `.rs` file under `dir`, skipping `target` and hidden folders.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out
}

fn check_docs(dir: &Path) -> Vec<String> {
    let mut p = Vec::new();
    for path in rust_files(dir) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        // Test fixtures (code the tests parse) are data, not modules of ours.
        let fixture = path
            .components()
            .any(|c| c.as_os_str() == "fixtures" || c.as_os_str() == "corpus");
        if !first.starts_with("//!") && !fixture {
            p.push(format!(
                "{}: must open with a `//!` doc saying what it owns",
                path.display()
            ));
        }
    }
    p
}

/// Prompts fence untrusted text only through `textguard::fence` (one fence, one cap, one set
/// of neutralised markers): a fence marker written anywhere else in non-test code is a prompt
/// assembled by hand.
fn check_fences(src: &Path) -> Vec<String> {
    let mut p = Vec::new();
    for path in rust_files(src) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("").to_ascii_lowercase();
            if [
                "<untrusted",
                "untrusted>",
                "begin untrusted",
                "end untrusted",
            ]
            .iter()
            .any(|m| code.contains(m))
            {
                p.push(format!(
                    "{}:{}: fences untrusted text by hand; use textguard::fence",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_follows_its_rules() {
        let problems = check(&workspace_root());
        assert!(problems.is_empty(), "tidy found:\n{}", problems.join("\n"));
    }

    #[test]
    fn a_forbidden_dependency_is_reported() {
        let dir = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("controller/src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"controller\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("controller/Cargo.toml"),
            "[package]\nname = \"controller\"\nversion.workspace = true\nedition.workspace = true\npublish.workspace = true\n[lints]\nworkspace = true\n[dependencies]\nrunner = { path = \"../runner\" }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("controller/src/lib.rs"),
            "pub fn f(t: &str) -> String {\n    format!(\"<UNTRUSTED>{t}</untrusted>\")\n}\n",
        )
        .unwrap();
        let problems = check(&dir);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("lib.rs:2: fences untrusted text by hand")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("depends on `runner`")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("must open with a `//!` doc")),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
