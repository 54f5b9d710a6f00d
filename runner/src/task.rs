//! The runner's domain types for a leased task and its result, converted from and to the wire
//! types in [`crate::client`] only.

use serde_json::Value;

/// The lease a runner works under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Task id.
    pub task_id: i64,
    /// Attempt number.
    pub attempt: i32,
    /// Lease token.
    pub token: String,
}

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// `owner/name`.
    pub repo: String,
    /// Clone URL.
    pub clone_url: String,
    /// Base branch.
    pub default_branch: String,
    /// Verify command, if any.
    pub verify_command: Option<String>,
    /// Issue number (0 for API tasks).
    pub issue_number: i64,
    /// Issue title.
    pub title: String,
    /// Untrusted issue text.
    pub body: String,
    /// Prompt edited by a user.
    pub prompt_override: Option<String>,
    /// Model.
    pub model: String,
    /// Agent backend.
    pub agent: String,
    /// Context items for this run.
    pub retry_context: Value,
    /// Continue the existing branch instead of starting from base.
    pub resume_branch: bool,
    /// Branch name, if one exists.
    pub branch: Option<String>,
    /// `none`, `gateway-only` or `open`.
    pub egress_policy: String,
    /// What this attempt may spend on model calls, micro-dollars (0: nothing).
    pub budget_microusd: i64,
    /// The controller's price table, for metering.
    pub prices: proto::prices::Prices,
    /// The environment the repository's settings set: base image and setup (wins over the
    /// repository's files).
    pub environment: Option<(String, Vec<String>)>,
    /// The repository's setup-only secrets (values never printed).
    pub setup_secrets: SetupSecrets,
    /// Learnings of earlier tasks in the repository (newest first).
    pub learnings: Vec<String>,
    /// The stack, as configured or detected in the checkout.
    pub stack: Option<String>,
    /// Where to start: the code graph's navigation map for the issue (rendered, fenced).
    pub navigation: Option<String>,
    /// The controller turned the navigation map off (`BACKPORCHER_NAVIGATION_ENABLED=false`).
    pub navigation_off: bool,
    /// Whether the agent CLI may run the hooks and MCP servers of the default branch.
    pub agent_hooks: bool,
    /// Reproduce-first: the agent writes a test that exposes the issue, run on base and head.
    pub reproduce_first: bool,
    /// Plan gate: a read-only plan run (the workspace mounted read-only, write tools off; the
    /// result is a plan, never a bundle).
    pub plan_run: bool,
    /// Plan gate: the approved plan this implementation run follows.
    pub approved_plan: Option<String>,
}

/// A leased task.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The lease.
    pub lease: Lease,
    /// The work.
    pub spec: TaskSpec,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Produced a result that passed verification.
    Succeeded,
    /// The agent failed.
    AgentFailed,
    /// Verification kept failing.
    VerifyFailed,
    /// Ran past its time limit.
    TimedOut,
    /// No agent event (output or model traffic) for the stall limit.
    Stalled,
    /// The repository's environment could not be set up (the task fails: no agent runs).
    SetupFailed,
    /// Reached its budget.
    BudgetExceeded,
    /// Stopped because cancellation was requested.
    Canceled,
    /// Given up by the runner (shutdown).
    Abandoned,
}

/// Tokens and money spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Cache writes.
    pub cache_write_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_microusd: i64,
}

/// What the executor reports.
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Error for failures.
    pub error: Option<String>,
    /// Short summary for people.
    pub summary: String,
    /// Context the next run needs.
    pub context: Option<Value>,
    /// Branch of the result.
    pub branch: Option<String>,
    /// Head commit of the result.
    pub head_sha: Option<String>,
    /// Git bundle of the result.
    pub bundle: Option<Vec<u8>>,
    /// Usage.
    pub usage: Usage,
    /// Output of the verify command.
    pub verify_output: String,
    /// Anything else to keep (diff stats, blast radius).
    pub data: Option<Value>,
    /// What reproduce-first showed, when the lease asked for it.
    pub reproduction: Option<crate::reproduce::Reproduction>,
    /// What a plan run produced, when the lease was one.
    pub plan: Option<PlanResult>,
}

/// What a plan run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanResult {
    /// The agent's plan, JSON (`files`, `approach`, `risks`, `tests`).
    pub plan_json: String,
    /// Files named plus files the code graph says they impact (`None`: the graph could not tell).
    pub blast_radius: Option<i32>,
    /// The blast radius rendered.
    pub blast_text: String,
    /// Paths the run changed in its workspace despite the read-only mount (discarded).
    pub discarded: Vec<String>,
}

impl ExecResult {
    /// A result with only an outcome.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            error: None,
            summary: String::new(),
            context: None,
            branch: None,
            head_sha: None,
            bundle: None,
            usage: Usage::default(),
            verify_output: String::new(),
            data: None,
            reproduction: None,
            plan: None,
        }
    }

    /// Scrubs every text the result carries of secrets (see [`crate::redact`]) and of NUL
    /// characters (which no database text holds) before it leaves the runner.
    pub fn scrub(&mut self) {
        let scrub_str = |s: &str| crate::redact::scrub_str(s).replace('\0', "");
        self.error = self.error.as_deref().map(scrub_str);
        self.summary = scrub_str(&self.summary);
        self.verify_output = scrub_str(&self.verify_output);
        if let Some(p) = self.plan.as_mut() {
            p.plan_json = scrub_str(&p.plan_json);
            p.blast_text = scrub_str(&p.blast_text);
            p.discarded.iter_mut().for_each(|d| *d = scrub_str(d));
        }
        if let Some(r) = self.reproduction.as_mut() {
            r.command = scrub_str(&r.command);
            r.note = scrub_str(&r.note);
            for f in r.files.iter_mut() {
                *f = scrub_str(f);
            }
            for run in [r.base.as_mut(), r.head.as_mut()].into_iter().flatten() {
                run.output_tail = scrub_str(&run.output_tail);
            }
        }
        for v in [self.context.as_mut(), self.data.as_mut()]
            .into_iter()
            .flatten()
        {
            scrub_json(v);
        }
    }
}

fn scrub_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = crate::redact::scrub_str(s).replace('\0', ""),
        Value::Array(a) => a.iter_mut().for_each(scrub_json),
        Value::Object(o) => o.values_mut().for_each(scrub_json),
        _ => {}
    }
}

/// Secrets setup may read when the repository grants them; `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SetupSecrets(pub Vec<(String, String)>);

impl std::fmt::Debug for SetupSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}
