//! Reproduce-first in the store: which leases ask for it (the repository's setting and triage's
//! bug verdict), how a runner's record is kept, and the repository's policy when the issue was
//! not reproduced.

use controller::store::HoldKind;
use controller::store::claims::LeaseRef;
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::{Repo, RepoSettings};
use controller::store::reproduction::{ReproRun, ReproStatus, Reproduction};
use controller::store::tasks::{RetryPolicy, Triage};
use controller::store::{Error, Status, Store};

use crate::{claim_req, queued_with, repo, runner, store};

async fn set(store: &Store, repo: &Repo, first: &str, policy: &str) {
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                reproduce_first: Some(first.into()),
                reproduce_policy: Some(policy.into()),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
}

/// Queues a task (`bug` as triage said) and claims it: whether its lease asks for reproduce-first.
async fn lease_asks(store: &Store, repo: &Repo, bug: Option<bool>) -> (bool, LeaseRef) {
    let r = runner(store, &format!("r-{}", rand_suffix())).await;
    queued_with(
        store,
        repo,
        "t",
        Triage {
            bug,
            ..Triage::default()
        },
    )
    .await;
    let (t, claimed) = store
        .claim_with_repo(&claim_req(r))
        .await
        .unwrap()
        .expect("a task to claim");
    (claimed.reproduce_first, LeaseRef::of(&t).unwrap())
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn record(status: ReproStatus, base_exit: i32) -> Reproduction {
    let run = |exit_code| ReproRun {
        exit_code,
        timed_out: false,
        output_tail: "out".into(),
        duration_ms: 12,
    };
    Reproduction {
        status,
        command: "bash `t`.sh\nrm -rf /".into(),
        files: vec!["t.sh".into()],
        base: Some(run(base_exit)),
        head: Some(run(0)),
        note: "n".into(),
    }
}

async fn complete(store: &Store, lease: &LeaseRef, r: Reproduction) -> controller::store::Task {
    complete_with(store, lease, Some(r)).await
}

/// A successful completion carrying `r` as its reproduce-first record (or none).
async fn complete_with(
    store: &Store,
    lease: &LeaseRef,
    r: Option<Reproduction>,
) -> controller::store::Task {
    store
        .complete(
            lease,
            &Completion {
                reproduction: r,
                ..Completion::new(Outcome::Succeeded)
            },
            &RetryPolicy::default(),
        )
        .await
        .unwrap()
        .task
}

#[tokio::test]
async fn the_lease_asks_for_reproduce_first_by_the_setting_and_the_bug_verdict() {
    let store = store().await;
    let repo = repo(&store, "acme/repro-lease").await;
    assert_eq!(repo.reproduce_first, "bugs", "on for bugs by default");
    assert_eq!(repo.reproduce_policy, "hold", "hold by default");
    assert!(lease_asks(&store, &repo, Some(true)).await.0, "a bug");
    assert!(!lease_asks(&store, &repo, Some(false)).await.0, "not a bug");
    assert!(
        !lease_asks(&store, &repo, None).await.0,
        "unknown is not a bug"
    );
    set(&store, &repo, "on", "hold").await;
    assert!(lease_asks(&store, &repo, None).await.0, "`on`: every task");
    set(&store, &repo, "off", "hold").await;
    assert!(
        !lease_asks(&store, &repo, Some(true)).await.0,
        "`off`: none"
    );
    for (first, policy) in [("sometimes", "hold"), ("on", "ask")] {
        let e = store
            .update_repo(
                repo.id,
                &RepoSettings {
                    reproduce_first: Some(first.into()),
                    reproduce_policy: Some(policy.into()),
                    ..RepoSettings::default()
                },
            )
            .await
            .expect_err("an unknown value is refused");
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }
}

#[tokio::test]
async fn not_reproduced_is_held_under_hold_and_only_marked_under_proceed() {
    let store = store().await;
    let repo = repo(&store, "acme/repro-policy").await;
    set(&store, &repo, "on", "hold").await;

    // Reproduced: proceeds, recorded.
    let (_, lease) = lease_asks(&store, &repo, None).await;
    let t = complete(&store, &lease, record(ReproStatus::Reproduced, 1)).await;
    assert_eq!(t.status, Status::Pushing);
    assert_eq!(t.hold_kind.0, None);
    let kept = store.task_reproduction(t.id).await.unwrap().unwrap();
    assert_eq!(kept.status, ReproStatus::Reproduced);
    assert_eq!(kept.base.as_ref().unwrap().exit_code, 1);
    assert!(
        kept.summary()
            .starts_with("reproduced: `bash 't'.sh rm -rf /` fails on the base (exit 1)"),
        "the command on one line without backticks: {}",
        kept.summary()
    );

    // Passes on the base, `hold`: held for a person, the reason on the timeline.
    let (_, lease) = lease_asks(&store, &repo, None).await;
    let t = complete(&store, &lease, record(ReproStatus::NotReproduced, 0)).await;
    assert_eq!(t.status, Status::Pushing);
    assert_eq!(t.hold_kind.0, Some(HoldKind::User));
    let ev = store.timeline(t.id).await.unwrap().pop().unwrap();
    assert_eq!(ev.reason, "completed");
    let data = ev.data.unwrap().0;
    assert_eq!(data["reproduction"], "not_reproduced", "{data}");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .contains(&format!("backporcher release {}", t.id)),
        "{data}"
    );

    // A runner that leaves the record out of a completion its lease owed one: held the same,
    // the timeline saying no record came; a lease that asked for none owes none.
    let (_, lease) = lease_asks(&store, &repo, None).await;
    let t = complete_with(&store, &lease, None).await;
    assert_eq!(t.status, Status::Pushing);
    assert_eq!(t.hold_kind.0, Some(HoldKind::User));
    let data = store
        .timeline(t.id)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .data
        .unwrap()
        .0;
    assert_eq!(data["reproduction"], "no_test", "{data}");
    assert!(
        data["summary"]
            .as_str()
            .unwrap()
            .contains("sent no reproduce-first record"),
        "{data}"
    );
    set(&store, &repo, "off", "hold").await;
    let (asked, lease) = lease_asks(&store, &repo, Some(true)).await;
    assert!(!asked);
    let t = complete_with(&store, &lease, None).await;
    assert_eq!(t.hold_kind.0, None, "nothing was owed");

    // No test, `proceed`: marked, not held.
    set(&store, &repo, "on", "proceed").await;
    let (_, lease) = lease_asks(&store, &repo, None).await;
    let t = complete(
        &store,
        &lease,
        Reproduction {
            base: None,
            head: None,
            ..record(ReproStatus::NoTest, 0)
        },
    )
    .await;
    assert_eq!(t.status, Status::Pushing);
    assert_eq!(t.hold_kind.0, None);
    let ev = store.timeline(t.id).await.unwrap().pop().unwrap();
    let data = ev.data.unwrap().0;
    assert_eq!(data["reproduction"], "no_test", "{data}");
    assert!(data["message"].is_null(), "{data}");
    assert!(
        store
            .task_reproduction(t.id)
            .await
            .unwrap()
            .unwrap()
            .summary()
            .starts_with("not reproduced:")
    );
}

#[tokio::test]
async fn a_runners_record_is_kept_bounded() {
    let store = store().await;
    let repo = repo(&store, "acme/repro-bounds").await;
    set(&store, &repo, "on", "proceed").await;
    let (_, lease) = lease_asks(&store, &repo, None).await;
    let mut r = record(ReproStatus::Reproduced, 1);
    r.base.as_mut().unwrap().output_tail = "x".repeat(1_000_000);
    r.files = (0..500).map(|i| format!("f{i}")).collect();
    let t = complete(&store, &lease, r).await;
    let kept = store.task_reproduction(t.id).await.unwrap().unwrap();
    assert!(kept.base.unwrap().output_tail.len() <= 8_000);
    assert!(kept.files.len() <= 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_not_reproduced_task_opens_a_marked_pr_and_merges_only_once_released() {
    use controller::forge::Forge;
    let env = crate::forge::env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                reproduce_first: Some("on".into()),
                reproduce_policy: Some("hold".into()),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let n = env
        .sim
        .create_issue(crate::forge::REPO, "Add two", "", "alice", &[]) as i64;
    let mut t = controller::store::tasks::NewTask::for_issue(env.repo.id, n, "Add two", "two");
    t.created_by = "test".into();
    let task = env.store.create_task(&t).await.unwrap();
    env.store
        .triage(task.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap();
    let r = runner(&env.store, "r-held").await;
    let (claimed, repo) = env
        .store
        .claim_with_repo(&claim_req(r))
        .await
        .unwrap()
        .unwrap();
    assert!(repo.reproduce_first);
    let lease = LeaseRef::of(&claimed).unwrap();
    let branch = claimed.branch.clone().unwrap();
    let (bundle, head) = crate::forge::make_bundle_in(
        &env,
        crate::forge::REPO,
        &branch,
        &[("src/two.rs", "pub fn two() {}\n")],
    );
    env.store
        .store_bundle(&lease, &bundle, "sha")
        .await
        .unwrap();
    let c = Completion {
        branch: Some(branch),
        head_sha: Some(head),
        reproduction: Some(record(ReproStatus::NotReproduced, 0)),
        ..Completion::new(Outcome::Succeeded)
    };
    env.store
        .complete(&lease, &c, &RetryPolicy::default())
        .await
        .unwrap();
    let p = crate::forge::pipeline(&env, vec![]);
    let t = crate::forge::drive(&env, &p, task.id, Status::CiWait).await;
    assert_eq!(t.hold_kind.0, Some(HoldKind::User));
    let pr = env
        .forge
        .pull(crate::forge::REPO, t.pr_number.unwrap())
        .await
        .unwrap();
    assert!(
        pr.body.contains("**Reproduce-first:** not reproduced:"),
        "the PR says so: {}",
        pr.body
    );
    env.sim.set_ci(
        crate::forge::REPO,
        t.head_sha.as_deref().unwrap(),
        "success",
    );
    p.run_due().await.unwrap();
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::CiWait, "held: green CI does not merge it");
    // A person looked and released it: it merges.
    env.store
        .release(task.id, &crate::note("release"))
        .await
        .unwrap();
    crate::forge::drive(&env, &p, task.id, Status::Merged).await;
}
