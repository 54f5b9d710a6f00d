//! Reproduce-first: what the agent is asked, what it answers and what the runner makes of it.
//!
//! When the lease asks for it, the prompt ([`crate::prompt`]) tells the agent to write a test that
//! exposes the issue before fixing it and to name it in [`REPRO_FILE`] — a command and the files
//! the test needs. That file is sandbox output: the executor ([`crate::sandbox_executor`]) reads
//! it back from a container with a cap, and [`parse`] checks it here (size, shape, paths that stay
//! inside the tree, no `.git`). The test then runs in the sandbox like verify: on the head (it must
//! pass, else the agent gets a fix round) and on a fresh checkout of the base with only the named
//! files copied in (it must fail). [`Reproduction`] is the record that goes back with the result.

use std::time::Duration;

/// Where the agent names its test, relative to the work tree. Never committed.
pub const REPRO_FILE: &str = ".backporcher/repro.json";
/// Largest `repro.json` read back, bytes.
pub const MAX_REPRO_JSON: usize = 16 * 1024;
/// Longest test command, characters.
const MAX_COMMAND: usize = 2_000;
/// Most files a test may name.
const MAX_FILES: usize = 50;
/// Longest path named, bytes.
const MAX_PATH: usize = 400;
/// Characters of each run's output kept in the record.
pub const OUTPUT_TAIL_CHARS: usize = 4_000;

/// What the agent named as its test, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command that runs the test (`bash -c`, in the sandbox, at `/workspace`).
    pub command: String,
    /// Files (relative to the tree) the test needs, copied onto the base for the base run.
    pub files: Vec<String>,
}

/// How reproduce-first ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The test fails on the base and passes on the head.
    Reproduced,
    /// The test passes on the base: it does not expose the issue.
    NotReproduced,
    /// The agent named no test, or named one the runner refused.
    NoTest,
    /// The test still fails on the head after the fix rounds.
    NotFixed,
}

/// One run of the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Exit code; -1 when it did not exit (time limit).
    pub exit_code: i32,
    /// It ran past the time limit.
    pub timed_out: bool,
    /// The end of its output.
    pub output_tail: String,
    /// How long it ran.
    pub duration: Duration,
}

impl Run {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }
}

/// The record of reproduce-first for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reproduction {
    /// How it ended.
    pub status: Status,
    /// The command the agent named (empty when none).
    pub command: String,
    /// The files the agent named.
    pub files: Vec<String>,
    /// The run on the base, if it ran.
    pub base: Option<Run>,
    /// The run on the head, if it ran.
    pub head: Option<Run>,
    /// Why, for people.
    pub note: String,
}

impl Reproduction {
    /// No usable test: `why` says what was missing or refused.
    pub fn no_test(why: String) -> Self {
        Self {
            status: Status::NoTest,
            command: String::new(),
            files: Vec::new(),
            base: None,
            head: None,
            note: why,
        }
    }

    /// The verdict of a test that passed on the head, from its run on the base.
    pub fn judged(request: &Request, head: Run, base: Run) -> Self {
        let (status, note) = if base.passed() {
            (
                Status::NotReproduced,
                "the test passes on the base too: it does not expose the issue".to_owned(),
            )
        } else {
            (
                Status::Reproduced,
                "the test fails on the base and passes on the head".to_owned(),
            )
        };
        Self {
            status,
            command: request.command.clone(),
            files: request.files.clone(),
            base: Some(base),
            head: Some(head),
            note,
        }
    }

    /// A test that still fails on the head after the fix rounds.
    pub fn not_fixed(request: &Request, head: Run, rounds: u32) -> Self {
        Self {
            status: Status::NotFixed,
            command: request.command.clone(),
            files: request.files.clone(),
            base: None,
            head: Some(head),
            note: format!("the test still fails on the head after {rounds} fix rounds"),
        }
    }
}

/// What the agent is asked to do first (a prompt section).
pub const PROMPT: &str = "\
Reproduce the issue first. Before you change the code, write an automated test that exposes
the problem: it must FAIL on the current code and PASS once your fix is in. Then fix the issue.
Name the test in the file /workspace/.backporcher/repro.json (it is not committed), as JSON:
{\"command\": \"<shell command, run at /workspace, that runs only this test>\",
 \"files\": [\"<every file, relative to /workspace, the test needs: the test file itself and any
new fixture>\"]}
The runner runs the command on your change (it must pass) and on the base branch with only
those files copied in (it must fail). If you cannot write such a test, do not write the file
and say why in your final message.";

/// What the agent is told when its test fails on its change (a fix round).
pub fn fix_round(request: &Request, head: &Run) -> String {
    format!(
        "Your reproduction test `{}` fails on your change ({}). Fix the change (not the test) so it passes. Its output:\n{}",
        request.command,
        if head.timed_out {
            "it ran past the time limit".to_owned()
        } else {
            format!("exit {}", head.exit_code)
        },
        head.output_tail
    )
}

/// Reads the agent's `repro.json`: an object with a non-empty `command` string and a `files`
/// array of relative paths inside the tree (no `..`, no `.git`, not `.backporcher/`). `Err` says
/// what is wrong, for the task's record.
pub fn parse(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() > MAX_REPRO_JSON {
        return Err(format!(
            "{REPRO_FILE} is larger than {MAX_REPRO_JSON} bytes"
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("{REPRO_FILE} is not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{REPRO_FILE} is not a JSON object"))?;
    let command = obj
        .get("command")
        .and_then(|c| c.as_str())
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{REPRO_FILE} names no `command`"))?;
    if command.chars().count() > MAX_COMMAND {
        return Err(format!(
            "the test command is longer than {MAX_COMMAND} characters"
        ));
    }
    if command.contains('\0') {
        return Err("the test command contains a NUL character".into());
    }
    let listed = obj
        .get("files")
        .and_then(|f| f.as_array())
        .ok_or_else(|| format!("{REPRO_FILE} has no `files` array"))?;
    if listed.is_empty() || listed.len() > MAX_FILES {
        return Err(format!(
            "{REPRO_FILE} must name 1 to {MAX_FILES} files (it names {})",
            listed.len()
        ));
    }
    let mut files = Vec::with_capacity(listed.len());
    for f in listed {
        let f = f
            .as_str()
            .ok_or_else(|| format!("{REPRO_FILE}: every file must be a string"))?;
        check_path(f)?;
        if !files.iter().any(|g: &String| g == f) {
            files.push(f.to_owned());
        }
    }
    Ok(Request {
        command: command.to_owned(),
        files,
    })
}

/// A path the base run may copy: relative, inside the tree, printable, outside `.git` and
/// `.backporcher`.
fn check_path(f: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("test file `{}` refused: {why}", f.escape_debug()));
    if f.is_empty() || f.len() > MAX_PATH {
        return refuse(&format!("empty or longer than {MAX_PATH} bytes"));
    }
    if f.chars().any(char::is_control) {
        return refuse("it contains a control character");
    }
    if f.starts_with('/') || f.starts_with('-') {
        return refuse("it must be relative to /workspace");
    }
    for part in f.split('/') {
        match part {
            "" | "." | ".." => return refuse("no empty, `.` or `..` component"),
            ".git" => return refuse("nothing under .git"),
            _ => {}
        }
    }
    if f.split('/').next() == Some(".backporcher") {
        return refuse("nothing under .backporcher");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_request_is_read() {
        let r = parse(br#"{"command": " pytest tests/test_x.py ", "files": ["tests/test_x.py", "tests/test_x.py", "tests/data/a.json"]}"#).unwrap();
        assert_eq!(r.command, "pytest tests/test_x.py");
        assert_eq!(r.files, vec!["tests/test_x.py", "tests/data/a.json"]);
    }

    #[test]
    fn hostile_or_malformed_requests_are_refused_with_the_reason() {
        let big = format!(
            r#"{{"command": "true", "files": ["a"], "pad": "{}"}}"#,
            "x".repeat(MAX_REPRO_JSON)
        );
        let long_cmd = format!(r#"{{"command": "{}", "files": ["a"]}}"#, "x".repeat(2001));
        let many = format!(
            r#"{{"command": "true", "files": [{}]}}"#,
            (0..51)
                .map(|i| format!("\"f{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (input, why) in [
            (big.as_str(), "larger than"),
            ("not json", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"files": ["a"]}"#, "no `command`"),
            (r#"{"command": "  ", "files": ["a"]}"#, "no `command`"),
            (long_cmd.as_str(), "longer than 2000"),
            (r#"{"command": "a\u0000b", "files": ["a"]}"#, "NUL"),
            (r#"{"command": "true"}"#, "no `files`"),
            (r#"{"command": "true", "files": []}"#, "1 to 50"),
            (many.as_str(), "1 to 50"),
            (r#"{"command": "true", "files": [3]}"#, "must be a string"),
            (
                r#"{"command": "true", "files": ["/etc/passwd"]}"#,
                "relative",
            ),
            (r#"{"command": "true", "files": ["-rf"]}"#, "relative"),
            (r#"{"command": "true", "files": ["a/../../x"]}"#, "`..`"),
            (r#"{"command": "true", "files": ["a//b"]}"#, "empty"),
            (
                r#"{"command": "true", "files": ["sub/.git/config"]}"#,
                ".git",
            ),
            (
                r#"{"command": "true", "files": [".backporcher/x"]}"#,
                ".backporcher",
            ),
            (r#"{"command": "true", "files": ["a\nb"]}"#, "control"),
        ] {
            let err = parse(input.as_bytes()).expect_err(input);
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn the_verdict_follows_the_base_run() {
        let req = Request {
            command: "t".into(),
            files: vec!["t".into()],
        };
        let run = |code: i32, timed_out: bool| Run {
            exit_code: code,
            timed_out,
            output_tail: String::new(),
            duration: Duration::from_millis(1),
        };
        let judged = |base| Reproduction::judged(&req, run(0, false), base).status;
        assert_eq!(judged(run(1, false)), Status::Reproduced);
        assert_eq!(judged(run(-1, true)), Status::Reproduced);
        assert_eq!(judged(run(0, false)), Status::NotReproduced);
    }
}
