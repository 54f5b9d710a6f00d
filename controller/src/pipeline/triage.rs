//! Triage: new tasks become queued ones. One model call for a single new issue (model and
//! complexity), one call for a batch of new issues in a repository (model, priority and
//! dependencies by issue number); the dependencies are planned on the repository's dependency
//! graph ([`super::dependencies`]) — one that would close a cycle is dropped and noted, the rest of
//! the batch stands — and written in the same transaction as the tasks. Before dispatch, an overlap check orders a task after in-flight tasks likely to touch
//! the same files (soft dependencies). In review-all mode every task waits for a human's dispatch.
//!
//! A model error or an unreadable answer never loses a task: it is queued with its current
//! settings and the error is logged. Replicas claim the new tasks they triage
//! ([`crate::store::work`]), so a batch is triaged (and paid for) once.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::dependencies::{DependencyGraph, Link};
use crate::llm::{Call, ModelClient};
use crate::loops::{LoopCtx, Next, every};
use crate::store::tasks::Triage;
use crate::store::wake::Channel;
use crate::store::work::{CLAIM_TTL, Work};
use crate::store::{HoldKind, Note, Status, Store, Task, TaskId};

fn system() -> String {
    format!(
        "You triage GitHub issues for an autonomous coding agent. {} Answer with JSON only.",
        textguard::RULE
    )
}

/// Triages every new task once; returns how many were queued.
pub async fn run_once(
    store: &Store,
    model: Option<&ModelClient>,
    triage_model: &str,
) -> anyhow::Result<usize> {
    let listed: Vec<TaskId> = store
        .tasks_in(Status::New, 200)
        .await?
        .iter()
        .map(|t| t.id)
        .collect();
    if listed.is_empty() {
        return Ok(0);
    }
    // Replicas: the tasks this controller triages are claimed, then read again (another
    // replica may have triaged them since they were listed).
    let claimed = store.claim_work(Work::Triage, &listed, CLAIM_TTL).await?;
    let kept = store.keep_work(Work::Triage, &claimed, CLAIM_TTL);
    let result = triage_claimed(store, model, triage_model, &claimed).await;
    drop(kept);
    for id in claimed {
        store.release_work(Work::Triage, id).await?;
    }
    result
}

async fn triage_claimed(
    store: &Store,
    model: Option<&ModelClient>,
    triage_model: &str,
    claimed: &[TaskId],
) -> anyhow::Result<usize> {
    let new: Vec<Task> = store.tasks_in_among(Status::New, claimed).await?;
    if new.is_empty() {
        return Ok(0);
    }
    let mut by_repo: HashMap<i64, Vec<Task>> = HashMap::new();
    for t in new {
        by_repo.entry(t.repo_id).or_default().push(t);
    }
    let settings = store.settings().await?;
    let mut queued = 0;
    for (repo_id, tasks) in by_repo {
        let repo = store.repo(repo_id).await?;
        let mode = repo
            .approval_mode
            .clone()
            .unwrap_or(settings.approval_mode.clone());
        let decisions = match model {
            Some(m) => decide(m, triage_model, &tasks).await,
            None => HashMap::new(),
        };
        let in_flight = store.in_flight(repo_id).await?;
        let mut graph = DependencyGraph::from_edges(&store.dependency_edges(repo_id).await?);
        let mut dropped = Vec::new();
        let mut batch = Vec::new();
        for t in &tasks {
            let mut d = decisions.get(&t.id).cloned().unwrap_or_default();
            // One issue's text steers the model for the whole batch: an edge onto another
            // author's issue is kept only when this issue names it itself (`#12`), so nobody's
            // issue is made to wait for (or fail with) a stranger's.
            d.depends_on.retain(|dep| {
                let Some(other) = tasks.iter().find(|o| o.id == *dep) else {
                    return false;
                };
                let kept = other.issue_author == t.issue_author
                    || names_issue(
                        &format!("{}\n{}", t.issue_title, t.issue_body),
                        other.issue_number.unwrap_or(other.id),
                    );
                if !kept {
                    tracing::warn!(task = t.id, dependency = dep, "dependency dropped: another author's issue this one does not name");
                    dropped.push(json!({"task": t.id, "dependency": dep, "why": "another author's issue, not named by this one"}));
                }
                kept
            });
            let mut triage = Triage {
                // A model chosen by label stays.
                model: if t.model == "opus" {
                    None
                } else {
                    d.model.clone()
                },
                priority: d.priority,
                depends_on: d.depends_on.clone(),
                after: overlaps(t, &in_flight, &tasks),
                hold: (mode == "review-all").then_some(HoldKind::DispatchApproval),
                bug: d.bug,
            };
            triage.after.retain(|a| !triage.depends_on.contains(a));
            let mut plan = |deps: &mut Vec<TaskId>, link: Link| {
                deps.retain(|&d| match graph.add(t.id, d, link) {
                    Ok(()) => true,
                    Err(cycle) => {
                        tracing::warn!(task = t.id, dependency = d, %cycle, "dependency dropped: it would close a cycle");
                        dropped.push(json!({"task": t.id, "dependency": d, "cycle": cycle.path}));
                        false
                    }
                });
            };
            plan(&mut triage.depends_on, Link::Hard);
            plan(&mut triage.after, Link::Soft);
            batch.push((t.id, triage));
        }
        let note = Note::new("controller", "triaged").with_data(json!({
            "model_used": model.is_some(),
            "dropped_dependencies": dropped,
            "complexity": tasks.iter().map(|t| decisions.get(&t.id).and_then(|d| d.complexity.clone())).collect::<Vec<_>>(),
            "bug": tasks.iter().map(|t| decisions.get(&t.id).and_then(|d| d.bug)).collect::<Vec<_>>(),
        }));
        match store.triage_batch(&batch, &note).await {
            Ok(done) => queued += done.len(),
            Err(e) => {
                // A bad dependency must not block the batch: queue each on its own, without the
                // dependencies the model suggested.
                tracing::warn!(repo = repo.name, error = %e, "triage batch refused; queuing tasks one by one");
                for (id, mut t) in batch {
                    t.depends_on.clear();
                    match store
                        .triage_batch(&[(id, t)], &Note::new("controller", "triaged"))
                        .await
                    {
                        Ok(_) => queued += 1,
                        Err(e) => tracing::error!(task = id, error = %e, "triage failed"),
                    }
                }
            }
        }
    }
    Ok(queued)
}

#[derive(Debug, Clone, Default)]
struct Decision {
    model: Option<String>,
    priority: Option<i32>,
    complexity: Option<String>,
    depends_on: Vec<TaskId>,
    /// `Some(true)` only for an explicit `"bug": true`; anything else is not a bug.
    bug: Option<bool>,
}

/// The triage request for `tasks` (one issue, or a batch of one repository's issues).
pub fn prompt(tasks: &[Task]) -> String {
    let issues: String = tasks
        .iter()
        .map(|t| {
            let n = t.issue_number.unwrap_or(t.id);
            format!(
                "{}{}",
                textguard::fence_plain(&format!("issue #{n} title"), &t.issue_title),
                textguard::fence(&format!("issue #{n}"), &t.issue_body)
            )
        })
        .collect();
    let ask = if tasks.len() == 1 {
        "Classify this issue. Answer {\"model\": \"sonnet\" or \"opus\" (opus only for hard, cross-cutting work), \"complexity\": \"simple\" | \"medium\" | \"complex\", \"bug\": true if it reports a defect in existing behaviour, else false}."
    } else {
        "Triage these issues of one repository. Answer a JSON array with one object per issue: {\"issue\": <number>, \"model\": \"sonnet\" | \"opus\", \"complexity\": \"simple\" | \"medium\" | \"complex\", \"bug\": true if it reports a defect in existing behaviour, else false, \"priority\": 1-200 (lower runs first), \"depends_on\": [issue numbers that must be merged first]}. Add a dependency only when one issue cannot be done before another is merged."
    };
    format!("{ask}\n\n{issues}")
}

async fn decide(model: &ModelClient, alias: &str, tasks: &[Task]) -> HashMap<TaskId, Decision> {
    let single = tasks.len() == 1;
    let user = prompt(tasks);
    let reply = model
        .call(&Call {
            purpose: if single { "triage" } else { "triage_batch" },
            model: alias,
            system: &system(),
            user: &user,
            max_tokens: 1000,
            task: single.then(|| tasks[0].id),
            repo: Some(tasks[0].repo_id),
        })
        .await;
    let text = match reply {
        Ok(r) => r.text,
        Err(e) => {
            tracing::warn!(error = %e, "triage call failed; queuing with defaults");
            return HashMap::new();
        }
    };
    match parse(&text, tasks) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "triage answer unreadable; queuing with defaults");
            HashMap::new()
        }
    }
}

/// Reads the triage answer: the first JSON value in the text (an object for one issue, an
/// array for a batch). Unknown issue numbers and models are dropped.
fn parse(text: &str, tasks: &[Task]) -> anyhow::Result<HashMap<TaskId, Decision>> {
    let v = first_json(text).ok_or_else(|| anyhow::anyhow!("no JSON in the triage answer"))?;
    let by_issue: HashMap<i64, TaskId> = tasks
        .iter()
        .map(|t| (t.issue_number.unwrap_or(t.id), t.id))
        .collect();
    let items: Vec<Value> = match v {
        Value::Array(a) => a,
        Value::Object(_) if tasks.len() == 1 => {
            let mut o = v;
            o["issue"] = json!(tasks[0].issue_number.unwrap_or(tasks[0].id));
            vec![o]
        }
        _ => anyhow::bail!("the triage answer is not an array of decisions"),
    };
    let mut out = HashMap::new();
    for item in items {
        let Some(id) = item["issue"].as_i64().and_then(|n| by_issue.get(&n)) else {
            continue;
        };
        let model = item["model"]
            .as_str()
            .filter(|m| matches!(*m, "sonnet" | "opus"))
            .map(str::to_owned);
        let priority = item["priority"].as_i64().map(|p| p.clamp(1, 1000) as i32);
        let depends_on = item["depends_on"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_i64())
                    .filter_map(|n| by_issue.get(&n).copied())
                    .filter(|d| d != id)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            *id,
            Decision {
                model,
                priority,
                complexity: item["complexity"].as_str().map(str::to_owned),
                depends_on,
                bug: Some(bug_of(&item)),
            },
        );
    }
    Ok(out)
}

/// Triage's bug verdict in one decision: only an explicit `"bug": true` is a bug; a missing,
/// `null` or non-boolean answer (`"yes"`, `1`) is not.
fn bug_of(item: &Value) -> bool {
    item.get("bug").and_then(Value::as_bool) == Some(true)
}

fn first_json(text: &str) -> Option<Value> {
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut de = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = de.next() {
                return Some(v);
            }
        }
    }
    None
}

/// Paths an issue names (tokens with a slash or a file extension).
pub fn mentioned_paths(text: &str) -> BTreeSet<String> {
    text.split(|c: char| {
        c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '(' | ')' | ',' | ';' | '<' | '>')
    })
    .map(|w| w.trim_matches(|c: char| matches!(c, '.' | ':' | '*')))
    .filter(|w| w.len() > 3 && w.len() < 200)
    .filter(|w| {
        let ext = w.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        (w.contains('/') && !w.contains("://"))
            || (!ext.is_empty()
                && ext.len() <= 5
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && !ext.chars().all(|c| c.is_ascii_digit()))
    })
    .map(|w| w.trim_start_matches("./").to_owned())
    .take(MAX_MENTIONED_PATHS)
    .collect()
}

/// Most paths read from one issue's text, and most changed files of one task compared, when
/// looking for overlaps: the check compares every pair, and an issue of thousands of paths (or a
/// task of thousands of files) must not hold the triage loop for minutes.
const MAX_MENTIONED_PATHS: usize = 200;
const MAX_CHANGED_COMPARED: usize = 2_000;

/// Whether `a` and `b` name the same file: equal, or one is the other under a directory.
fn same_file(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        long.len() > short.len()
            && long.ends_with(short)
            && long.as_bytes()[long.len() - short.len() - 1] == b'/'
    };
    a == b || under(a, b) || under(b, a)
}

/// Whether `text` names issue `number` as `#number` (not as part of a longer number or word).
fn names_issue(text: &str, number: i64) -> bool {
    let needle = format!("#{number}");
    text.match_indices(&needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '&')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// In-flight (or earlier new) tasks of the same repository that likely touch the same files.
fn overlaps(task: &Task, in_flight: &[Task], batch: &[Task]) -> Vec<TaskId> {
    let mine = mentioned_paths(&format!("{}\n{}", task.issue_title, task.issue_body));
    if mine.is_empty() {
        return Vec::new();
    }
    let touches = |other: &Task| -> bool {
        let theirs: BTreeSet<String> = other
            .changed_files
            .iter()
            .take(MAX_CHANGED_COMPARED)
            .cloned()
            .chain(mentioned_paths(&format!(
                "{}\n{}",
                other.issue_title, other.issue_body
            )))
            .collect();
        mine.iter().any(|p| theirs.iter().any(|q| same_file(p, q)))
    };
    in_flight
        .iter()
        .chain(batch.iter().filter(|b| b.id < task.id))
        .filter(|o| o.id != task.id && touches(o))
        .map(|o| o.id)
        .collect()
}

/// Runs triage until `shutdown`, woken when tasks arrive (`bp_new`); each pass first waits the
/// debounce, so issues filed together are triaged as one batch.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let wake = ctx.fanout.wake(Channel::New);
    every("triage", vec![wake], ctx.config.sweep, shutdown, || {
        let ctx = ctx.clone();
        async move {
            tokio::time::sleep(ctx.config.pipeline.triage_debounce).await;
            run_once(&ctx.store, ctx.llm.as_ref(), &ctx.config.triage_model).await?;
            Ok(Next::Wait)
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_found_in_issue_text() {
        let p =
            mentioned_paths("Fix `src/api/handlers.rs` and README.md; see https://x.io/a/b v1.2");
        assert!(p.contains("src/api/handlers.rs"), "{p:?}");
        assert!(p.contains("README.md"), "{p:?}");
        assert!(!p.iter().any(|x| x.contains("https")), "{p:?}");
        assert!(!p.contains("v1.2"), "{p:?}");
    }

    #[test]
    fn answers_parse_with_prose_around_them() {
        let v = first_json("Sure! Here: [{\"issue\": 3, \"depends_on\": [2]}] done").unwrap();
        assert_eq!(v[0]["issue"], 3);
        assert!(first_json("no json").is_none());
    }

    #[test]
    fn overlaps_read_a_bounded_number_of_paths_and_match_whole_names() {
        let many: String = (0..5_000).map(|i| format!("a/b{i}.rs ")).collect();
        assert_eq!(mentioned_paths(&many).len(), MAX_MENTIONED_PATHS);
        assert!(same_file("src/api.rs", "src/api.rs"));
        assert!(same_file("crates/x/src/api.rs", "src/api.rs"));
        assert!(same_file("api.rs", "src/api.rs"));
        assert!(
            !same_file("src/myapi.rs", "api.rs"),
            "a whole name, not a suffix"
        );
    }

    #[test]
    fn an_issue_is_named_by_its_number_alone() {
        assert!(names_issue("needs #12 first", 12));
        assert!(names_issue("(#12)", 12));
        assert!(!names_issue("needs #123", 12));
        assert!(!names_issue("see a#12 or &#12;", 12));
        assert!(!names_issue("needs 12", 12));
    }

    #[test]
    fn only_an_explicit_true_is_a_bug() {
        assert!(bug_of(&json!({"bug": true})));
        for no in [
            json!({"bug": false}),
            json!({}),
            json!({"bug": null}),
            json!({"bug": "true"}),
            json!({"bug": 1}),
        ] {
            assert!(!bug_of(&no), "{no}");
        }
    }
}
