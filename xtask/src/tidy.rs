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
        problems.extend(check_module_cycles(name, &root.join(name).join("src")));
    }
    problems.extend(check_store_sql(&root.join("controller/src")));
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

/// SQL lives in the controller's `store/` only, and the store imports nothing above it.
fn check_store_sql(src: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let store = src.join("store");
    for path in rust_files(src) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let in_store = path.starts_with(&store);
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            if !in_store && (code.contains("sqlx::query") || code.contains("sqlx::Postgres")) {
                p.push(format!(
                    "{}:{}: SQL outside controller/src/store; add a store method",
                    path.display(),
                    n + 1
                ));
            }
            if in_store
                && code.contains("crate::")
                && !code.contains("crate::store")
                && code.trim_start().starts_with("use ")
            {
                p.push(format!(
                    "{}:{}: the store imports from above it",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    p
}

/// The library's module files, found from `lib.rs` through its `mod` declarations, by module path
/// (`""` for the root, `a::b` for `a/b.rs` or `a/b/mod.rs`).
fn library_modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(String::new(), src.join("lib.rs"), src.to_owned())];
    while let Some((name, file, dir)) = todo.pop() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let t = line.trim();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
            let Some(m) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else {
                continue;
            };
            let child = if name.is_empty() {
                m.to_owned()
            } else {
                format!("{name}::{m}")
            };
            for (f, d) in [
                (dir.join(format!("{m}.rs")), dir.join(m)),
                (dir.join(m).join("mod.rs"), dir.join(m)),
            ] {
                if f.exists() {
                    todo.push((child.clone(), f, d));
                    break;
                }
            }
        }
        out.insert(name, file);
    }
    out
}

/// No cycle between modules of a library that are not each other's ancestors (a parent and its
/// children always refer to each other in Rust; siblings and cousins must not).
fn check_module_cycles(krate: &str, src: &Path) -> Vec<String> {
    let modules = library_modules(src);
    let related = |a: &str, b: &str| {
        a.is_empty()
            || b.is_empty()
            || a.starts_with(&format!("{b}::"))
            || b.starts_with(&format!("{a}::"))
            || a == b
    };
    let mut edges: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (name, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // Code only: comments (doc links included) are not dependencies.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.as_str();
        let parent = name.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
            for (i, _) in code.match_indices(prefix) {
                let rest: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut path = base.clone();
                let mut target = None;
                for seg in rest.split("::").filter(|s| !s.is_empty()) {
                    let next = if path.is_empty() {
                        seg.to_owned()
                    } else {
                        format!("{path}::{seg}")
                    };
                    if !modules.contains_key(&next) {
                        break;
                    }
                    path = next;
                    target = Some(path.clone());
                }
                if let Some(t) = target
                    && !related(name, &t)
                    && let Some((k, _)) = modules.get_key_value(&t)
                {
                    edges.entry(name.as_str()).or_default().insert(k.as_str());
                }
            }
        }
    }
    let mut p = Vec::new();
    for start in edges.keys() {
        // A cycle through `start` whose other members sort after it (each cycle reported once).
        let mut stack = vec![(*start, vec![*start])];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(at).into_iter().flatten() {
                if next == start {
                    p.push(format!(
                        "{krate}: module cycle {} → {start}",
                        trail.join(" → ")
                    ));
                } else if next > start && seen.insert(*next) {
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
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
