//! The ranking step of a best-of-N task, run by the push stage before it pushes: reads the
//! round's candidates ([`crate::store::candidates`]), asks the reviewer to score the finalists'
//! diffs (read from their bundles, never pushed), ranks them ([`super::rank`]) and records the
//! ranking, which makes the winner's bundle the task's own. Only the winner is pushed; the others
//! stay as finished candidates with their logs, results and the reason they lost.
//!
//! Where each input comes from (the runner's result data, `task_results.data#>'{data,data}'`):
//! `insertions` + `deletions` (numstat); tests passed from the evidence's verify on the head
//! (`evidence.verify_after.status`); coverage from the evidence's blast-radius coverage
//! (`evidence.coverage.fraction`); reproduced from the attempt's reproduce-first record
//! (`task_results.reproduction`: `reproduced` is true, the other endings false); the backend from
//! the candidate's `agent`. Top-level `tests_passed`, `reproduced` and `coverage` keys in the
//! result data win when present.

use std::time::Instant;

use serde_json::{Value, json};

use super::review::{MAX_WINDOWS, WINDOW};
use super::{Pipeline, ReviewInput, rank};
use crate::store::candidates::CandidateRun;
use crate::store::repos::Repo;
use crate::store::{Result, Task};

/// What the ranking of a round decided.
#[derive(Debug, Clone)]
pub(super) struct Ranked {
    /// The winning candidate, if any may win.
    pub winner: Option<i64>,
}

/// Ranks the current round of `task` unless it was ranked before (then returns `None`), and
/// records the ranking.
pub(super) async fn rank_round(p: &Pipeline, task: &Task, repo: &Repo) -> Result<Option<Ranked>> {
    if p.store.ranking(task.id, task.attempt).await?.is_some() {
        return Ok(None);
    }
    let started = Instant::now();
    let runs = p.store.candidate_runs(task.id, task.attempt).await?;
    let mut cands: Vec<rank::Candidate> = runs.iter().map(candidate).collect();
    let finals = rank::finalists(&cands);
    let reviewer = if finals.len() < 2 {
        format!("not consulted: {} finalist", finals.len())
    } else {
        match score(p, task, repo, &runs, &finals).await {
            Ok(scores) => {
                for (id, s) in &scores {
                    if let Some(c) = cands.iter_mut().find(|c| c.task_id == *id) {
                        c.reviewer_score = Some(*s);
                    }
                }
                format!("scored {} finalists", scores.len())
            }
            Err(why) => format!("unavailable, ranked without it: {why}"),
        }
    };
    let decision = rank::decide(&cands);
    let micros = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
    let entries = json!(decision.entries);
    if let Some(winner) = decision.winner {
        p.store
            .record_ranking(task, winner, &reviewer, &entries, micros)
            .await?;
    }
    tracing::info!(
        task = task.id,
        attempt = task.attempt,
        winner = ?decision.winner,
        candidates = cands.len(),
        rank_micros = micros,
        reviewer = %reviewer,
        "best-of-N round ranked"
    );
    Ok(Some(Ranked {
        winner: decision.winner,
    }))
}

/// Ranking's view of a candidate's row and result.
fn candidate(r: &CandidateRun) -> rank::Candidate {
    let data: &Value = r
        .result
        .as_ref()
        .and_then(|d| d.0.pointer("/data/data"))
        .unwrap_or(&Value::Null);
    let int = |k: &str| data.get(k).and_then(Value::as_i64);
    let diff_lines = match (int("insertions"), int("deletions")) {
        (None, None) => None,
        (a, d) => Some(a.unwrap_or(0) + d.unwrap_or(0)),
    };
    rank::Candidate {
        task_id: r.task_id,
        candidate: r.candidate,
        model: r.model.clone(),
        backend: Some(r.agent.clone()),
        outcome: r
            .terminal_reason
            .clone()
            .unwrap_or_else(|| r.status.as_str().to_owned()),
        has_bundle: r.has_bundle,
        tests_passed: data
            .get("tests_passed")
            .and_then(Value::as_bool)
            .or_else(
                || match data.pointer("/evidence/verify_after/status")?.as_str()? {
                    "passed" => Some(true),
                    "failed" | "timed_out" => Some(false),
                    _ => None,
                },
            ),
        reproduced: data.get("reproduced").and_then(Value::as_bool).or_else(|| {
            let r = r.reproduction.as_ref()?;
            Some(r.0.get("status")?.as_str()? == "reproduced")
        }),
        diff_lines,
        coverage: data
            .get("coverage")
            .and_then(Value::as_f64)
            .or_else(|| data.pointer("/evidence/coverage/fraction")?.as_f64())
            .map(|c| c.clamp(0.0, 1.0)),
        reviewer_score: None,
        cost_microusd: r.cost_microusd,
    }
}

/// The reviewer's score of each finalist's diff; an error says why the reviewer could not be
/// used (the ranking goes on without it).
async fn score(
    p: &Pipeline,
    task: &Task,
    repo: &Repo,
    runs: &[CandidateRun],
    finals: &[i64],
) -> std::result::Result<Vec<(i64, f64)>, String> {
    let token = p.forge.git_token().await.map_err(|e| e.to_string())?;
    let branch = task.branch.clone().unwrap_or_default();
    let mut scores = Vec::new();
    for id in finals {
        let Some(run) = runs.iter().find(|r| r.task_id == *id) else {
            continue;
        };
        let Some((_, bundle)) = p
            .store
            .bundle(run.task_id, run.attempt)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err(format!("candidate task {id} has no bundle"));
        };
        let diff = p
            .pusher
            .bundle_diff(
                &repo.name,
                &repo.clone_url,
                &repo.default_branch,
                &branch,
                &bundle,
                &token,
                WINDOW * MAX_WINDOWS,
            )
            .await
            .map_err(|e| format!("candidate task {id}'s diff: {e}"))?;
        if !diff.complete {
            return Err(format!("candidate task {id}'s diff is too large to review"));
        }
        let blast = run
            .result
            .as_ref()
            .and_then(|d| d.0.pointer("/data/data/blast_radius"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let input = ReviewInput {
            task: task.id,
            repo: repo.id,
            title: task.issue_title.clone(),
            body: task
                .prompt_override
                .clone()
                .unwrap_or_else(|| task.issue_body.clone()),
            diff: diff.text,
            blast_radius: blast,
            plan: p
                .store
                .approved_plan(task.id)
                .await
                .map_err(|e| e.to_string())?,
            // A candidate has no signed record until it wins: the winner's is made at push and
            // checked by the review stage like any attempt's.
            evidence: None,
        };
        let s = tokio::time::timeout(p.config.review_timeout, p.reviewer.score(&input))
            .await
            .map_err(|_| format!("the reviewer timed out after {:?}", p.config.review_timeout))?
            .map_err(|e| e.to_string())?;
        scores.push((*id, s.clamp(0.0, 1.0)));
    }
    Ok(scores)
}
