//! The plan gate in the store and over HTTP: a gated repository's task is claimed only for a
//! read-only plan run until its plan is approved (tried from the runner's side: a lease request
//! gets the plan run, then nothing while the plan waits); approve, edit, reject and the timeout;
//! auto-approval under the repository's blast-radius threshold; a plan run cannot deliver a
//! change or a bundle; bad settings are refused.

use controller::store::claims::LeaseRef;
use controller::store::completion::{Completion, Outcome};
use controller::store::ops::Actor;
use controller::store::plans::{Decision, PlanReport};
use controller::store::repos::{Repo, RepoSettings};
use controller::store::tasks::RetryPolicy;
use controller::store::{Error, Status, Store, Task, TerminalReason};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{claim_req, queued, repo, runner, store};

async fn gate(store: &Store, repo: &Repo, auto: Option<i32>) {
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                plan_gate: Some(true),
                plan_auto_blast: auto,
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
}

fn person() -> Actor {
    Actor {
        name: "user:olga".into(),
        user_id: None,
    }
}

fn plan_json(files: &[&str]) -> String {
    json!({
        "files": files,
        "approach": "Change the total.",
        "risks": ["rounding"],
        "tests": ["test_total"],
    })
    .to_string()
}

/// Claims the next task as runner `r` and starts the claim (as a runner's first report does):
/// the task, whether the lease is a plan run, and the approved plan it carries.
async fn lease(store: &Store, r: i64) -> Option<(Task, bool, Option<String>)> {
    let (t, repo) = store.claim_with_repo(&claim_req(r)).await.unwrap()?;
    let lease = controller::store::claims::LeaseRef::of(&t).unwrap();
    assert!(store.start_claim_now(&lease).await.unwrap());
    Some((t, repo.plan_run, repo.plan))
}

/// A plan run delivering `plan` with `blast` and `discarded`.
async fn deliver(
    store: &Store,
    t: &Task,
    plan: &str,
    blast: Option<i32>,
    discarded: &[&str],
) -> Task {
    let mut c = Completion::new(Outcome::Succeeded);
    c.plan = Some(PlanReport {
        plan_json: plan.into(),
        blast_radius: blast,
        blast_text: String::new(),
        discarded: discarded.iter().map(|s| s.to_string()).collect(),
    });
    store
        .complete(&LeaseRef::of(t).unwrap(), &c, &RetryPolicy::default())
        .await
        .unwrap()
        .task
}

/// A gated task waiting with its plan: (task, runner).
async fn waiting(store: &Store, name: &str, auto: Option<i32>, blast: Option<i32>) -> (Task, i64) {
    let repo = repo(store, name).await;
    gate(store, &repo, auto).await;
    let r = runner(store, &format!("{name}-r")).await;
    let t = queued(store, &repo, "fix the total").await;
    let (claimed, plan_run, _) = lease(store, r).await.expect("the plan run");
    assert_eq!(claimed.id, t.id);
    assert!(plan_run, "a gated task's first lease is a plan run");
    assert!(
        store.task(t.id).await.unwrap().planning(),
        "the task reads as planning while its plan run is on a runner"
    );
    let t = deliver(store, &claimed, &plan_json(&["src/total.py"]), blast, &[]).await;
    assert!(!t.planning(), "waiting with its plan, it is not planning");
    (t, r)
}

#[tokio::test]
async fn a_gated_task_is_claimed_only_for_its_plan_run_until_a_person_approves_the_plan() {
    let store = store().await;
    let (t, r) = waiting(&store, "acme/gate", None, Some(3)).await;
    assert_eq!(t.status, Status::PlanHold);
    // The runner asks again: nothing, the plan waits for a person.
    assert!(
        lease(&store, r).await.is_none(),
        "no lease while the plan waits"
    );
    // A user's release of holds, or the merge/dispatch approval, does not open the gate.
    let _ = store.release(t.id, &crate::note("t")).await;
    let approve = store.approve(t.id, &person()).await;
    assert!(approve.is_err(), "{approve:?}");
    assert_eq!(store.task(t.id).await.unwrap().status, Status::PlanHold);
    assert!(lease(&store, r).await.is_none());
    let plan = store.plan(t.id).await.unwrap().expect("the plan is kept");
    assert_eq!(plan.state, "pending");
    assert_eq!(plan.plan.0.files, vec!["src/total.py"]);
    for section in ["### Files", "### Approach", "### Risks", "### Tests"] {
        assert!(plan.text.contains(section), "{}", plan.text);
    }
    assert!(plan.due_at > plan.posted_at);
    // The notification webhooks hear of it as a hold (the default filter sends holds).
    let outbox: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, text FROM notify_outbox WHERE task_id = $1")
            .bind(t.id)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].0, "plan_hold");
    assert!(
        outbox[0].1.contains("has a plan waiting for approval"),
        "{outbox:?}"
    );
    assert_eq!(
        controller::config::NotifyEvent::of_kind(&outbox[0].0),
        Some(controller::config::NotifyEvent::Hold)
    );

    let approved = store
        .decide_plan(t.id, &Decision::Approve, &person())
        .await
        .unwrap();
    assert_eq!(approved.status, Status::Queued);
    // Now the implementation run, with the approved plan in its lease.
    let (impl_run, plan_run, carried) = lease(&store, r).await.expect("the implementation run");
    assert_eq!(impl_run.id, t.id);
    assert!(!plan_run);
    assert!(
        !store.task(t.id).await.unwrap().planning(),
        "the implementation run is not planning"
    );
    assert_eq!(carried.as_deref(), Some(plan.text.as_str()));
    assert_eq!(
        store.approved_plan(t.id).await.unwrap().as_deref(),
        Some(plan.text.as_str()),
        "the reviewer gets it too"
    );
    // A second decision finds nothing waiting.
    let again = store.decide_plan(t.id, &Decision::Approve, &person()).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let audit = store.audit_log(10, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "plan_approve" && a.outcome == "ok" && a.actor == "user:olga"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a.action == "plan_approve" && a.outcome.starts_with("refused")),
        "refusals are audited too"
    );
}

#[tokio::test]
async fn an_edited_plan_is_the_one_the_implementation_follows() {
    let store = store().await;
    let (t, r) = waiting(&store, "acme/edit", None, None).await;
    let empty = store
        .decide_plan(t.id, &Decision::Edit("   ".into()), &person())
        .await;
    assert!(
        matches!(empty, Err(Error::Invalid(ref m)) if m.contains("needs text")),
        "{empty:?}"
    );
    let huge = store
        .decide_plan(t.id, &Decision::Edit("x".repeat(40_000)), &person())
        .await;
    assert!(
        matches!(huge, Err(Error::Invalid(ref m)) if m.contains("bytes")),
        "{huge:?}"
    );
    assert_eq!(store.task(t.id).await.unwrap().status, Status::PlanHold);
    let text = "### Files\n- `src/total.py`\n### Approach\nUse Decimal.\u{200b}";
    let edited = store
        .decide_plan(t.id, &Decision::Edit(text.into()), &person())
        .await
        .unwrap();
    assert_eq!(edited.status, Status::Queued);
    let plan = store.plan(t.id).await.unwrap().unwrap();
    assert!(plan.edited && plan.state == "approved");
    assert!(
        plan.text.ends_with("Use Decimal."),
        "cleaned: {:?}",
        plan.text
    );
    let (_, plan_run, carried) = lease(&store, r).await.unwrap();
    assert!(!plan_run);
    assert_eq!(carried.as_deref(), Some(plan.text.as_str()));
}

#[tokio::test]
async fn a_rejected_plan_fails_the_task_with_the_reason_and_a_requeue_plans_again() {
    let store = store().await;
    let (t, r) = waiting(&store, "acme/reject", None, None).await;
    let bare = store
        .decide_plan(t.id, &Decision::Reject(" ".into()), &person())
        .await;
    assert!(matches!(bare, Err(Error::Invalid(_))), "{bare:?}");
    let failed = store
        .decide_plan(
            t.id,
            &Decision::Reject("touches the wrong module".into()),
            &person(),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.terminal_reason.0, Some(TerminalReason::PlanRejected));
    let error = failed.error.unwrap();
    assert!(
        error.contains("rejected the plan: touches the wrong module"),
        "{error}"
    );
    assert!(lease(&store, r).await.is_none());
    // Requeued, it plans again: the rejected plan opens nothing.
    store
        .requeue(t.id, &Default::default(), &crate::note("t"))
        .await
        .unwrap();
    let (again, plan_run, carried) = lease(&store, r).await.unwrap();
    assert_eq!(again.id, t.id);
    assert!(plan_run && carried.is_none());
}

#[tokio::test]
async fn an_undecided_plan_is_denied_after_the_timeout() {
    let store = store().await;
    let (t, r) = waiting(&store, "acme/timeout", None, None).await;
    assert!(
        store.deny_overdue_plans(10).await.unwrap().is_empty(),
        "not due yet"
    );
    sqlx::query("UPDATE task_plans SET due_at = now() - interval '1 second' WHERE task_id = $1")
        .bind(t.id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.deny_overdue_plans(10).await.unwrap(), vec![t.id]);
    let t = store.task(t.id).await.unwrap();
    assert_eq!(t.status, Status::Failed);
    assert_eq!(t.terminal_reason.0, Some(TerminalReason::PlanTimedOut));
    assert!(
        t.error
            .as_deref()
            .unwrap()
            .contains("plan approval timed out"),
        "{:?}",
        t.error
    );
    assert_eq!(store.plan(t.id).await.unwrap().unwrap().state, "timed_out");
    // A late decision changes nothing.
    assert!(
        store
            .decide_plan(t.id, &Decision::Approve, &person())
            .await
            .is_err()
    );
    assert!(lease(&store, r).await.is_none());
    assert!(
        store.deny_overdue_plans(10).await.unwrap().is_empty(),
        "once"
    );
}

#[tokio::test]
async fn a_plan_under_the_threshold_is_approved_by_the_policy_and_one_over_it_waits() {
    let store = store().await;
    let (small, r) = waiting(&store, "acme/auto", Some(5), Some(5)).await;
    assert_eq!(small.status, Status::Queued, "at the threshold: approved");
    let plan = store.plan(small.id).await.unwrap().unwrap();
    assert_eq!(plan.decided_by.as_deref(), Some("policy"));
    assert!(
        plan.note
            .as_deref()
            .unwrap()
            .contains("within the repository's threshold")
    );
    let timeline = store.timeline(small.id).await.unwrap();
    assert!(timeline.iter().any(|e| e.reason == "plan_ready"));
    assert!(
        timeline
            .iter()
            .any(|e| e.reason == "plan_auto_approved" && e.actor == "policy")
    );
    let audit = store.audit_log(10, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.actor == "policy" && a.action == "plan_approve")
    );
    let (t, plan_run, carried) = lease(&store, r).await.unwrap();
    assert_eq!(t.id, small.id);
    assert!(!plan_run && carried.is_some());

    let (big, _) = waiting(&store, "acme/auto-big", Some(5), Some(6)).await;
    assert_eq!(
        big.status,
        Status::PlanHold,
        "over the threshold: a person decides"
    );
    let (unknown, _) = waiting(&store, "acme/auto-unknown", Some(5), None).await;
    assert_eq!(
        unknown.status,
        Status::PlanHold,
        "no prediction: a person decides"
    );
}

#[tokio::test]
async fn a_plan_run_never_delivers_a_change_and_a_write_attempt_is_never_auto_approved() {
    let store = store().await;
    let repo = repo(&store, "acme/write").await;
    gate(&store, &repo, Some(100)).await;
    let r = runner(&store, "w-r").await;
    queued(&store, &repo, "t").await;
    let (t, plan_run, _) = lease(&store, r).await.unwrap();
    assert!(plan_run);
    let lease_ref = LeaseRef::of(&t).unwrap();
    // The plan run's lease takes no bundle.
    let refused = store.store_bundle(&lease_ref, b"bundle", "00").await;
    assert!(
        matches!(refused, Err(Error::Invalid(ref m)) if m.contains("read-only plan run")),
        "{refused:?}"
    );
    // A result without a plan (a runner that "succeeded" with a branch) is an agent failure,
    // never a push.
    let mut c = Completion::new(Outcome::Succeeded);
    c.branch = Some("backporcher/x".into());
    c.head_sha = Some("abc".into());
    let done = store
        .complete(&lease_ref, &c, &RetryPolicy::default())
        .await
        .unwrap()
        .task;
    assert_eq!(done.status, Status::Queued, "retried as an agent failure");
    assert_eq!(done.agent_retries, 1);
    assert!(done.error.unwrap().contains("no usable plan"));
    // Its next lease is a plan run again; it tried to write: the plan waits for a person even
    // under a generous threshold, and the discarded paths are reported.
    let (t, plan_run, _) = lease(&store, r).await.unwrap();
    assert!(plan_run);
    let held = deliver(&store, &t, &plan_json(&["a.py"]), Some(1), &["a.py"]).await;
    assert_eq!(held.status, Status::PlanHold);
    assert_eq!(
        store.plan(held.id).await.unwrap().unwrap().discarded,
        vec!["a.py"]
    );
    // Invalid plan JSON: an agent failure with what was wrong.
    let repo2 = crate::repo(&store, "acme/write2").await;
    gate(&store, &repo2, None).await;
    queued(&store, &repo2, "t2").await;
    let (t2, _, _) = lease(&store, r).await.unwrap();
    let bad = deliver(&store, &t2, "{\"files\": 3}", None, &[]).await;
    assert_eq!(bad.status, Status::Queued);
    assert!(bad.error.unwrap().contains("not JSON with files"));
}

#[tokio::test]
async fn plan_gate_settings_are_bounded_and_off_by_default() {
    let store = store().await;
    let repo = repo(&store, "acme/settings").await;
    assert!(!repo.plan_gate && repo.plan_auto_blast.is_none());
    assert_eq!(repo.plan_timeout_secs, 86_400);
    for s in [
        RepoSettings {
            plan_timeout_secs: Some(10),
            ..RepoSettings::default()
        },
        RepoSettings {
            plan_timeout_secs: Some(30 * 86_400),
            ..RepoSettings::default()
        },
        RepoSettings {
            plan_auto_blast: Some(-5),
            ..RepoSettings::default()
        },
    ] {
        let e = store.update_repo(repo.id, &s).await.unwrap_err();
        assert!(
            matches!(e, Error::Invalid(ref m) if m.contains("out of range")),
            "{e:?}"
        );
    }
    let set = store
        .update_repo(
            repo.id,
            &RepoSettings {
                plan_gate: Some(true),
                plan_auto_blast: Some(3),
                plan_timeout_secs: Some(600),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    assert!(set.plan_gate && set.plan_auto_blast == Some(3) && set.plan_timeout_secs == 600);
    let cleared = store
        .update_repo(
            repo.id,
            &RepoSettings {
                plan_auto_blast: Some(-1),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    assert!(cleared.plan_auto_blast.is_none(), "-1: never automatically");
    // An ungated repository's task is claimed for implementation at once.
    let plain = crate::repo(&store, "acme/plain").await;
    let r = runner(&store, "p-r").await;
    queued(&store, &plain, "t").await;
    let (_, plan_run, _) = lease(&store, r).await.unwrap();
    assert!(!plan_run);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_shows_the_plan_and_only_an_operator_decides() {
    let (base, store, server) = crate::api::start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = crate::api::Api::login(&base, "root", &password).await;
    for (user, role) in [("olga", "operator"), ("vic", "viewer")] {
        let (code, body) = admin
            .call(
                Method::POST,
                "/api/users",
                Some(json!({"username": user, "password": "a long password 1", "role": role})),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let (code, r) = admin
        .call(
            Method::POST,
            "/api/repos",
            Some(json!({"name": "acme/api-gate"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let id = r["id"].as_i64().unwrap();
    let (code, r) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{id}"),
            Some(json!({"plan_gate": true, "plan_timeout_secs": 3600})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["settings"]["plan_gate"], true);
    assert_eq!(r["settings"]["plan_auto_blast"], -1);
    let (code, r) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{id}"),
            Some(json!({"plan_timeout_secs": 5})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{r}");
    let repo = store.repo(id).await.unwrap();
    let rr = runner(&store, "api-r").await;
    let t = queued(&store, &repo, "api task").await;
    let viewer = crate::api::Api::login(&base, "vic", "a long password 1").await;
    let (code, body) = viewer
        .call(Method::GET, &format!("/api/tasks/{}/plan", t.id), None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "no plan yet: {body}");
    let (claimed, plan_run, _) = lease(&store, rr).await.unwrap();
    assert!(plan_run);
    let (code, detail) = viewer
        .call(Method::GET, &format!("/api/tasks/{}", t.id), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        detail["task"]["planning"], true,
        "a plan run shows: {detail}"
    );
    deliver(&store, &claimed, &plan_json(&["src/x.py"]), None, &[]).await;
    let (code, plan) = viewer
        .call(Method::GET, &format!("/api/tasks/{}/plan", t.id), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{plan}");
    assert_eq!(plan["state"], "pending");
    assert_eq!(plan["files"], json!(["src/x.py"]));
    let (code, detail) = viewer
        .call(Method::GET, &format!("/api/tasks/{}", t.id), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(detail["task"]["status"], "plan_hold");
    assert_eq!(detail["task"]["planning"], false);
    let (code, _) = viewer
        .call(
            Method::POST,
            &format!("/api/tasks/{}/plan", t.id),
            Some(json!({"action": "approve"})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "a viewer cannot decide");
    let operator = crate::api::Api::login(&base, "olga", "a long password 1").await;
    let (code, body) = operator
        .call(
            Method::POST,
            &format!("/api/tasks/{}/plan", t.id),
            Some(json!({"action": "reject"})),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a rejection needs a reason: {body}"
    );
    assert!(
        body["message"].as_str().unwrap_or("").contains("reason"),
        "the refusal names the missing field: {body}"
    );
    let (code, body) = operator
        .call(
            Method::POST,
            &format!("/api/tasks/{}/plan", t.id),
            Some(json!({"action": "approve", "text": "and also this"})),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "an approval takes no text: {body}"
    );
    let (code, body) = operator
        .call(
            Method::POST,
            &format!("/api/tasks/{}/plan", t.id),
            Some(json!({"action": "edit", "text": "Do it with Decimal."})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["edited"], true);
    assert_eq!(body["decided_by"], "user:olga");
    let (code, _) = operator
        .call(
            Method::POST,
            &format!("/api/tasks/{}/plan", t.id),
            Some(json!({"action": "approve"})),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "decided already");
    server.stop().await;
}
