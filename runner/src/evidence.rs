//! The runner's part of an attempt's evidence record (`docs/evidence.md`), sent as
//! `data.evidence` of the result: every command run in the sandbox with how it ended and how
//! long it took, the verify command on the base (before the agent) and on the head, the tests
//! the change adds or changes (from the diff's paths and added lines, and the code graph's test
//! symbols) with what the verify output shows of them, and which symbols of the blast radius
//! tests reach (the graph's tested-by edges). The controller adds the rest and signs it.
//!
//! Everything here reads text the runner already holds in memory (the `-U0` diff from the finish
//! step's archive, the verify output ring); nothing is opened by path.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sandbox::Ended;

/// Characters of a verify run's output kept in the record.
const OUTPUT_TAIL_CHARS: usize = 4_000;
/// Tests listed at most.
const MAX_TESTS: usize = 200;
/// Symbols listed at most in each coverage list.
const MAX_SYMBOLS: usize = 200;

/// What an attempt ran, in order.
#[derive(Debug, Default, Clone)]
pub struct Commands(pub Vec<Value>);

impl Commands {
    /// Records one sandbox step (`verify_base`, `agent`, `verify`, `finish`) of fix round
    /// `round`: its command, how it ended and how long it took.
    pub fn push(
        &mut self,
        step: &str,
        round: u32,
        command: &[String],
        ended: &Ended,
        took: Duration,
    ) {
        let (how, code) = ended_of(ended);
        self.0.push(json!({
            "step": step,
            "round": round,
            "command": command.join(" "),
            "ended": how,
            "exit_code": code,
            "duration_ms": took.as_millis() as u64,
        }));
    }

    /// Records a step that could not run (the sandbox refused it).
    pub fn push_error(
        &mut self,
        step: &str,
        round: u32,
        command: &[String],
        why: &str,
        took: Duration,
    ) {
        self.0.push(json!({
            "step": step,
            "round": round,
            "command": command.join(" "),
            "ended": "error",
            "error": why,
            "exit_code": null,
            "duration_ms": took.as_millis() as u64,
        }));
    }
}

/// How a sandbox run ended, as the record says it: (`exited`, `timed_out`, `idle`,
/// `cancelled`) and the exit code when it exited.
fn ended_of(e: &Ended) -> (&'static str, Option<i64>) {
    match e {
        Ended::Exited(c) => ("exited", Some(*c)),
        Ended::TimedOut => ("timed_out", None),
        Ended::Idle => ("idle", None),
        Ended::Cancelled => ("cancelled", None),
    }
}

/// One verify run for the record: `passed` (exit 0), `failed` (another exit code),
/// `timed_out`, `cancelled` or `error` (it could not run), with the tail of its output.
pub fn verify_run(ended: Result<&Ended, &str>, took: Duration, output: &str) -> Value {
    let (status, code, error) = match ended {
        Ok(Ended::Exited(0)) => ("passed", Some(0), None),
        Ok(Ended::Exited(c)) => ("failed", Some(*c), None),
        Ok(Ended::TimedOut | Ended::Idle) => ("timed_out", None, None),
        Ok(Ended::Cancelled) => ("cancelled", None, None),
        Err(why) => ("error", None, Some(why)),
    };
    json!({
        "status": status,
        "exit_code": code,
        "duration_ms": took.as_millis() as u64,
        "output_tail": tail(output, OUTPUT_TAIL_CHARS),
        "error": error,
    })
}

fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_owned()
    } else {
        format!("[…]{}", s.chars().skip(count - n).collect::<String>())
    }
}

/// Whether a path looks like a test file by the usual conventions.
pub fn is_test_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let dir_test = path.starts_with("tests/")
        || path.starts_with("test/")
        || path.contains("/tests/")
        || path.contains("/test/")
        || path.contains("__tests__/");
    dir_test
        || name.starts_with("test_")
        || [
            "_test.py",
            "_test.go",
            "_test.rs",
            "_test.rb",
            "_spec.rb",
            ".test.js",
            ".test.ts",
            ".test.tsx",
            ".test.jsx",
            ".spec.js",
            ".spec.ts",
            "Test.java",
            "Tests.java",
            "Test.kt",
            "Tests.cs",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// A test the change adds or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedTest {
    /// File.
    pub path: String,
    /// Test name (function, or the description of a JS test).
    pub name: String,
    /// Where it was found: `diff` (an added line) or `graph` (a test symbol whose lines changed).
    pub source: &'static str,
}

/// Tests named on the added lines of a `-U0` diff: Rust `#[test]` functions, Python
/// `def test_…`, Go `func Test…`, JS `it(…)`/`test(…)`, Java/Kotlin `@Test` methods.
pub fn tests_in_diff(diff: &str) -> Vec<ChangedTest> {
    let mut out: Vec<ChangedTest> = Vec::new();
    let mut path: Option<String> = None;
    let mut marked = false;
    for line in diff.lines() {
        if let Some(p) = line.strip_prefix("+++ ") {
            path = p.strip_prefix("b/").map(str::to_owned);
            marked = false;
            continue;
        }
        let Some(added) = line.strip_prefix('+') else {
            continue;
        };
        let Some(p) = &path else { continue };
        let t = added.trim();
        if (t.starts_with("#[") && (t.contains("test]") || t.contains("test(")))
            || t.starts_with("@Test")
        {
            marked = true;
            continue;
        }
        let name = fn_name(t, "fn ")
            .filter(|n| marked || n.starts_with("test_") || is_test_path(p))
            .or_else(|| fn_name(t, "def ").filter(|n| n.starts_with("test")))
            .or_else(|| fn_name(t, "func ").filter(|n| n.starts_with("Test")))
            .or_else(|| js_test(t))
            .or_else(|| {
                (marked && t.contains('('))
                    .then(|| {
                        t.split('(')
                            .next()
                            .and_then(|h| h.split_whitespace().last())
                    })
                    .flatten()
                    .map(str::to_owned)
            });
        if let Some(name) = name {
            marked = false;
            if out.len() < MAX_TESTS && !out.iter().any(|o| &o.path == p && o.name == name) {
                out.push(ChangedTest {
                    path: p.clone(),
                    name,
                    source: "diff",
                });
            }
        }
    }
    out
}

/// The identifier after `kw` in a declaration line (`pub async fn name(`, `def name(`).
fn fn_name(line: &str, kw: &str) -> Option<String> {
    let i = line.find(kw)?;
    if i > 0 && !line[..i].ends_with(' ') {
        return None;
    }
    let rest = &line[i + kw.len()..];
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && rest[name.len()..].trim_start().starts_with(['(', '<'])).then_some(name)
}

/// The description of a JS `it('…')` / `test("…")`.
fn js_test(line: &str) -> Option<String> {
    for kw in ["it(", "test("] {
        if let Some(rest) = line.strip_prefix(kw) {
            let q = rest.chars().next()?;
            if matches!(q, '\'' | '"' | '`') {
                return rest[1..].split(q).next().map(str::to_owned);
            }
        }
    }
    None
}

/// What the verify output shows of a test: `failed` when a line naming it says it failed,
/// `passed` when one says it passed, else `unknown` (the output does not show it).
pub fn result_of(output: &str, name: &str) -> &'static str {
    let mut seen = "unknown";
    for line in output.lines() {
        if !names(line, name) {
            continue;
        }
        let l = line.to_ascii_lowercase();
        if l.contains("fail") || l.contains('✕') || l.contains("error") {
            return "failed";
        }
        if l.contains("pass") || l.ends_with(" ok") || l.contains("... ok") || l.contains('✓') {
            seen = "passed";
        }
    }
    seen
}

/// Whether `line` names `name` as a whole word.
fn names(line: &str, name: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    line.match_indices(name).any(|(i, _)| {
        !word(line[..i].chars().last()) && !word(line[i + name.len()..].chars().next())
    })
}

/// The record's `tests`: test files the change touches, the tests it adds or changes (from the
/// diff and from the graph's changed test symbols) with their results in the verify output.
pub fn tests(
    files: &[String],
    diff: &str,
    graph_tests: &[(String, String)],
    verify_output: &str,
) -> Value {
    let mut found = tests_in_diff(diff);
    for (path, name) in graph_tests {
        let short = name.rsplit(['.', ':']).next().unwrap_or(name);
        if !found
            .iter()
            .any(|t| &t.path == path && (t.name == *name || t.name == short))
            && found.len() < MAX_TESTS
        {
            found.push(ChangedTest {
                path: path.clone(),
                name: name.clone(),
                source: "graph",
            });
        }
    }
    let changed: Vec<Value> = found
        .iter()
        .map(|t| {
            let short = t.name.rsplit(['.', ':']).next().unwrap_or(&t.name);
            json!({
                "path": t.path,
                "name": t.name,
                "source": t.source,
                "result": result_of(verify_output, short),
            })
        })
        .collect();
    json!({
        "changed_files": files.iter().filter(|f| is_test_path(f)).collect::<Vec<_>>(),
        "changed": changed,
        "results_from": "the last verify run's output",
    })
}

/// The record's `coverage` from the graph's answer.
pub fn coverage(c: &codegraph::Coverage) -> Value {
    let name = |s: &codegraph::SymbolRef| format!("{}::{}", s.path, s.name);
    json!({
        "covered": c.covered.iter().take(MAX_SYMBOLS).map(|s| json!({
            "symbol": name(&s.symbol),
            "tests": s.tests.iter().map(name).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "not_covered": c.not_covered.iter().take(MAX_SYMBOLS).map(name).collect::<Vec<_>>(),
        "fraction": c.fraction(),
        "source": "the code graph of the base: a symbol is covered when a test calls it (tested-by edge); tests the change adds are not in that graph",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_are_found_on_added_lines_and_their_results_in_the_output() {
        let diff = "diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,0 +2,4 @@\n+#[test]\n+fn adds_two() {\n+}\n+fn helper() {}\n\
diff --git a/test_six.py b/test_six.py\n--- a/test_six.py\n+++ b/test_six.py\n@@ -3,0 +4,2 @@\n+def test_u_plain():\n+    pass\n\
diff --git a/x_test.go b/x_test.go\n--- /dev/null\n+++ b/x_test.go\n@@ -0,0 +1 @@\n+func TestX(t *testing.T) {\n\
diff --git a/a.test.js b/a.test.js\n--- a/a.test.js\n+++ b/a.test.js\n@@ -1,0 +2 @@\n+it('adds two', () => {\n";
        let found: Vec<(String, String)> = tests_in_diff(diff)
            .into_iter()
            .map(|t| (t.path, t.name))
            .collect();
        assert_eq!(
            found,
            [
                ("src/lib.rs", "adds_two"),
                ("test_six.py", "test_u_plain"),
                ("x_test.go", "TestX"),
                ("a.test.js", "adds two"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let out = "test tests::adds_two ... ok\nFAILED test_six.py::test_u_plain - assert\n--- PASS: TestX (0.00s)\ntest_u_plain_other PASSED\n";
        assert_eq!(result_of(out, "adds_two"), "passed");
        assert_eq!(result_of(out, "test_u_plain"), "failed");
        assert_eq!(result_of(out, "TestX"), "passed");
        assert_eq!(result_of(out, "adds two"), "unknown");
        let t = tests(
            &["src/lib.rs".into(), "test_six.py".into()],
            diff,
            &[("tests/it.rs".into(), "it::old_test".into())],
            out,
        );
        assert_eq!(t["changed_files"], json!(["test_six.py"]));
        assert_eq!(t["changed"][4]["source"], "graph");
    }

    #[test]
    fn verify_runs_say_how_they_ended() {
        let d = Duration::from_millis(1500);
        assert_eq!(
            verify_run(Ok(&Ended::Exited(0)), d, "ok")["status"],
            "passed"
        );
        let f = verify_run(Ok(&Ended::Exited(2)), d, "boom");
        assert_eq!(
            (f["status"].as_str(), f["exit_code"].as_i64()),
            (Some("failed"), Some(2))
        );
        assert_eq!(
            verify_run(Ok(&Ended::TimedOut), d, "")["status"],
            "timed_out"
        );
        let e = verify_run(Err("no docker"), d, "");
        assert_eq!(
            (e["status"].as_str(), e["error"].as_str()),
            (Some("error"), Some("no docker"))
        );
        assert_eq!(e["duration_ms"], 1500);
    }
}
