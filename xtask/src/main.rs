//! `xtask`: repository checks that keep the workspace's rules true.
//!
//! `cargo run -p xtask -- tidy` prints every violation; `cargo test -p xtask` runs the same checks
//! as tests, so CI fails on any of them. The rules (also written in `docs/architecture.md`):
//! - which crate may depend on which (the controller and the runner meet only through shared
//!   crates; the code graph does no IO; simulators are never normal dependencies);
//! - every crate is one level deep, its folder is its name, it inherits the workspace version
//!   and lints and is not published;
//! - every Rust file opens with a `//!` doc saying what it owns;
//! - no OpenSSL in the dependency graph.

mod tidy;

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("tidy") => {
            let problems = tidy::check(&tidy::workspace_root());
            if problems.is_empty() {
                println!("tidy: ok");
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("tidy: {p}");
                }
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: cargo run -p xtask -- tidy");
            ExitCode::from(2)
        }
    }
}
