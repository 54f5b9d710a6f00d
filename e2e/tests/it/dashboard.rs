//! The dashboard's controls and views in chromium, one controller per test: the task panel with
//! the agent's work as a transcript (live, then kept for the ended attempt, the raw stream one
//! click away), review, PR link, error and cost breakdown; new task, edit, hold, release,
//! dispatch, escalate, reject, cancel and requeue with changes; the agent view, the charts, the
//! audit log, users and API tokens, the approval-mode switch, and phone width. Hostile text in a
//! prompt and in a log line shows literally and never runs. Two people side by side: a viewer sees
//! no approve control and is refused (403, audited) by the API; an operator approves and both
//! pages change live. Screenshots go to `$CARGO_TARGET_TMPDIR/screenshots` (`dash-*`).

use std::time::Duration;

use controller::store::claims::{ClaimRequest, LeaseRef};
use controller::store::tasks::NewTask;
use controller::store::{HoldKind, Note, Status, Store};
use e2e::harness::{Options, TestController};
use fantoccini::{Client, Locator, key::Key};
use serde_json::{Value, json};

use crate::browser::{browser, click_fresh, keys_fresh, screenshot, skip, wait_status};

/// Markup that would run if any text were inserted as HTML.
const HOSTILE: &str = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";

async fn login(b: &Client, base: &str, user: &str, password: &str) {
    b.goto(base).await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login-user"))
        .await
        .unwrap();
    b.find(Locator::Css("#login-user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("#login-password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#fleet:not([hidden])"))
        .await
        .unwrap_or_else(|e| panic!("{user} never saw the fleet: {e}"));
    // Confirmations are answered yes (the test is the person who asked).
    b.execute("window.confirm = () => true; return null;", vec![])
        .await
        .unwrap();
}

async fn text(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the text at `css` contains `needle`; returns it.
async fn wait_text(b: &Client, css: &str, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(e) = b.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if t.contains(needle) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    screenshot(b, "dash-failed-wait").await;
    panic!("{css} never showed `{needle}`; last: `{last}`");
}

async fn wait_for(b: &Client, css: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Waits until `check` holds for the task as stored.
async fn wait_task(
    store: &Store,
    id: i64,
    what: &str,
    check: impl Fn(&controller::store::Task) -> bool,
) -> controller::store::Task {
    for _ in 0..150 {
        let t = store.task(id).await.unwrap();
        if check(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {id}: {what}: {:?}", store.task(id).await.unwrap());
}

/// Waits until the audit log holds an entry `check` accepts: an action's change is stored (and can
/// be seen) a moment before the controller writes its audit entry and answers the page.
async fn wait_audited(
    store: &Store,
    what: &str,
    check: impl Fn(&controller::store::ops::AuditEntry) -> bool,
) {
    for _ in 0..150 {
        if store.audit_log(50, None).await.unwrap().iter().any(&check) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = store.audit_log(50, None).await.unwrap();
    panic!("{what} not audited: {audit:?}");
}

async fn nothing_ran(b: &Client) {
    let pwned = b
        .execute("return window.__pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!(true), "hostile text ran as markup");
}

async fn fill(b: &Client, css: &str, value: &str) {
    let e = b.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Picks `value` in the select `css` as a person would (the change event fires).
async fn choose(b: &Client, css: &str, value: &str) {
    b.execute(
        "const s = document.querySelector(arguments[0]); s.value = arguments[1]; \
         s.dispatchEvent(new Event('input', {bubbles: true})); \
         s.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![json!(css), json!(value)],
    )
    .await
    .unwrap();
}

async fn api_task(store: &Store, repo: i64, title: &str, body: &str) -> i64 {
    let mut t = NewTask::for_issue(repo, 0, title, body);
    t.issue_number = None;
    store.create_task(&t).await.unwrap().id
}

/// Puts a task straight into `status` (setup only), the timeline trigger satisfied.
async fn force(store: &Store, id: i64, status: &str) {
    sqlx::query(
        "UPDATE tasks SET status = $2, \
           terminal_reason = CASE $2 WHEN 'merged' THEN 'succeeded' WHEN 'failed' THEN 'agent_failed' \
                                     WHEN 'canceled' THEN 'canceled_by_user' END, \
           ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'forced' WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn claim(store: &Store, runner: i64) -> LeaseRef {
    let t = store
        .claim(&ClaimRequest {
            runner_id: runner,
            labels: &[],
            lease: Duration::from_secs(600),
            capacity: None,
        })
        .await
        .unwrap()
        .expect("a queued task to claim");
    let lease = LeaseRef::of(&t).unwrap();
    // As a runner's first report does: the task row takes the lease.
    assert!(store.start_claim_now(&lease).await.unwrap());
    lease
}

fn line(v: Value) -> Vec<u8> {
    format!("{v}\n").into_bytes()
}

/// An agent's session in Claude Code's stream-json, with a long tool result, hostile text, a
/// failing command and a verify run; then the result.
fn session(hostile: &str) -> Vec<(&'static str, Vec<u8>)> {
    let long: String = (1..=60)
        .map(|i| format!("test case {i} ... ok\n"))
        .collect();
    vec![
        (
            "agent",
            line(
                json!({"type": "system", "subtype": "init", "model": "claude-sonnet-4-5", "cwd": "/workspace", "tools": ["Bash", "Read", "Edit"], "session_id": "s1"}),
            ),
        ),
        (
            "agent",
            line(
                json!({"type": "assistant", "message": {"id": "m1", "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "I will look at the failing test first."}], "usage": {"input_tokens": 1000, "output_tokens": 100}}}),
            ),
        ),
        (
            "agent",
            line(
                json!({"type": "assistant", "message": {"id": "m1", "model": "claude-sonnet-4-5", "content": [{"type": "tool_use", "id": "tu1", "name": "Bash", "input": {"command": "cargo test -p parser", "description": "run the tests"}}], "usage": {"input_tokens": 1000, "output_tokens": 100}}}),
            ),
        ),
        (
            "agent",
            line(
                json!({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": long}]}}),
            ),
        ),
        (
            "agent",
            line(
                json!({"type": "assistant", "message": {"id": "m2", "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": hostile}, {"type": "tool_use", "id": "tu2", "name": "Read", "input": {"file_path": "/workspace/src/lib.rs"}}], "usage": {"input_tokens": 3000, "output_tokens": 300}}}),
            ),
        ),
        (
            "agent",
            line(
                json!({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu2", "content": [{"type": "text", "text": "no such file"}], "is_error": true}]}}),
            ),
        ),
        ("runner", b"verifying with `cargo test`\n".to_vec()),
        (
            "verify",
            b"running 3 tests\ntest result: ok. 3 passed\n".to_vec(),
        ),
        ("runner", b"verify passed\n".to_vec()),
        (
            "agent",
            line(
                json!({"type": "result", "subtype": "success", "is_error": false, "num_turns": 2, "duration_ms": 42000, "total_cost_usd": 0.6, "result": "Fixed the parser."}),
            ),
        ),
    ]
}

/// A controller (leases of 10 minutes) with repository `repo`, and a browser logged in to its
/// dashboard as the admin `root`.
struct AdminPage {
    c: TestController,
    repo: controller::store::repos::Repo,
    b: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl AdminPage {
    async fn open(repo: &str) -> Self {
        let c = TestController::start(Options {
            lease: Duration::from_secs(600),
            ..Options::default()
        })
        .await;
        let password = controller::http::bootstrap_admin(&c.store, "root")
            .await
            .unwrap();
        let repo = c.repo(repo).await;
        let (b, _driver, _profile) = browser().await;
        login(&b, &format!("http://{}", c.http), "root", &password).await;
        Self {
            c,
            repo,
            b,
            _driver,
            _profile,
        }
    }
}

#[tokio::test]
async fn every_control_and_view_of_the_dashboard_in_chromium() {
    if skip() {
        return;
    }
    let AdminPage {
        c,
        repo,
        b,
        _driver,
        _profile,
    } = AdminPage::open("acme/web").await;
    let store = c.store.clone();
    // A laptop's width first; a phone's at the end.
    b.set_window_size(1280, 800).await.unwrap();

    // A new task from the form, with hostile text in its title and prompt.
    click_fresh(&b, "#new-task-open").await;
    wait_for(
        &b,
        "#new-task:not([hidden]) #new-repo option[value=\"acme/web\"]",
    )
    .await;
    fill(&b, "#new-title", &format!("Fix {HOSTILE}")).await;
    fill(
        &b,
        "#new-prompt",
        &format!("The parser drops {HOSTILE} on the floor."),
    )
    .await;
    fill(&b, "#new-model", "haiku").await;
    fill(&b, "#new-priority", "7").await;
    choose(&b, "#new-agent", "codex").await;
    screenshot(&b, "dash-01-new-task").await;
    click_fresh(&b, "#new-submit").await;
    let title = wait_text(&b, "#detail-title", "Fix <img").await;
    assert!(title.contains(HOSTILE), "shown literally: {title}");
    let created: i64 = title[1..title.find(' ').unwrap()].parse().unwrap();
    let t = store.task(created).await.unwrap();
    assert_eq!((t.model.as_str(), t.priority), ("haiku", 7));
    assert_eq!(t.agent, "codex", "the agent chosen in the form");
    let prompt = b
        .execute(
            "return document.querySelector('#detail-prompt').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        prompt,
        json!(format!("The parser drops {HOSTILE} on the floor."))
    );
    let row = text(&b, &format!("#tasks tr[data-id=\"{created}\"] td.title")).await;
    assert_eq!(row, format!("Fix {HOSTILE}"));
    nothing_ran(&b).await;

    // Edit before it runs: prompt, model and priority.
    click_fresh(&b, "#edit-box:not([hidden]) > summary").await;
    fill(&b, "#edit-prompt", "Only the parser, nothing else.").await;
    fill(&b, "#edit-model", "sonnet").await;
    fill(&b, "#edit-priority", "2").await;
    choose(&b, "#edit-agent", "claude").await;
    click_fresh(&b, "#edit-submit").await;
    let t = wait_task(&store, created, "edited", |t| t.priority == 2).await;
    assert_eq!(t.model, "sonnet");
    assert_eq!(t.agent, "claude", "the agent changed before it runs");
    assert_eq!(
        t.prompt_override.as_deref(),
        Some("Only the parser, nothing else.")
    );
    wait_text(&b, "#detail-timeline", "edit").await;
    wait_text(&b, "#detail-meta", "priority 2").await;

    // Hold, release, escalate, dispatch now.
    wait_task(&store, created, "queued", |t| t.status == Status::Queued).await;
    click_fresh(&b, "#detail-actions button[data-action=\"hold\"]").await;
    wait_task(&store, created, "held", |t| t.hold_kind.0.is_some()).await;
    wait_status(&b, created, "queued").await;
    click_fresh(&b, "#detail-actions button[data-action=\"release\"]").await;
    wait_task(&store, created, "released", |t| t.hold_kind.0.is_none()).await;
    click_fresh(&b, "#detail-actions button[data-action=\"escalate\"]").await;
    wait_task(&store, created, "escalated", |t| t.model == "opus").await;
    click_fresh(&b, "#detail-actions button[data-action=\"dispatch\"]").await;
    wait_text(&b, "#detail-timeline", "dispatch").await;

    // Reject a task waiting for approval; cancel one; requeue it with changes.
    store
        .hold(
            created,
            HoldKind::DispatchApproval,
            None,
            &Note::new("test", "gate"),
        )
        .await
        .unwrap();
    wait_for(&b, "#detail-actions button[data-action=\"approve\"]").await;
    screenshot(&b, "dash-02-approve-or-reject").await;
    click_fresh(&b, "#detail-actions button[data-action=\"reject\"]").await;
    wait_task(&store, created, "rejected", |t| {
        t.status == Status::Canceled
    })
    .await;
    wait_status(&b, created, "canceled").await;
    wait_text(&b, "#edit-title", "Requeue with changes").await;
    if b.find_all(Locator::Css("#edit-box[open]"))
        .await
        .unwrap()
        .is_empty()
    {
        click_fresh(&b, "#edit-box > summary").await;
    }
    fill(&b, "#edit-model", "haiku").await;
    click_fresh(&b, "#edit-submit").await;
    let t = wait_task(&store, created, "requeued", |t| !t.status.is_terminal()).await;
    assert_eq!(t.model, "haiku");
    let second = api_task(&store, repo.id, "Second", "body").await;
    // With the keyboard: Escape closes the panel and gives the focus back to the row; Enter on
    // another row opens that task.
    b.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    wait_for(&b, "#detail[hidden]").await;
    let focused = b
        .execute("return document.activeElement.dataset.id || null;", vec![])
        .await
        .unwrap();
    assert_eq!(
        focused,
        json!(created.to_string()),
        "the focus went back to the row"
    );
    keys_fresh(
        &b,
        &format!("#tasks tr[data-id=\"{second}\"]"),
        &Key::Enter.to_string(),
    )
    .await;
    wait_text(&b, "#detail-title", "Second").await;
    click_fresh(&b, "#detail-actions button[data-action=\"cancel\"]").await;
    wait_task(&store, second, "canceled", |t| t.status == Status::Canceled).await;
    for action in [
        "create_task",
        "edit",
        "hold",
        "release",
        "escalate",
        "dispatch_now",
        "reject",
        "requeue",
        "cancel",
    ] {
        wait_audited(&store, action, |a| {
            a.action == action && a.actor.contains("root")
        })
        .await;
    }

    // The agent's work: a runner holds a task and ships its session; the panel shows it as a
    // transcript, live.
    store
        .hold(
            created,
            HoldKind::User,
            None,
            &Note::new("test", "out of the way"),
        )
        .await
        .unwrap();
    let worked = api_task(&store, repo.id, "Parser fix", "fix the parser").await;
    wait_task(&store, worked, "triaged", |t| t.status == Status::Queued).await;
    let runner = store.register_runner("runner-a", &[], 2).await.unwrap().id;
    let lease = claim(&store, runner).await;
    assert_eq!(lease.task_id, worked);
    let lines = session(HOSTILE);
    for (seq, (stream, data)) in lines.iter().take(3).enumerate() {
        store
            .append_log(&lease, seq as i64, stream, data)
            .await
            .unwrap();
    }
    click_fresh(&b, &format!("#tasks tr[data-id=\"{worked}\"]")).await;
    wait_text(&b, "#transcript", "I will look at the failing test first.").await;
    wait_text(&b, "#log-state", "live").await;
    let tool = text(&b, "#transcript .tool[data-tool=\"Bash\"] .tool-head").await;
    assert!(tool.contains("cargo test -p parser"), "{tool}");
    // The rest arrives while the panel is open.
    for (seq, (stream, data)) in lines.iter().enumerate().skip(3) {
        store
            .append_log(&lease, seq as i64, stream, data)
            .await
            .unwrap();
    }
    wait_text(&b, "#transcript", "Fixed the parser.").await;
    let steps = b
        .find_all(Locator::Css("#transcript .entry.step"))
        .await
        .unwrap();
    assert_eq!(steps.len(), 2, "one step per assistant message");
    let first = steps[0].text().await.unwrap();
    assert!(first.contains("1000 in / 100 out tokens"), "{first}");
    // The attempt cost $0.60 as the agent counts it, shared by weight: 1,500 of 6,000 units.
    assert!(first.contains("≈$0.15"), "cost per step: {first}");
    let second_step = steps[1].text().await.unwrap();
    assert!(
        second_step.contains("≈$0.45"),
        "cost per step: {second_step}"
    );
    // The long result is folded, the failed call marked, the verify run passed.
    let fold = text(
        &b,
        "#transcript .tool[data-tool=\"Bash\"] details.fold summary",
    )
    .await;
    assert!(fold.contains("60 lines"), "{fold}");
    wait_for(&b, "#transcript .tool.failed[data-tool=\"Read\"]").await;
    wait_for(&b, "#transcript details.verify[data-verify=\"passed\"]").await;
    let all = text(&b, "#transcript").await;
    assert!(all.contains(HOSTILE), "the log's markup shows as text");
    nothing_ran(&b).await;
    b.execute(
        "document.querySelector('#log-title').scrollIntoView(); return null;",
        vec![],
    )
    .await
    .unwrap();
    screenshot(&b, "dash-03-transcript").await;
    // The raw stream, one click away.
    click_fresh(&b, "#log-raw").await;
    let raw = text(&b, "#detail-log").await;
    assert!(
        raw.contains("\"type\":\"system\"") && raw.contains("[verify] running 3 tests"),
        "{raw}"
    );
    click_fresh(&b, "#log-raw").await;
    wait_for(&b, "#transcript:not([hidden])").await;

    // The agent view while it runs: the runner holds it, the stage shows with its time.
    click_fresh(&b, "#nav button[data-view=\"agents\"]").await;
    let card = wait_text(&b, "#runner-cards [data-runner]", "Parser fix").await;
    assert!(
        card.contains("runner-a") && card.contains("1 of 2 slots"),
        "{card}"
    );
    wait_for(
        &b,
        &format!("#board .column[data-stage=\"leased\"] [data-task=\"{worked}\"]"),
    )
    .await;
    wait_text(
        &b,
        &format!("#board [data-task=\"{worked}\"]"),
        "on runner-a",
    )
    .await;
    for agent in ["triage", "review", "reflection"] {
        wait_for(&b, &format!("#agent-cards [data-agent=\"{agent}\"]")).await;
    }
    screenshot(&b, "dash-04-agents").await;

    // The attempt ends; its transcript is kept; review, PR link, error and cost show.
    store
        .complete(
            &lease,
            &controller::store::completion::Completion::new(
                controller::store::completion::Outcome::AgentFailed,
            ),
            &controller::store::tasks::RetryPolicy::default(),
        )
        .await
        .unwrap();
    sqlx::query(
        "UPDATE tasks SET pr_number = 42, pr_url = 'https://github.com/acme/web/pull/42', \
         review = $2, error = $3 WHERE id = $1",
    )
    .bind(worked)
    .bind(json!({"verdict": "approve", "reasons": ["small and tested", HOSTILE]}))
    .bind(format!("ci failed: {HOSTILE}"))
    .execute(store.pool())
    .await
    .unwrap();
    for (purpose, model, cost) in [("agent", "sonnet", 500_000i64), ("review", "haiku", 20_000)] {
        store
            .record_usage(Some(worked), None, purpose, model, 1000, 100, cost)
            .await
            .unwrap();
    }
    click_fresh(&b, "#nav button[data-view=\"fleet\"]").await;
    click_fresh(&b, &format!("#tasks tr[data-id=\"{worked}\"]")).await;
    wait_text(&b, "#log-state", "attempt ended").await;
    wait_text(&b, "#transcript", "Fixed the parser.").await;
    let link = wait_for(&b, "#detail-pr-link").await;
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some("https://github.com/acme/web/pull/42")
    );
    let review = wait_text(&b, "#detail-review", "small and tested").await;
    assert!(review.contains(HOSTILE), "{review}");
    let error = text(&b, "#detail-error").await;
    assert_eq!(error, format!("ci failed: {HOSTILE}"));
    let cost = wait_text(&b, "#detail-cost", "review").await;
    assert!(cost.contains("$0.5200") || cost.contains("$0.52"), "{cost}");
    nothing_ran(&b).await;
    screenshot(&b, "dash-05-panel-ended").await;

    // A second attempt: the panel follows it live; the first stays one choice away.
    let lease2 = claim(&store, runner).await;
    assert_eq!((lease2.task_id, lease2.attempt), (worked, 2));
    store
        .append_log(
            &lease2,
            0,
            "agent",
            &line(json!({"type": "assistant", "message": {"id": "n1", "content": [{"type": "text", "text": "Second try, smaller change."}]}})),
        )
        .await
        .unwrap();
    wait_text(&b, "#transcript", "Second try, smaller change.").await;
    let shown = b
        .execute(
            "return document.querySelector('#log-attempt').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!("2"));
    b.find(Locator::Css("#log-attempt"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    wait_text(&b, "#transcript", "Fixed the parser.").await;
    wait_text(&b, "#log-state", "attempt ended").await;
    assert!(!text(&b, "#transcript").await.contains("Second try"));

    // Pause and resume dispatch from the header; the filter narrows the list.
    click_fresh(&b, "#pause").await;
    wait_for(&b, "#paused-badge:not([hidden])").await;
    assert!(store.settings().await.unwrap().queue_paused);
    click_fresh(&b, "#resume").await;
    wait_for(&b, "#paused-badge[hidden]").await;
    assert!(!store.settings().await.unwrap().queue_paused);
    fill(&b, "#filter", "parser fix").await;
    wait_for(&b, &format!("#tasks tr[data-id=\"{second}\"][hidden]")).await;
    assert!(
        b.find_all(Locator::Css(&format!(
            "#tasks tr[data-id=\"{worked}\"]:not([hidden])"
        )))
        .await
        .unwrap()
        .len()
            == 1
    );
    fill(&b, "#filter", "").await;

    // Time in stage stops at the end.
    force(&store, worked, "merged").await;
    wait_status(&b, worked, "merged").await;
    let since = text(&b, &format!("#tasks tr[data-id=\"{worked}\"] td.since")).await;
    assert!(since.starts_with("ended after"), "{since}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        text(&b, &format!("#tasks tr[data-id=\"{worked}\"] td.since")).await,
        since,
        "an ended task's time stands still"
    );

    // Charts: the merged task is drawn today, per model and per repository.
    click_fresh(&b, "#nav button[data-view=\"metrics\"]").await;
    wait_for(&b, "#chart-merged rect[data-series=\"merged\"]").await;
    // The merged task's model has a time to merge; one with nothing merged has none.
    let model = store.task(worked).await.unwrap().model;
    wait_for(
        &b,
        &format!("#chart-ttm-model rect[data-series=\"p90\"][data-group=\"{model}\"]"),
    )
    .await;
    wait_for(
        &b,
        &format!("#chart-rate-model rect[data-group=\"{model}\"]"),
    )
    .await;
    if model != "sonnet" {
        assert!(
            b.find_all(Locator::Css("#chart-ttm-model rect[data-group=\"sonnet\"]"))
                .await
                .unwrap()
                .is_empty(),
            "the canceled sonnet task merged nothing"
        );
    }
    wait_for(&b, "#chart-cost-repository rect[data-group=\"acme/web\"]").await;
    wait_for(&b, "#chart-success circle").await;
    click_fresh(&b, "#chart-ttm-repository details.numbers > summary").await;
    let numbers = wait_text(
        &b,
        "#chart-ttm-repository details.numbers table",
        "acme/web",
    )
    .await;
    assert!(numbers.contains("100 %"), "success of acme/web: {numbers}");
    screenshot(&b, "dash-06-charts").await;

    // Audit log.
    click_fresh(&b, "#nav button[data-view=\"audit\"]").await;
    wait_text(&b, "#audit-table", "create_task").await;
    wait_for(&b, "#audit-table tr[data-action=\"reject\"]").await;

    // Users: create one, change the role, disable.
    click_fresh(&b, "#nav button[data-view=\"users\"]").await;
    wait_for(&b, "#user-table tr[data-user=\"root\"]").await;
    fill(&b, "#new-user-name", "olga").await;
    fill(&b, "#new-user-password", "a long enough password").await;
    b.find(Locator::Css("#new-user-role"))
        .await
        .unwrap()
        .select_by_value("viewer")
        .await
        .unwrap();
    click_fresh(&b, "#new-user-submit").await;
    wait_for(&b, "#user-table tr[data-user=\"olga\"]").await;
    b.find(Locator::Css("select[data-user-role=\"olga\"]"))
        .await
        .unwrap()
        .select_by_value("operator")
        .await
        .unwrap();
    let role = || async {
        store
            .users()
            .await
            .unwrap()
            .into_iter()
            .find(|u| u.username == "olga")
            .unwrap()
    };
    for _ in 0..100 {
        if role().await.role == "operator" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(role().await.role, "operator");
    click_fresh(&b, "button[data-user-toggle=\"olga\"]").await;
    wait_text(
        &b,
        "#user-table tr[data-user=\"olga\"] .user-state",
        "disabled",
    )
    .await;
    assert!(role().await.disabled);
    screenshot(&b, "dash-07-users").await;

    // Tokens: the secret once, then revoke.
    click_fresh(&b, "#nav button[data-view=\"tokens\"]").await;
    fill(&b, "#new-token-name", "ci").await;
    click_fresh(&b, "#new-token-submit").await;
    let secret = wait_for(&b, "#token-secret-box:not([hidden]) #token-secret")
        .await
        .text()
        .await
        .unwrap();
    assert!(secret.len() > 20, "{secret}");
    let who = bearer_status(&b, &secret).await;
    assert_eq!(who, 200, "the secret shown works");
    screenshot(&b, "dash-08-token-once").await;
    click_fresh(&b, "#token-secret-done").await;
    assert_eq!(text(&b, "#token-secret").await, "", "shown once only");
    click_fresh(&b, "button[data-revoke=\"ci\"]").await;
    wait_text(
        &b,
        "#token-table tr[data-token=\"ci\"] .token-state",
        "revoked",
    )
    .await;
    let who = bearer_status(&b, &secret).await;
    assert_eq!(who, 401, "a revoked token is refused");

    // The approval-mode switch (admins).
    approval_switch(&b, &store).await;

    // A log far past what a page should hold stays bounded: the latest entries, a note saying
    // how many earlier ones are not shown, long outputs cut with a note.
    let bounded = b
        .execute(
            "const root = document.createElement('div'), raw = document.createElement('pre'); \
             const t = new Transcript(root, raw); \
             for (let i = 0; i < 2000; i++) t.push({stream: 'agent', seq: i, text: JSON.stringify({type: 'assistant', message: {id: 'm' + i, content: [{type: 'text', text: 'step ' + i}]}}) + '\\n'}); \
             t.push({stream: 'agent', seq: 2000, text: JSON.stringify({type: 'assistant', message: {id: 'big', content: [{type: 'text', text: 'x'.repeat(100000)}]}}) + '\\n'}); \
             return [root.childElementCount, root.querySelector('.cut').textContent, root.lastElementChild.textContent.length, raw.textContent.length];",
            vec![],
        )
        .await
        .unwrap();
    let bounded = bounded.as_array().unwrap();
    assert!(bounded[0].as_u64().unwrap() <= 1501, "{bounded:?}");
    assert!(
        bounded[1]
            .as_str()
            .unwrap()
            .contains("earlier entries are not shown"),
        "{bounded:?}"
    );
    assert!(bounded[2].as_u64().unwrap() < 21_000, "{bounded:?}");
    assert!(bounded[3].as_u64().unwrap() <= 400_100, "{bounded:?}");

    // Phone width: nothing wider than the screen; the panel fills it.
    b.set_window_size(390, 844).await.unwrap();
    for (view, drawn) in [
        ("agents", "#board .column"),
        ("metrics", "#charts figure svg"),
        ("audit", "#audit-table tbody tr"),
    ] {
        click_fresh(&b, &format!("#nav button[data-view=\"{view}\"]")).await;
        wait_for(&b, &format!("#{view}:not([hidden]) {drawn}")).await;
        let fits = b
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .unwrap();
        screenshot(&b, &format!("dash-09-phone-{view}")).await;
        assert_eq!(fits, json!(true), "{view} scrolls sideways at 390 px");
    }
    click_fresh(&b, "#nav button[data-view=\"fleet\"]").await;
    click_fresh(&b, &format!("#tasks tr[data-id=\"{worked}\"]")).await;
    wait_text(&b, "#transcript", "Second try, smaller change.").await;
    let fits = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&b, "dash-09-phone-panel").await;
    assert_eq!(fits, json!(true), "the page scrolls sideways at 390 px");
    b.close().await.unwrap();
    c.stop().await;
}

/// The status `GET /api/me` answers the page's fetch with `secret` as a bearer token (and no
/// cookie).
async fn bearer_status(b: &Client, secret: &str) -> u64 {
    let status = b
        .execute_async(
            "const [secret, done] = arguments; \
             fetch('/api/me', {headers: {authorization: 'Bearer ' + secret}, credentials: 'omit'}) \
               .then((r) => done(r.status), (e) => done(String(e)));",
            vec![json!(secret)],
        )
        .await
        .unwrap();
    status.as_u64().unwrap_or_else(|| panic!("{status}"))
}

/// The switch sends `PATCH /api/settings`; the controller's setting follows, audited.
async fn approval_switch(b: &Client, store: &Store) {
    b.find(Locator::Css("#approval-mode"))
        .await
        .unwrap()
        .select_by_value("full-auto")
        .await
        .unwrap();
    for _ in 0..100 {
        if store.settings().await.unwrap().approval_mode == "full-auto" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = text(b, "#global-error").await;
    assert_eq!(
        store.settings().await.unwrap().approval_mode,
        "full-auto",
        "page error: {err}"
    );
    wait_audited(store, "the approval mode's change", |a| {
        a.actor.contains("root")
            && a.outcome == "ok"
            && (a.action.contains("setting") || a.action.contains("approval"))
    })
    .await;
    screenshot(b, "dash-10-approval-mode").await;
}

#[tokio::test]
async fn a_viewer_and_an_operator_side_by_side() {
    if skip() {
        return;
    }
    let c = TestController::start(Options::default()).await;
    let store = c.store.clone();
    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let hash = controller::http::auth::hash_password("side by side password").unwrap();
        store.create_user(name, &hash, role).await.unwrap();
    }
    let repo = c.repo("acme/web").await;
    let task = api_task(&store, repo.id, "Needs a yes", "body").await;
    wait_task(&store, task, "triaged", |t| t.status == Status::Queued).await;
    store
        .hold(
            task,
            HoldKind::DispatchApproval,
            None,
            &Note::new("test", "gate"),
        )
        .await
        .unwrap();
    let base = format!("http://{}", c.http);
    let ((viewer, _d1, _p1), (operator, _d2, _p2)) = tokio::join!(browser(), browser());
    login(&viewer, &base, "vera", "side by side password").await;
    login(&operator, &base, "otto", "side by side password").await;
    for b in [&viewer, &operator] {
        wait_for(b, &format!("#tasks tr[data-id=\"{task}\"] .held")).await;
        click_fresh(b, &format!("#tasks tr[data-id=\"{task}\"]")).await;
        wait_text(b, "#detail-title", "Needs a yes").await;
    }
    // The viewer sees no control, and the API refuses the approval it sends anyway.
    assert!(
        viewer
            .find_all(Locator::Css("#detail-actions button"))
            .await
            .unwrap()
            .is_empty(),
        "a viewer sees no task control"
    );
    assert!(
        viewer
            .find_all(Locator::Css("#new-task-open:not([hidden]), #nav button[data-view=\"audit\"]:not([hidden]), #nav button[data-view=\"users\"]:not([hidden])"))
            .await
            .unwrap()
            .is_empty()
    );
    wait_for(&operator, "#detail-actions button[data-action=\"approve\"]").await;
    for b in [&viewer, &operator] {
        wait_for(b, "#approval-mode:disabled").await;
    }
    screenshot(&viewer, "dash-11-viewer").await;
    screenshot(&operator, "dash-11-operator").await;
    let refused = viewer
        .execute_async(
            &format!(
                "const done = arguments[arguments.length - 1]; \
                 fetch('/api/tasks/{task}/approve', {{method: 'POST', headers: {{'x-csrf-token': state.me.csrf_token}}}}) \
                   .then((r) => done(r.status), (e) => done(String(e)));"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(403));
    let audit = store.audit_log(20, None).await.unwrap();
    assert!(
        audit.iter().any(|a| a.actor.contains("vera")
            && a.action == "approve"
            && a.outcome.starts_with("refused")),
        "the refusal is audited: {audit:?}"
    );
    assert!(store.task(task).await.unwrap().hold_kind.0.is_some());

    // The operator approves; both pages change without a reload.
    for b in [&viewer, &operator] {
        b.execute("window.__noReload = 7; return null;", vec![])
            .await
            .unwrap();
    }
    click_fresh(&operator, "#detail-actions button[data-action=\"approve\"]").await;
    for b in [&viewer, &operator] {
        let mut gone = false;
        for _ in 0..100 {
            if b.find_all(Locator::Css(&format!(
                "#tasks tr[data-id=\"{task}\"] .held"
            )))
            .await
            .unwrap()
            .is_empty()
            {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "the hold still shows");
        wait_text(b, "#detail-timeline", "approved").await;
        let marker = b
            .execute("return window.__noReload;", vec![])
            .await
            .unwrap();
        assert_eq!(marker, json!(7), "the page was reloaded");
    }
    // The operator reads the audit log: the viewer's refusal is there.
    click_fresh(&operator, "#nav button[data-view=\"audit\"]").await;
    let row = wait_text(&operator, "#audit-table tr.refused", "vera").await;
    assert!(row.contains("approve") && row.contains("refused"), "{row}");
    screenshot(&operator, "dash-12-audit").await;
    screenshot(&viewer, "dash-12-viewer-live").await;
    viewer.close().await.unwrap();
    operator.close().await.unwrap();
    c.stop().await;
}

/// The plan gate in the browser: a task whose plan run is on a runner reads as planning; once
/// its plan waits, the task panel shows it (hostile text inert) and an operator approves it,
/// after which the task is queued for its implementation run with the plan approved.
#[tokio::test]
async fn a_plan_shows_while_it_is_made_and_is_approved_from_the_task_panel() {
    use controller::store::completion::{Completion, Outcome};
    use controller::store::plans::PlanReport;
    use controller::store::repos::RepoSettings;
    use controller::store::tasks::RetryPolicy;
    if skip() {
        return;
    }
    let AdminPage {
        c,
        repo,
        b,
        _driver,
        _profile,
    } = AdminPage::open("acme/gated").await;
    let store = c.store.clone();
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                plan_gate: Some(true),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let task = api_task(&store, repo.id, "Fix the total", "body").await;
    wait_task(&store, task, "triaged", |t| t.status == Status::Queued).await;
    let runner = store.register_runner("planner", &[], 4).await.unwrap().id;
    let lease = claim(&store, runner).await;
    assert_eq!(lease.task_id, task);
    let row = format!("#tasks tr[data-id=\"{task}\"]");
    wait_for(&b, &format!("{row} td.status span[data-planning=\"yes\"]")).await;
    wait_text(&b, &format!("{row} td.status"), "planning").await;
    screenshot(&b, "dash-plan-01-planning").await;

    let plan = serde_json::json!({
        "files": ["src/total.py"],
        "approach": format!("Round once. {HOSTILE}"),
        "risks": ["rounding"],
        "tests": ["test_total"],
    });
    let mut done = Completion::new(Outcome::Succeeded);
    done.plan = Some(PlanReport {
        plan_json: plan.to_string(),
        blast_radius: Some(1),
        blast_text: String::new(),
        discarded: Vec::new(),
    });
    store
        .complete(&lease, &done, &RetryPolicy::default())
        .await
        .unwrap();
    wait_status(&b, task, "plan_hold").await;
    assert!(
        b.find_all(Locator::Css(&format!(
            "{row} td.status span[data-planning]"
        )))
        .await
        .unwrap()
        .is_empty(),
        "waiting with its plan, it no longer reads as planning"
    );
    click_fresh(&b, &row).await;
    wait_text(&b, "#detail-plan-text", "Round once.").await;
    nothing_ran(&b).await;
    screenshot(&b, "dash-plan-02-waiting").await;
    click_fresh(&b, "#plan-approve").await;
    let t = wait_task(&store, task, "the plan approved", |t| {
        t.status == Status::Queued
    })
    .await;
    assert_eq!(
        store.plan(task).await.unwrap().map(|p| p.state),
        Some("approved".to_owned())
    );
    assert!(!t.planning());
    wait_audited(&store, "plan_approve", |a| {
        a.action == "plan_approve" && a.actor.contains("root")
    })
    .await;
    b.close().await.unwrap();
    c.stop().await;
}
