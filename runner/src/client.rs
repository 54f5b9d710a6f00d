//! The runner's side of the gRPC contract: an mTLS channel to the controller and one method per
//! call, converting between wire types and the runner's domain types. Every call carries the
//! protocol version header.

use std::time::Duration;

use anyhow::Context;
use tonic::codegen::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use tonic::{Request, Status};

use crate::task::{Assignment, ExecResult, Lease, Outcome, TaskSpec};

/// Adds the protocol version header to every call.
#[derive(Debug, Clone, Copy)]
pub struct Version;

impl Interceptor for Version {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        Ok(proto::with_version(request))
    }
}

type Inner = proto::runner_client::RunnerClient<InterceptedService<Channel, Version>>;

/// A connection to the controller. Cheap to clone; reconnects by itself.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Inner,
}

/// `https://host:port` → (host, port).
pub fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL like https://host:7443"))?;
    if uri.scheme_str() != Some("https") {
        anyhow::bail!("the controller URL must start with https:// (got `{url}`)");
    }
    let host = uri
        .host()
        .context("the controller URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

fn channel(url: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<Channel> {
    let (host, _) = host_port(url)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    if let Some((cert, key)) = identity {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    Ok(Channel::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Redeems a join token over a channel that trusts only `ca_pem`.
pub async fn join(
    url: &str,
    ca_pem: &str,
    token: &str,
    csr_pem: &str,
    name: &str,
    hostname: &str,
) -> anyhow::Result<proto::JoinResponse> {
    let mut c =
        proto::runner_client::RunnerClient::with_interceptor(channel(url, ca_pem, None)?, Version);
    let resp = c
        .join(proto::JoinRequest {
            token: token.to_owned(),
            csr_pem: csr_pem.to_owned(),
            name: name.to_owned(),
            hostname: hostname.to_owned(),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the controller refused to enroll this host: {}",
                s.message()
            )
        })?;
    Ok(resp.into_inner())
}

/// What the controller answered to the handshake.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Longest lease wait.
    pub lease_wait: Duration,
    /// Whether to drain.
    pub drain: bool,
    /// Effective labels.
    pub labels: Vec<String>,
}

/// What this runner process says about itself.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    /// Labels.
    pub labels: Vec<String>,
    /// Capacity.
    pub capacity: u32,
    /// Backends.
    pub backends: Vec<String>,
    /// Random per process.
    pub boot_id: String,
    /// Leases still being worked on.
    pub active: Vec<Lease>,
}

/// The state of one lease in a heartbeat reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Keep going.
    Active,
    /// Stop and report canceled.
    Cancel,
    /// Not yours: stop, report nothing.
    Lost,
}

/// A heartbeat reply, in domain terms.
#[derive(Debug, Clone)]
pub struct HeartbeatReply {
    /// Per-lease states.
    pub leases: Vec<(i64, i32, LeaseState)>,
    /// Heartbeat period from now on.
    pub heartbeat_interval: Duration,
    /// Whether to drain.
    pub drain: bool,
}

/// A message from the controller on the session stream.
#[derive(Debug, Clone)]
pub enum Down {
    /// Answer to a heartbeat.
    Reply(HeartbeatReply),
    /// Cancel this task attempt.
    Cancel {
        /// Task.
        task_id: i64,
        /// Attempt.
        attempt: i32,
    },
    /// Finish current work, take no more.
    Drain,
}

fn key(l: &Lease) -> proto::LeaseKey {
    proto::LeaseKey {
        task_id: l.task_id,
        attempt: l.attempt,
        token: l.token.clone(),
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

impl Client {
    /// A lazy mTLS connection to `controller`, trusting `ca_pem`, presenting the runner's
    /// certificate and key (see `Identity::connect`).
    pub fn with_pem(
        controller: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Self> {
        let ch = channel(controller, ca_pem, Some((cert_pem, key_pem)))?;
        Ok(Self {
            inner: proto::runner_client::RunnerClient::with_interceptor(ch, Version)
                .max_decoding_message_size(proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::limits::MAX_MESSAGE_BYTES),
        })
    }

    /// The handshake.
    pub async fn hello(&self, info: &HelloInfo) -> Result<Hello, Status> {
        let r = self
            .inner
            .clone()
            .hello(proto::HelloRequest {
                labels: info.labels.clone(),
                capacity: info.capacity,
                backends: info.backends.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                boot_id: info.boot_id.clone(),
                hostname: hostname(),
                active: info.active.iter().map(key).collect(),
            })
            .await?
            .into_inner();
        if r.protocol_version != proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the controller speaks protocol version {}, this runner {}; upgrade the older one",
                r.protocol_version,
                proto::PROTOCOL_VERSION
            )));
        }
        Ok(Hello {
            heartbeat_interval: ms(r.heartbeat_interval_ms),
            lease: ms(r.lease_ms),
            lease_wait: ms(r.lease_wait_ms),
            drain: r.drain,
            labels: r.labels,
        })
    }

    /// Opens a session: heartbeats go up through `up`, controller messages come back.
    pub async fn session(
        &self,
        up: tokio::sync::mpsc::Receiver<(u64, Vec<Lease>, u32)>,
    ) -> Result<impl futures::Stream<Item = Result<Down, Status>> + use<>, Status> {
        use futures::StreamExt;
        let outbound =
            tokio_stream::wrappers::ReceiverStream::new(up).map(|(seq, active, free)| {
                proto::SessionUp {
                    msg: Some(proto::session_up::Msg::Heartbeat(proto::Heartbeat {
                        seq,
                        active: active.iter().map(key).collect(),
                        free_slots: free,
                    })),
                }
            });
        let inbound = self.inner.clone().session(outbound).await?.into_inner();
        Ok(inbound.filter_map(|m| async move {
            match m {
                Err(e) => Some(Err(e)),
                Ok(proto::SessionDown { msg: None }) => None,
                Ok(proto::SessionDown { msg: Some(msg) }) => Some(Ok(match msg {
                    proto::session_down::Msg::HeartbeatReply(r) => Down::Reply(HeartbeatReply {
                        leases: r
                            .leases
                            .iter()
                            .map(|l| {
                                let state = match proto::LeaseState::try_from(l.state) {
                                    Ok(proto::LeaseState::Active) => LeaseState::Active,
                                    Ok(proto::LeaseState::Cancel) => LeaseState::Cancel,
                                    _ => LeaseState::Lost,
                                };
                                (l.task_id, l.attempt, state)
                            })
                            .collect(),
                        heartbeat_interval: ms(r.heartbeat_interval_ms),
                        drain: r.drain,
                    }),
                    proto::session_down::Msg::Cancel(c) => Down::Cancel {
                        task_id: c.task_id,
                        attempt: c.attempt,
                    },
                    proto::session_down::Msg::Drain(_) => Down::Drain,
                })),
            }
        }))
    }

    /// Waits up to `wait` for a task. `Ok((None, drain))` when none came.
    pub async fn lease(&self, wait: Duration) -> Result<(Option<Assignment>, bool), Status> {
        let r = self
            .inner
            .clone()
            .lease(proto::LeaseRequest {
                wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            })
            .await?
            .into_inner();
        let assignment = match r.assignment {
            None => None,
            Some(a) => {
                let lease = a
                    .lease
                    .ok_or_else(|| Status::internal("assignment without a lease"))?;
                let t = a.task.unwrap_or_default();
                Some(Assignment {
                    lease: Lease {
                        task_id: lease.task_id,
                        attempt: lease.attempt,
                        token: lease.token,
                    },
                    spec: TaskSpec {
                        repo: t.repo,
                        clone_url: t.clone_url,
                        default_branch: t.default_branch,
                        verify_command: (!t.verify_command.is_empty()).then_some(t.verify_command),
                        issue_number: t.issue_number,
                        title: t.title,
                        body: t.body,
                        prompt_override: (!t.prompt_override.is_empty())
                            .then_some(t.prompt_override),
                        model: t.model,
                        agent: t.agent,
                        retry_context: serde_json::from_str(&t.retry_context_json)
                            .unwrap_or(serde_json::Value::Null),
                        resume_branch: t.resume_branch,
                        branch: (!t.branch.is_empty()).then_some(t.branch),
                        egress_policy: t.egress_policy,
                        budget_microusd: t.budget_microusd,
                        prices: proto::prices::Prices::from_wire(&t.prices),
                        setup_secrets: crate::task::SetupSecrets(
                            t.setup_secrets
                                .iter()
                                .map(|s| {
                                    crate::redact::remember(&s.value);
                                    (s.name.clone(), s.value.clone())
                                })
                                .collect(),
                        ),
                        environment: (!t.environment_image.is_empty())
                            .then(|| (t.environment_image.clone(), t.environment_setup.clone())),
                        learnings: t.learnings.clone(),
                        stack: (!t.stack.is_empty()).then(|| t.stack.clone()),
                        navigation: None,
                        navigation_off: t.navigation_off,
                        agent_hooks: t.agent_hooks,
                        reproduce_first: t.reproduce_first,
                        plan_run: t.plan_run,
                        approved_plan: (!t.approved_plan.is_empty()).then_some(t.approved_plan),
                    },
                })
            }
        };
        Ok((assignment, r.drain))
    }

    /// Reports a stage change.
    pub async fn report_stage(&self, lease: &Lease, verifying: bool) -> Result<(), Status> {
        let stage = if verifying {
            proto::Stage::Verifying
        } else {
            proto::Stage::Running
        };
        self.inner
            .clone()
            .report_stage(proto::StageRequest {
                lease: Some(key(lease)),
                stage: stage as i32,
            })
            .await?;
        Ok(())
    }

    /// Sends log chunks; returns the acknowledged sequence numbers.
    pub async fn append_logs(
        &self,
        lease: &Lease,
        chunks: Vec<(i64, String, Vec<u8>)>,
    ) -> Result<Vec<i64>, Status> {
        let r = self
            .inner
            .clone()
            .append_logs(proto::AppendLogsRequest {
                lease: Some(key(lease)),
                chunks: chunks
                    .into_iter()
                    .map(|(seq, stream, data)| proto::LogChunk { seq, stream, data })
                    .collect(),
            })
            .await?;
        Ok(r.into_inner().acked)
    }

    /// Uploads a result bundle in 1 MiB chunks.
    pub async fn upload_bundle(&self, lease: &Lease, data: &[u8]) -> Result<(), Status> {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(data));
        let pieces: Vec<Vec<u8>> = if data.is_empty() {
            vec![Vec::new()]
        } else {
            data.chunks(1024 * 1024).map(<[u8]>::to_vec).collect()
        };
        let last = pieces.len() - 1;
        let msgs: Vec<proto::BundleChunk> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, d)| proto::BundleChunk {
                lease: (i == 0).then(|| key(lease)),
                data: d,
                sha256: if i == last {
                    sha.clone()
                } else {
                    String::new()
                },
            })
            .collect();
        self.upload_bundle_chunks(tokio_stream::iter(msgs)).await
    }

    /// Uploads a bundle as the chunks `chunks` yields (the first names the lease, the last
    /// carries the sha256 of the whole); [`Client::upload_bundle`] for one in memory.
    pub async fn upload_bundle_chunks(
        &self,
        chunks: impl futures::Stream<Item = proto::BundleChunk> + Send + 'static,
    ) -> Result<(), Status> {
        self.inner.clone().upload_bundle(chunks).await?;
        Ok(())
    }

    /// Reports the result. Returns whether the controller had it already.
    pub async fn complete(&self, lease: &Lease, r: &ExecResult) -> Result<bool, Status> {
        let outcome = match r.outcome {
            Outcome::Succeeded => proto::Outcome::Succeeded,
            Outcome::AgentFailed => proto::Outcome::AgentFailed,
            Outcome::VerifyFailed => proto::Outcome::VerifyFailed,
            Outcome::TimedOut => proto::Outcome::TimedOut,
            Outcome::Stalled => proto::Outcome::Stalled,
            Outcome::SetupFailed => proto::Outcome::SetupFailed,
            Outcome::BudgetExceeded => proto::Outcome::BudgetExceeded,
            Outcome::Canceled => proto::Outcome::Canceled,
            Outcome::Abandoned => proto::Outcome::Abandoned,
        };
        let resp = self
            .inner
            .clone()
            .complete(proto::CompleteRequest {
                lease: Some(key(lease)),
                outcome: outcome as i32,
                error: r.error.clone().unwrap_or_default(),
                summary: r.summary.clone(),
                context_json: r
                    .context
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                branch: r.branch.clone().unwrap_or_default(),
                head_sha: r.head_sha.clone().unwrap_or_default(),
                usage: Some(proto::Usage {
                    input_tokens: r.usage.input_tokens,
                    output_tokens: r.usage.output_tokens,
                    cache_read_tokens: r.usage.cache_read_tokens,
                    cache_write_tokens: r.usage.cache_write_tokens,
                    cost_microusd: r.usage.cost_microusd,
                }),
                verify_output: r.verify_output.clone(),
                data_json: r.data.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                reproduction: r.reproduction.as_ref().map(reproduction),
                plan: r.plan.as_ref().map(|p| proto::Plan {
                    plan_json: p.plan_json.clone(),
                    blast_radius: p.blast_radius.unwrap_or(-1),
                    blast_text: p.blast_text.clone(),
                    discarded: p.discarded.clone(),
                }),
            })
            .await?;
        Ok(resp.into_inner().duplicate)
    }

    /// Exchanges a CSR for a new certificate: (certificate, CA).
    pub async fn renew_certificate(&self, csr_pem: &str) -> Result<(String, String), Status> {
        let r = self
            .inner
            .clone()
            .renew_certificate(proto::RenewCertificateRequest {
                csr_pem: csr_pem.to_owned(),
            })
            .await?
            .into_inner();
        Ok((r.certificate_pem, r.ca_pem))
    }
}

/// This host's name, as the kernel knows it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The reproduce-first record on the wire.
fn reproduction(r: &crate::reproduce::Reproduction) -> proto::Reproduction {
    use crate::reproduce::Status;
    let run = |x: &crate::reproduce::Run| proto::ReproductionRun {
        exit_code: x.exit_code,
        timed_out: x.timed_out,
        output_tail: x.output_tail.clone(),
        duration_ms: x.duration.as_millis() as u64,
    };
    proto::Reproduction {
        status: match r.status {
            Status::Reproduced => proto::ReproductionStatus::Reproduced,
            Status::NotReproduced => proto::ReproductionStatus::NotReproduced,
            Status::NoTest => proto::ReproductionStatus::NoTest,
            Status::NotFixed => proto::ReproductionStatus::NotFixed,
        } as i32,
        command: r.command.clone(),
        files: r.files.clone(),
        base: r.base.as_ref().map(run),
        head: r.head.as_ref().map(run),
        note: r.note.clone(),
    }
}
