//! Wire ↔ domain conversions for the runner service, and store errors → gRPC statuses.

use tonic::Status;

use crate::store::claims::ClaimedRepo;
use crate::store::claims::LeaseRef;
use crate::store::completion::Outcome;
use crate::store::{Error, RunnerId, Task};

/// A wire lease key as a domain lease reference.
pub fn lease(key: Option<&proto::LeaseKey>, runner: RunnerId) -> Result<LeaseRef, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("the lease key is missing"))?;
    let token = uuid::Uuid::parse_str(&key.token).map_err(|_| {
        Status::invalid_argument(format!("lease token `{}` is not a UUID", key.token))
    })?;
    Ok(LeaseRef {
        task_id: key.task_id,
        attempt: key.attempt,
        token,
        runner_id: runner,
    })
}

/// A domain lease as a wire key.
pub fn lease_key(l: &LeaseRef) -> proto::LeaseKey {
    proto::LeaseKey {
        task_id: l.task_id,
        attempt: l.attempt,
        token: l.token.to_string(),
    }
}

/// A wire outcome as a domain one.
pub fn outcome(o: i32) -> Result<Outcome, Status> {
    use proto::Outcome as W;
    Ok(match W::try_from(o).unwrap_or(W::Unspecified) {
        W::Succeeded => Outcome::Succeeded,
        W::AgentFailed => Outcome::AgentFailed,
        W::VerifyFailed => Outcome::VerifyFailed,
        W::TimedOut => Outcome::TimedOut,
        W::Stalled => Outcome::Stalled,
        W::SetupFailed => Outcome::SetupFailed,
        W::BudgetExceeded => Outcome::BudgetExceeded,
        W::Canceled => Outcome::Canceled,
        W::Abandoned => Outcome::Abandoned,
        W::Unspecified => {
            return Err(Status::invalid_argument(format!(
                "outcome {o} is not a known outcome"
            )));
        }
    })
}

/// Makes a runner's text storable: PostgreSQL text and JSON hold no NUL character.
pub fn storable(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{fffd}");
    }
}

/// [`storable`] for every string (and key) of a JSON value.
pub fn storable_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => storable(s),
        Value::Array(a) => a.iter_mut().for_each(storable_json),
        Value::Object(o) => {
            if o.keys().any(|k| k.contains('\0')) {
                *o = std::mem::take(o)
                    .into_iter()
                    .map(|(mut k, v)| {
                        storable(&mut k);
                        (k, v)
                    })
                    .collect();
            }
            o.values_mut().for_each(storable_json);
        }
        _ => {}
    }
}

/// The retry context with its newest entries that fit in `max` bytes, oldest left out first, and
/// a first entry saying how many were left out. An entry too large on its own is cut.
pub fn bounded_context(context: &serde_json::Value, max: usize) -> serde_json::Value {
    use serde_json::{Value, json};
    let Some(entries) = context.as_array() else {
        return json!([]);
    };
    let mut kept: Vec<Value> = Vec::new();
    let mut used = 0;
    for e in entries.iter().rev() {
        let size = e.to_string().len();
        if used + size <= max {
            kept.push(e.clone());
            used += size;
        } else if kept.is_empty() {
            // The newest entry alone is too large: keep its end (errors and logs end in the cause).
            let text = e.to_string();
            let mut start = text.len() - max / 2;
            while !text.is_char_boundary(start) {
                start += 1;
            }
            kept.push(json!({"kind": "cut", "error": format!("[… {start} bytes cut …]{}", &text[start..])}));
            used += max / 2;
        } else {
            break;
        }
    }
    let omitted = entries.len() - kept.len().min(entries.len());
    kept.reverse();
    if omitted > 0 {
        kept.insert(
            0,
            json!({"kind": "omitted", "error": format!("{omitted} earlier entries left out (the context is capped at {max} bytes)")}),
        );
    }
    Value::Array(kept)
}

/// What a runner needs to know to run a task.
pub fn task_spec(t: &Task, repo: &ClaimedRepo, prices: &proto::prices::Prices) -> proto::TaskSpec {
    proto::TaskSpec {
        repo: repo.name.clone(),
        clone_url: repo.clone_url.clone(),
        default_branch: repo.default_branch.clone(),
        verify_command: repo.verify_command.clone().unwrap_or_default(),
        issue_number: t.issue_number.unwrap_or_default(),
        title: t.issue_title.clone(),
        body: t.issue_body.clone(),
        prompt_override: t.prompt_override.clone().unwrap_or_default(),
        model: t.model.clone(),
        agent: t.agent.clone(),
        retry_context_json: bounded_context(
            &t.retry_context.0,
            proto::limits::MAX_RETRY_CONTEXT_BYTES,
        )
        .to_string(),
        resume_branch: t.resume_branch,
        branch: t
            .branch
            .clone()
            .unwrap_or_else(|| crate::store::tasks::task_branch(t.id, &t.issue_title)),
        egress_policy: repo.egress_policy.clone(),
        budget_microusd: repo.grant_microusd,
        prices: prices.to_wire(),
        environment_image: repo.env_image.clone().unwrap_or_default(),
        environment_setup: repo.env_setup.clone(),
        setup_secrets: repo
            .secrets()
            .map(|(name, value)| proto::Secret {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        priority: t.priority,
        learnings: repo.learnings.clone(),
        stack: String::new(),
        agent_hooks: repo.agent_hooks,
        reproduce_first: repo.reproduce_first && !repo.plan_run,
        plan_run: repo.plan_run,
        approved_plan: if repo.plan_run {
            String::new()
        } else {
            repo.plan.clone().unwrap_or_default()
        },
        // Set by the lease handler from the controller's configuration.
        navigation_off: false,
    }
}

/// A store error as a gRPC status. Database failures are logged here, once, and reported
/// without internal detail.
pub fn status(e: Error) -> Status {
    match e {
        Error::LeaseLost { .. } => Status::aborted(e.to_string()),
        Error::TaskNotFound(_) | Error::RepoNotFound(_) | Error::RunnerNotFound(_) => {
            Status::not_found(e.to_string())
        }
        Error::RunnerDisabled(_) | Error::JoinToken(_) => Status::permission_denied(e.to_string()),
        Error::CertificateSuperseded(_) => Status::unauthenticated(e.to_string()),
        Error::Invalid(_) => Status::invalid_argument(e.to_string()),
        Error::Database(db) if refused_for_good(&db) => {
            tracing::error!(error = %db, "the database refused a runner's write for good");
            Status::invalid_argument(format!(
                "the controller cannot store this (the database refused it: {db}); it will not be taken on a retry"
            ))
        }
        Error::Database(db) => {
            tracing::error!(error = %db, "database error in the runner service");
            Status::unavailable("the controller cannot reach its database; retry shortly")
        }
        other => Status::failed_precondition(other.to_string()),
    }
}

/// Whether a database error is about the data itself (SQLSTATE class 22, data exception, or 23,
/// integrity constraint): sending the same write again can never succeed.
fn refused_for_good(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// A runner's reproduce-first record as the domain type; texts made storable.
pub fn reproduction(
    r: proto::Reproduction,
) -> Result<crate::store::reproduction::Reproduction, Status> {
    use crate::store::reproduction::{ReproRun, ReproStatus, Reproduction};
    let status = match proto::ReproductionStatus::try_from(r.status) {
        Ok(proto::ReproductionStatus::Reproduced) => ReproStatus::Reproduced,
        Ok(proto::ReproductionStatus::NotReproduced) => ReproStatus::NotReproduced,
        Ok(proto::ReproductionStatus::NoTest) => ReproStatus::NoTest,
        Ok(proto::ReproductionStatus::NotFixed) => ReproStatus::NotFixed,
        _ => {
            return Err(Status::invalid_argument(format!(
                "reproduction status {} is not one this controller knows",
                r.status
            )));
        }
    };
    let run = |x: proto::ReproductionRun| {
        let mut output_tail = x.output_tail;
        storable(&mut output_tail);
        ReproRun {
            exit_code: x.exit_code,
            timed_out: x.timed_out,
            output_tail,
            duration_ms: x.duration_ms,
        }
    };
    let (mut command, mut note) = (r.command, r.note);
    storable(&mut command);
    storable(&mut note);
    let mut files = r.files;
    files.iter_mut().for_each(storable);
    Ok(Reproduction {
        status,
        command,
        files,
        base: r.base.map(run),
        head: r.head.map(run),
        note,
    }
    .bounded())
}

/// A runner's plan-run report as the domain type; texts made storable (the store parses,
/// cleans and bounds the plan itself).
pub fn plan(p: proto::Plan) -> crate::store::plans::PlanReport {
    let (mut plan_json, mut blast_text) = (p.plan_json, p.blast_text);
    storable(&mut plan_json);
    storable(&mut blast_text);
    let mut discarded = p.discarded;
    discarded.truncate(crate::store::plans::MAX_FILES);
    discarded.iter_mut().for_each(storable);
    crate::store::plans::PlanReport {
        plan_json,
        blast_radius: (p.blast_radius >= 0).then_some(p.blast_radius),
        blast_text,
        discarded,
    }
}
