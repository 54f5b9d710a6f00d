//! `GET /api/activity`: which stage every live task is in and since when, what the controller's
//! own agents (triage, review, reflection) work on and wait for, and what each runner holds — the
//! dashboard's agent view. Read-only, for viewers; built from one store read
//! ([`crate::store::Store::activity`]) and the runner list.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;

use super::auth::Caller;
use super::{ApiResult, AppState};

/// The controller's agents, in the order the page shows them.
const AGENTS: [&str; 3] = ["triage", "review", "reflection"];

pub(super) async fn activity(State(s): State<AppState>, _c: Caller) -> ApiResult<api::Activity> {
    let a = s.store.activity().await?;
    let runners = s.store.runners().await?;
    let claimed: HashSet<(&str, i64)> = a.claims.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let mut agents: BTreeMap<&str, api::AgentActivity> = AGENTS
        .iter()
        .map(|&name| {
            let last = a.last_calls.iter().find(|c| c.purpose == name);
            (
                name,
                api::AgentActivity {
                    name: name.to_owned(),
                    working: Vec::new(),
                    waiting: Vec::new(),
                    last_call: last.map(|c| api::AgentCall {
                        at: c.at,
                        task: c.task_id,
                        model: c.model.clone(),
                        cost_microusd: c.cost_microusd,
                    }),
                    calls_last_hour: last.map_or(0, |c| c.last_hour),
                },
            )
        })
        .collect();
    let mut by_runner: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let tasks = a
        .live
        .into_iter()
        .map(|t| {
            // Who has the task: an agent of the controller (by its claim or stage lease), a runner
            // (by its lease), or nobody yet.
            let agent = match (t.status.as_str(), t.hold.as_deref()) {
                ("new", _) => Some("triage"),
                ("reviewing", _) => Some("review"),
                (_, Some("reflection")) => Some("reflection"),
                _ => None,
            };
            let worked_by = if let Some(name) = agent {
                let busy = match name {
                    "review" => t.stage_worked,
                    other => claimed.contains(&(other, t.id)),
                };
                let entry = agents.get_mut(name).expect("every agent is listed");
                if busy {
                    entry.working.push(t.id);
                } else {
                    entry.waiting.push(t.id);
                }
                if busy { name } else { "waiting" }
            } else if let (Some(r), true) = (
                t.runner_id,
                matches!(t.status.as_str(), "leased" | "running" | "verifying"),
            ) {
                by_runner.entry(r).or_default().push(t.id);
                "runner"
            } else if t.stage_worked {
                "controller"
            } else {
                "waiting"
            };
            api::LiveTask {
                id: t.id,
                repo: t.repo,
                title: t.title,
                status: t.status,
                hold: t.hold,
                model: t.model,
                attempt: t.attempt,
                runner_id: t.runner_id,
                since: t.since,
                worked_by: worked_by.to_owned(),
            }
        })
        .collect();
    Ok(Json(api::Activity {
        tasks,
        agents: AGENTS.iter().filter_map(|n| agents.remove(n)).collect(),
        runners: runners
            .into_iter()
            .map(|r| api::RunnerActivity {
                tasks: by_runner.remove(&r.id).unwrap_or_default(),
                id: r.id,
                name: r.name,
                state: r.state,
                capacity: r.capacity,
                last_seen_at: r.last_seen_at,
            })
            .collect(),
    }))
}
