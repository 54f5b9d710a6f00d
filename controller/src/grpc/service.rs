//! The `Runner` service methods. Each checks the protocol version and (except `Join`) the client
//! certificate, then calls the store.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::GrpcConfig;
use super::convert::{self, status};
use super::registry::RunnerCache;
use super::sessions::Sessions;
use crate::fanout::Fanout;
use crate::pki::{Pki, cert_identity};
use crate::store::claims::{ClaimRequest, LeaseRef};
use crate::store::completion::Completion;
use crate::store::runners::{HelloInfo, Runner};
use crate::store::{Error, RunnerId, Status as TaskStatus, Store};

/// The service state. Cheap to clone.
#[derive(Clone)]
pub struct RunnerService {
    store: Store,
    pki: Arc<Pki>,
    config: Arc<GrpcConfig>,
    fanout: Fanout,
    sessions: Arc<Sessions>,
    registry: Arc<RunnerCache>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Bundle uploads under way, by (task, attempt): one at a time for each live lease, so a
    /// runner holds at most one bundle's bytes in this process per lease it has.
    uploads: Arc<std::sync::Mutex<std::collections::HashSet<(i64, i32)>>>,
    /// The lease call each runner has waiting for work: one at a time, a new one ends the one
    /// before ([`LeaseWaits`]).
    lease_waits: Arc<LeaseWaits>,
}

/// The waiting lease call of each runner. A runner asks for work with one call at a time, so a
/// second call from the same runner (its first cut off on the way, or a hostile runner opening
/// many) ends the one before with nothing: a runner holds at most one waiting call, and a queue
/// event makes at most one claim for it instead of one per call it opened.
#[derive(Default)]
struct LeaseWaits {
    calls: std::sync::Mutex<std::collections::HashMap<RunnerId, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A lease call's place in [`LeaseWaits`]; `ended` fires when a later call of its runner came.
struct LeaseWait<'a> {
    waits: &'a LeaseWaits,
    runner: RunnerId,
    id: u64,
    ended: CancellationToken,
}

impl LeaseWaits {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<RunnerId, (u64, CancellationToken)>>
    {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a call of `runner`, ending the one it had waiting.
    fn enter(&self, runner: RunnerId) -> LeaseWait<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ended = CancellationToken::new();
        if let Some((_, before)) = self.lock().insert(runner, (id, ended.clone())) {
            before.cancel();
        }
        LeaseWait {
            waits: self,
            runner,
            id,
            ended,
        }
    }
}

impl Drop for LeaseWait<'_> {
    fn drop(&mut self) {
        let mut calls = self.waits.lock();
        if calls
            .get(&self.runner)
            .is_some_and(|(id, _)| *id == self.id)
        {
            calls.remove(&self.runner);
        }
    }
}

/// An upload's place in [`RunnerService::uploads`], given back when the upload ends.
struct Uploading {
    uploads: Arc<std::sync::Mutex<std::collections::HashSet<(i64, i32)>>>,
    key: (i64, i32),
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl RunnerService {
    /// Wires the service.
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        config: GrpcConfig,
        fanout: Fanout,
        sessions: Arc<Sessions>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            pki,
            config: Arc::new(config),
            registry: Arc::new(RunnerCache::new(fanout.registry().clone())),
            fanout,
            sessions,
            tracker,
            shutdown,
            uploads: Arc::default(),
            lease_waits: Arc::default(),
        }
    }

    /// The runner behind the request's client certificate.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Runner, Status> {
        proto::check_version(req.metadata())?;
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "a client certificate is required; enroll this host with `backporcher-runner join`",
            )
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let (id, serial) = cert_identity(leaf).ok_or_else(|| {
            Status::unauthenticated("the client certificate does not name a runner")
        })?;
        self.registry
            .authenticate(&self.store, id, &serial)
            .await
            .map_err(status)
    }

    fn ms(d: Duration) -> u32 {
        u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
    }

    async fn heartbeat(
        &self,
        runner: &Runner,
        hb: proto::Heartbeat,
    ) -> Result<proto::HeartbeatReply, Status> {
        let leases: Vec<LeaseRef> = hb
            .active
            .iter()
            .map(|k| convert::lease(Some(k), runner.id))
            .collect::<Result<_, _>>()?;
        let renewed = self
            .store
            .renew_many(runner.id, &leases, self.config.lease)
            .await
            .map_err(status)?;
        let current = self
            .registry
            .runner(&self.store, runner.id)
            .await
            .map_err(status)?;
        self.store.touch_runner(runner.id).await.map_err(status)?;
        let leases = renewed
            .into_iter()
            .map(|(l, r)| {
                let (state, expires) = match r {
                    Some(r) if r.cancel_requested => {
                        (proto::LeaseState::Cancel, r.expires_at.timestamp_millis())
                    }
                    Some(r) => (proto::LeaseState::Active, r.expires_at.timestamp_millis()),
                    None => (proto::LeaseState::Lost, 0),
                };
                proto::LeaseStatus {
                    task_id: l.task_id,
                    attempt: l.attempt,
                    state: state as i32,
                    expires_at_ms: expires,
                }
            })
            .collect();
        Ok(proto::HeartbeatReply {
            seq: hb.seq,
            leases,
            heartbeat_interval_ms: Self::ms(self.config.heartbeat_interval),
            lease_ms: Self::ms(self.config.lease),
            drain: current.state == "draining",
        })
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<proto::SessionDown, Status>> + Send>>;

#[tonic::async_trait]
impl proto::runner_server::Runner for RunnerService {
    async fn join(
        &self,
        req: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        proto::check_version(req.metadata())?;
        let r = req.into_inner();
        // Refuse an unusable CSR before spending the token.
        rcgen::CertificateSigningRequestParams::from_pem(&r.csr_pem).map_err(|e| {
            Status::invalid_argument(format!("the certificate signing request is not valid: {e}"))
        })?;
        let runner = self
            .store
            .redeem_join_token(&r.token, &r.name, &r.hostname)
            .await
            .map_err(status)?;
        let cert = self
            .pki
            .sign_runner(&r.csr_pem, runner.id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.store
            .set_runner_cert(runner.id, &cert.serial, cert.not_after)
            .await
            .map_err(status)?;
        tracing::info!(runner = runner.id, name = %runner.name, labels = ?runner.labels, "runner enrolled");
        Ok(Response::new(proto::JoinResponse {
            runner_id: runner.id,
            certificate_pem: cert.pem,
            ca_pem: self.pki.ca_pem().to_owned(),
        }))
    }

    async fn hello(
        &self,
        req: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let r = req.into_inner();
        let info = HelloInfo {
            boot_id: &r.boot_id,
            labels: &r.labels,
            capacity: i32::try_from(r.capacity).unwrap_or(i32::MAX),
            backends: &r.backends,
            version: &r.version,
            hostname: &r.hostname,
        };
        let (runner, released) = self
            .store
            .runner_hello(runner.id, &info)
            .await
            .map_err(status)?;
        for t in &released {
            tracing::info!(
                runner = runner.id,
                task = t.task_id,
                "runner restarted; its earlier lease was taken back"
            );
        }
        tracing::info!(runner = runner.id, capacity = runner.capacity, boot_id = %r.boot_id, "runner session started");
        Ok(Response::new(proto::HelloResponse {
            runner_id: runner.id,
            heartbeat_interval_ms: Self::ms(self.config.heartbeat_interval),
            lease_ms: Self::ms(self.config.lease),
            lease_wait_ms: Self::ms(self.config.lease_wait),
            labels: runner.labels.clone(),
            drain: runner.state == "draining",
            protocol_version: proto::PROTOCOL_VERSION,
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<proto::SessionUp>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let runner = self.authenticate(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let handle = self.sessions.open(runner.id, tx.clone());
        let this = self.clone();
        self.tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = this.shutdown.cancelled() => break,
                    m = inbound.next() => m,
                };
                let Some(Ok(msg)) = msg else { break };
                let Some(proto::session_up::Msg::Heartbeat(hb)) = msg.msg else {
                    continue;
                };
                let reply = match this.heartbeat(&runner, hb).await {
                    Ok(r) => Ok(proto::SessionDown {
                        msg: Some(proto::session_down::Msg::HeartbeatReply(r)),
                    }),
                    Err(e) => Err(e),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
            this.sessions.close(runner.id, handle);
            tracing::debug!(runner = runner.id, "runner session ended");
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as SessionStream
        ))
    }

    async fn lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let wait =
            Duration::from_millis(u64::from(req.get_ref().wait_ms)).min(self.config.lease_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let call = self.lease_waits.enter(runner.id);
        let mut current = runner;
        loop {
            if current.state != "active" {
                return Ok(Response::new(proto::LeaseResponse {
                    assignment: None,
                    drain: true,
                }));
            }
            // Look, then wait: the notification future is armed before looking.
            let notified = self.fanout.queue().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claim = ClaimRequest {
                runner_id: current.id,
                labels: &current.labels,
                lease: self.config.lease,
                capacity: Some(current.capacity),
            };
            if let Some((task, repo)) = self.store.claim_with_repo(&claim).await.map_err(status)? {
                let lease = LeaseRef::of(&task)
                    .ok_or_else(|| Status::internal("claimed task has no lease token"))?;
                tracing::info!(
                    task = task.id,
                    attempt = task.attempt,
                    runner = current.id,
                    "task leased"
                );
                return Ok(Response::new(proto::LeaseResponse {
                    assignment: Some(proto::Assignment {
                        lease: Some(convert::lease_key(&lease)),
                        lease_expires_at_ms: task
                            .lease_expires_at
                            .map(|t| t.timestamp_millis())
                            .unwrap_or_default(),
                        task: Some({
                            let mut spec = convert::task_spec(&task, &repo, &self.config.prices);
                            spec.navigation_off = !self.config.navigation;
                            spec
                        }),
                    }),
                    drain: false,
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(proto::LeaseResponse::default()));
            }
            // The sweep backstop covers notifications lost while the listener reconnects.
            let sweep = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Status::unavailable("the controller is shutting down; retry")),
                // A later lease call of this runner took this one's place.
                _ = call.ended.cancelled() => return Ok(Response::new(proto::LeaseResponse::default())),
                _ = notified => {}
                _ = tokio::time::sleep(sweep) => {}
            }
            // The runner may have been drained or disabled meanwhile. (Its certificate was checked
            // when the call began; a renewal during the wait does not end the call.)
            current = self
                .registry
                .runner(&self.store, current.id)
                .await
                .map_err(status)?;
            if current.state == "disabled" {
                return Err(status(crate::store::Error::RunnerDisabled(current.id)));
            }
        }
    }

    async fn report_stage(
        &self,
        req: Request<proto::StageRequest>,
    ) -> Result<Response<proto::StageResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let r = req.into_inner();
        let lease = convert::lease(r.lease.as_ref(), runner.id)?;
        let (res, target) = match proto::Stage::try_from(r.stage)
            .unwrap_or(proto::Stage::Unspecified)
        {
            proto::Stage::Running => (self.store.start_agent(&lease).await, TaskStatus::Running),
            proto::Stage::Verifying => {
                (self.store.start_verify(&lease).await, TaskStatus::Verifying)
            }
            proto::Stage::Unspecified => {
                return Err(Status::invalid_argument(format!(
                    "stage {} is not known",
                    r.stage
                )));
            }
        };
        match res {
            Ok(_) => Ok(Response::new(proto::StageResponse {})),
            // A resent report of the stage the task is already in is fine.
            Err(Error::IllegalTransition { current, .. }) if current == target => {
                Ok(Response::new(proto::StageResponse {}))
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn append_logs(
        &self,
        req: Request<proto::AppendLogsRequest>,
    ) -> Result<Response<proto::AppendLogsResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let r = req.into_inner();
        let lease = convert::lease(r.lease.as_ref(), runner.id)?;
        let chunks: Vec<(i64, String, Vec<u8>)> = r
            .chunks
            .into_iter()
            .map(|c| (c.seq, c.stream, c.data))
            .collect();
        let acked = self
            .store
            .append_logs(&lease, &chunks)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::AppendLogsResponse { acked }))
    }

    async fn upload_bundle(
        &self,
        req: Request<Streaming<proto::BundleChunk>>,
    ) -> Result<Response<proto::UploadBundleResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let mut stream = req.into_inner();
        let mut lease = None;
        let mut uploading = None;
        let mut data = Vec::new();
        let mut claimed_sha = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if lease.is_none() {
                // The lease is checked before any bytes are kept: a runner without one (or a
                // plan run) holds no memory here, and one lease uploads one bundle at a time.
                let l = convert::lease(chunk.lease.as_ref(), runner.id)?;
                self.store.check_bundle_lease(&l).await.map_err(status)?;
                let key = (l.task_id, l.attempt);
                if !self
                    .uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key)
                {
                    return Err(Status::already_exists(format!(
                        "a bundle of task {} attempt {} is being uploaded already; wait for it to end",
                        l.task_id, l.attempt
                    )));
                }
                uploading = Some(Uploading {
                    uploads: self.uploads.clone(),
                    key,
                });
                lease = Some(l);
            }
            if data.len() + chunk.data.len() > self.config.max_bundle_bytes {
                return Err(Status::invalid_argument(format!(
                    "the bundle exceeds {} bytes; the change is too large to push",
                    self.config.max_bundle_bytes
                )));
            }
            data.extend_from_slice(&chunk.data);
            if !chunk.sha256.is_empty() {
                claimed_sha = chunk.sha256;
            }
        }
        let lease =
            lease.ok_or_else(|| Status::invalid_argument("the bundle upload carried no chunk"))?;
        let sha = hex::encode(sha2::Sha256::digest(&data));
        if !claimed_sha.is_empty() && claimed_sha != sha {
            return Err(Status::data_loss(format!(
                "the bundle arrived damaged (sha256 {sha}, expected {claimed_sha}); upload it again"
            )));
        }
        self.store
            .store_bundle(&lease, &data, &sha)
            .await
            .map_err(status)?;
        drop(uploading);
        Ok(Response::new(proto::UploadBundleResponse {
            size: data.len() as u64,
            sha256: sha,
        }))
    }

    async fn complete(
        &self,
        req: Request<proto::CompleteRequest>,
    ) -> Result<Response<proto::CompleteResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let mut r = req.into_inner();
        let lease = convert::lease(r.lease.as_ref(), runner.id)?;
        // Texts from a runner are stored as they are, but no database text holds a NUL.
        for s in [
            &mut r.error,
            &mut r.branch,
            &mut r.head_sha,
            &mut r.summary,
            &mut r.verify_output,
        ] {
            convert::storable(s);
        }
        let parse = |what: &str, s: &str| -> Result<Option<serde_json::Value>, Status> {
            if s.is_empty() {
                return Ok(None);
            }
            serde_json::from_str(s)
                .map(|mut v| {
                    convert::storable_json(&mut v);
                    Some(v)
                })
                .map_err(|e| Status::invalid_argument(format!("{what} is not valid JSON: {e}")))
        };
        let mut context = parse("context_json", &r.context_json)?;
        if !r.verify_output.is_empty() {
            let obj = serde_json::json!({"verify_output": r.verify_output, "context": context});
            context = Some(obj);
        }
        let usage = r.usage.unwrap_or_default();
        let completion = Completion {
            outcome: convert::outcome(r.outcome)?,
            error: (!r.error.is_empty()).then_some(r.error),
            context,
            branch: (!r.branch.is_empty()).then_some(r.branch),
            head_sha: (!r.head_sha.is_empty()).then_some(r.head_sha),
            cost_microusd: usage.cost_microusd,
            data: Some(serde_json::json!({
                "summary": r.summary,
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cache_read_tokens": usage.cache_read_tokens,
                    "cache_write_tokens": usage.cache_write_tokens,
                },
                "data": parse("data_json", &r.data_json)?,
            })),
            reproduction: r.reproduction.map(convert::reproduction).transpose()?,
            plan: r.plan.map(convert::plan),
        };
        let done = self
            .store
            .complete(&lease, &completion, &self.config.retry)
            .await
            .map_err(status)?;
        tracing::info!(
            task = lease.task_id, attempt = lease.attempt, runner = runner.id,
            outcome = ?completion.outcome, status = %done.task.status, duplicate = done.duplicate,
            "completion received"
        );
        Ok(Response::new(proto::CompleteResponse {
            duplicate: done.duplicate,
            task_status: done.task.status.to_string(),
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<proto::RenewCertificateRequest>,
    ) -> Result<Response<proto::RenewCertificateResponse>, Status> {
        let runner = self.authenticate(&req).await?;
        let cert = self
            .pki
            .sign_runner(&req.get_ref().csr_pem, runner.id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.store
            .set_runner_cert(runner.id, &cert.serial, cert.not_after)
            .await
            .map_err(status)?;
        tracing::info!(runner = runner.id, not_after = %cert.not_after, "runner certificate renewed");
        Ok(Response::new(proto::RenewCertificateResponse {
            certificate_pem: cert.pem,
            ca_pem: self.pki.ca_pem().to_owned(),
        }))
    }
}
