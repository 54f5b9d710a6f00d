//! Module layout: which module path each file has. Python dotted names follow the chain of
//! `__init__.py` packages; Rust module paths come from the crate roots that `Cargo.toml`
//! files declare; Go packages are directories under a `go.mod` module path. Resolution
//! (`resolve.rs`) looks modules up through the tables built here.

use std::collections::HashMap;

use crate::lang::Lang;

/// Where a Rust file sits: its crate root (a file id) and its module path under that root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RustModule {
    /// File id of the crate root (`lib.rs`, `main.rs`, a test target).
    pub root: u32,
    /// Module path below the root (`["time", "sleep"]`); empty for the root.
    pub path: Vec<String>,
}

/// Module tables for a set of files.
#[derive(Debug, Default)]
pub struct Layout {
    /// Python dotted module name → file id.
    pub py_modules: HashMap<String, u32>,
    /// File id → (dotted module name, is a package `__init__`).
    pub py_name: HashMap<u32, (String, bool)>,
    /// Rust crate name → root file id.
    pub rust_crates: HashMap<String, u32>,
    /// File id → its Rust module.
    pub rust_module: HashMap<u32, RustModule>,
    /// (crate root, `a::b`) → file id.
    pub rust_files: HashMap<(u32, String), u32>,
    /// Go module path → directory holding `go.mod` (`""` for the root).
    pub go_modules: Vec<(String, String)>,
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Builds the tables from the files (id, path, language) and the layout files (path, text).
pub fn build(files: &[(u32, &str, Lang)], layout_files: &[(String, String)]) -> Layout {
    let mut out = Layout::default();
    let by_path: HashMap<&str, u32> = files.iter().map(|(id, p, _)| (*p, *id)).collect();

    // Python: walk up while the directory is a package
    for &(id, path, lang) in files {
        if lang != Lang::Python {
            continue;
        }
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.trim_end_matches(".pyi").trim_end_matches(".py");
        let is_pkg = stem == "__init__";
        let mut parts: Vec<&str> = if is_pkg { Vec::new() } else { vec![stem] };
        let mut dir = dir_of(path);
        while !dir.is_empty() && by_path.contains_key(join(dir, "__init__.py").as_str()) {
            parts.push(dir.rsplit('/').next().unwrap_or(dir));
            dir = dir_of(dir);
        }
        if parts.is_empty() {
            continue;
        }
        parts.reverse();
        let name = parts.join(".");
        out.py_modules.entry(name.clone()).or_insert(id);
        out.py_name.insert(id, (name, is_pkg));
    }

    // Rust: crate roots from Cargo.toml, modules from paths under src/
    let mut packages: Vec<(String, String)> = Vec::new(); // (dir, crate name)
    for (path, text) in layout_files {
        if path.ends_with("Cargo.toml")
            && let Some(name) = cargo_lib_name(text)
        {
            packages.push((dir_of(path).to_string(), name));
        }
        if path.ends_with("go.mod")
            && let Some(module) = text.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("module ")
                    .map(|m| m.trim().trim_matches('"').to_string())
            })
        {
            out.go_modules.push((module, dir_of(path).to_string()));
        }
    }
    // deepest package directory first, so nested crates win
    packages.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
    for &(id, path, lang) in files {
        if lang != Lang::Rust {
            continue;
        }
        let Some((pkg_dir, crate_name)) = packages
            .iter()
            .find(|(d, _)| d.is_empty() || path.starts_with(&format!("{d}/")))
        else {
            continue;
        };
        let rel = if pkg_dir.is_empty() {
            path
        } else {
            &path[pkg_dir.len() + 1..]
        };
        let module = if let Some(under) = rel.strip_prefix("src/") {
            if under == "lib.rs"
                || (under == "main.rs"
                    && !by_path.contains_key(join(pkg_dir, "src/lib.rs").as_str()))
            {
                out.rust_crates.insert(crate_name.clone(), id);
                RustModule {
                    root: id,
                    path: Vec::new(),
                }
            } else if under == "main.rs" || under.starts_with("bin/") && !under[4..].contains('/') {
                RustModule {
                    root: id,
                    path: Vec::new(),
                }
            } else {
                let root_path = join(pkg_dir, "src/lib.rs");
                let root_path = if by_path.contains_key(root_path.as_str()) {
                    root_path
                } else {
                    join(pkg_dir, "src/main.rs")
                };
                let Some(&root) = by_path.get(root_path.as_str()) else {
                    continue;
                };
                RustModule {
                    root,
                    path: module_path(under),
                }
            }
        } else {
            // tests/, benches/, examples/: each top-level file is its own crate root
            match rel.split_once('/') {
                Some((_, rest)) if !rest.contains('/') => RustModule {
                    root: id,
                    path: Vec::new(),
                },
                Some((top, rest)) => {
                    let first = rest.split('/').next().unwrap_or("");
                    let root_path = join(pkg_dir, &format!("{top}/{first}.rs"));
                    match by_path.get(root_path.as_str()) {
                        Some(&root) => RustModule {
                            root,
                            path: module_path(rest),
                        },
                        None => RustModule {
                            root: id,
                            path: Vec::new(),
                        },
                    }
                }
                None => RustModule {
                    root: id,
                    path: Vec::new(),
                },
            }
        };
        if !module.path.is_empty() {
            out.rust_files
                .insert((module.root, module.path.join("::")), id);
        }
        out.rust_module.insert(id, module);
    }
    out
}

/// `time/sleep.rs` → `[time, sleep]`, `time/mod.rs` → `[time]`.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The library crate name of a `Cargo.toml` (`[lib] name`, else `[package] name`, `-` → `_`).
fn cargo_lib_name(text: &str) -> Option<String> {
    let mut section = "";
    let mut package = None;
    let mut lib = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value.trim().trim_matches('"').to_string();
        match section {
            "[package]" => package = Some(value),
            "[lib]" => lib = Some(value),
            _ => {}
        }
    }
    lib.or(package).map(|n| n.replace('-', "_"))
}

/// The Go package directory an import path names, if it is inside a module of the repository.
pub fn go_import_dir(layout: &Layout, spec: &str) -> Option<String> {
    for (module, dir) in &layout.go_modules {
        if spec == module {
            return Some(dir.clone());
        }
        if let Some(rest) = spec
            .strip_prefix(module.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return Some(join(dir, rest));
        }
    }
    None
}

/// Normalises `a/./b/../c` to `a/c`; `None` if it climbs above the root.
pub fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// The directory part of a path (`""` at the root).
pub fn parent_dir(path: &str) -> &str {
    dir_of(path)
}

/// Joins a directory and a relative name.
pub fn join_path(dir: &str, name: &str) -> String {
    join(dir, name)
}
