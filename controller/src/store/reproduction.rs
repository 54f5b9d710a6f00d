//! Reproduce-first as the controller keeps it: the runner's record of the agent's test run on the
//! base and on the head (one per attempt, in `task_results.reproduction`, written by
//! [`super::completion`]), what it means for the task (a `hold` policy holds a task whose issue
//! was not reproduced), and the latest record of a task for its API detail and its PR body.

use serde::{Deserialize, Serialize};

use super::lifecycle::TaskId;
use super::{Result, Store};

/// How reproduce-first ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReproStatus {
    /// The test fails on the base and passes on the head.
    Reproduced,
    /// The test passes on the base: it does not expose the issue.
    NotReproduced,
    /// The agent named no (valid) test.
    NoTest,
    /// The test still fails on the head after the fix rounds.
    NotFixed,
}

impl ReproStatus {
    /// Text stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ReproStatus::Reproduced => "reproduced",
            ReproStatus::NotReproduced => "not_reproduced",
            ReproStatus::NoTest => "no_test",
            ReproStatus::NotFixed => "not_fixed",
        }
    }
}

/// One run of the test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReproRun {
    /// Exit code; -1 when it did not exit.
    pub exit_code: i32,
    /// It ran past the time limit.
    pub timed_out: bool,
    /// The end of its output.
    pub output_tail: String,
    /// How long it ran, milliseconds.
    pub duration_ms: u64,
}

/// The runner's reproduce-first record of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproduction {
    /// How it ended.
    pub status: ReproStatus,
    /// The test command the agent named (empty when none).
    pub command: String,
    /// The files the agent named as its test.
    pub files: Vec<String>,
    /// The run on the base, when it ran.
    pub base: Option<ReproRun>,
    /// The run on the head, when it ran.
    pub head: Option<ReproRun>,
    /// Why, for people.
    pub note: String,
}

/// Most characters of a runner's text kept per field (output tails, the command, the note).
const MAX_TEXT: usize = 8_000;
/// Most files kept.
const MAX_FILES: usize = 100;

impl Reproduction {
    /// Whether the issue was shown: the test fails on the base and passes on the head.
    pub fn reproduced(&self) -> bool {
        self.status == ReproStatus::Reproduced
    }

    /// What stands for the record a lease asked for and the runner did not send: no test shown.
    pub fn missing() -> Self {
        Self {
            status: ReproStatus::NoTest,
            command: String::new(),
            files: Vec::new(),
            base: None,
            head: None,
            note: "the runner sent no reproduce-first record though its lease asked for one".into(),
        }
    }

    /// The record as kept: texts cut to a bound (a runner's word is not trusted for size).
    pub fn bounded(mut self) -> Self {
        let cut = |s: &mut String| {
            if s.chars().count() > MAX_TEXT {
                *s = s.chars().take(MAX_TEXT).collect();
            }
        };
        cut(&mut self.command);
        cut(&mut self.note);
        self.files.truncate(MAX_FILES);
        self.files.iter_mut().for_each(cut);
        for run in [self.base.as_mut(), self.head.as_mut()]
            .into_iter()
            .flatten()
        {
            cut(&mut run.output_tail);
        }
        self
    }

    /// One line for people: the PR body, the timeline. The agent's command is shown on one
    /// line, without backticks, cleaned and cut.
    pub fn summary(&self) -> String {
        let command: String = textguard::clean_plain(&self.command)
            .chars()
            .map(|c| match c {
                '`' => '\'',
                c if c.is_control() => ' ',
                c => c,
            })
            .take(200)
            .collect();
        let exit = |r: &Option<ReproRun>| match r {
            Some(r) if r.timed_out => "timed out".to_owned(),
            Some(r) => format!("exit {}", r.exit_code),
            None => "not run".to_owned(),
        };
        match self.status {
            ReproStatus::Reproduced => format!(
                "reproduced: `{}` fails on the base ({}) and passes on the head ({})",
                command,
                exit(&self.base),
                exit(&self.head)
            ),
            ReproStatus::NotReproduced => format!(
                "not reproduced: `{}` passes on the base too ({}), so it does not expose the issue",
                command,
                exit(&self.base)
            ),
            ReproStatus::NoTest => format!("not reproduced: {}", self.note),
            ReproStatus::NotFixed => format!(
                "not fixed: `{}` still fails on the head ({})",
                command,
                exit(&self.head)
            ),
        }
    }
}

impl Store {
    /// The reproduce-first record of `task`'s latest attempt that has one.
    pub async fn task_reproduction(&self, task: TaskId) -> Result<Option<Reproduction>> {
        let row: Option<(sqlx::types::Json<Reproduction>,)> = sqlx::query_as(
            "SELECT reproduction FROM task_results \
             WHERE task_id = $1 AND reproduction IS NOT NULL ORDER BY attempt DESC LIMIT 1",
        )
        .bind(task)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0.0))
    }

    /// The reproduce-first record of one attempt, as stored (for its evidence record).
    pub async fn attempt_reproduction(
        &self,
        task: TaskId,
        attempt: i32,
    ) -> Result<Option<serde_json::Value>> {
        Ok(sqlx::query_scalar(
            "SELECT reproduction FROM task_results WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }
}
