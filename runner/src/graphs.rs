//! The code graph on the runner host: one index per repository under the state directory,
//! brought up to date with each task's fresh checkout *before* the agent touches it, so the graph
//! only ever reads the forge's code. It gives the prompt a navigation map and, from the hunks of
//! the agent's diff (base-side line numbers, which are the graph's), the blast radius that goes
//! back with the result for the reviewer.
//!
//! The graph reads files the forge holds, which earlier agents may have written, on the host: the
//! reads are safe against links and devices (see `codegraph::scan::read_regular`), ignore rules
//! match in linear time, and a build is time-boxed and stopped with its task, so one repository
//! can hold neither a runner thread nor its repository's turn for long.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use codegraph::{Change, Config, Graph, RenderOptions};

/// The graphs of this host's repositories.
#[derive(Clone)]
pub struct Graphs {
    dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A task's view of its repository's graph.
pub struct TaskGraph {
    graph: Graph,
}

impl Graphs {
    /// Indexes live under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            locks: Arc::default(),
        }
    }

    /// Loads (or builds) `repo`'s graph and updates it to the checkout at `checkout`, within
    /// `limit` and until `cancel` fires. Tasks of the same repository take turns; the work runs
    /// off the async threads, and the turn is given back only once that work has stopped.
    pub async fn prepare(
        &self,
        repo: &str,
        checkout: &Path,
        limit: std::time::Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<(TaskGraph, String)> {
        let lock = {
            let mut l = self.locks.lock().expect("graph locks");
            l.entry(repo.to_owned()).or_default().clone()
        };
        let _turn = lock.lock().await;
        let index = self.dir.join(format!("{}.idx", repo.replace('/', "__")));
        std::fs::create_dir_all(&self.dir)?;
        let checkout = checkout.to_owned();
        let started = std::time::Instant::now();
        let stop = codegraph::Stop::at(started + limit);
        let config = Config {
            stop: stop.clone(),
            ..Config::default()
        };
        let mut work =
            tokio::task::spawn_blocking(move || Graph::load_or_build(&checkout, &index, config));
        let built = tokio::select! {
            r = &mut work => r,
            _ = cancel.cancelled() => {
                stop.stop();
                work.await
            }
        };
        let (graph, stats) = match built? {
            Err(codegraph::Error::Stopped) if cancel.is_cancelled() => {
                anyhow::bail!("the code graph was stopped with its task")
            }
            Err(codegraph::Error::Stopped) => anyhow::bail!(
                "the code graph took longer than {} s and was stopped; the task goes on without it",
                limit.as_secs()
            ),
            r => r?,
        };
        let summary = format!(
            "code graph: {} files parsed, {} in the graph, in {} ms",
            stats.parsed,
            stats.files,
            started.elapsed().as_millis()
        );
        Ok((TaskGraph { graph }, summary))
    }
}

impl TaskGraph {
    /// The navigation map for the issue text, rendered for the prompt (`None` when empty).
    pub fn navigation(&self, issue_text: &str) -> Option<String> {
        let map = self.graph.navigate(issue_text);
        if map.files.is_empty() {
            return None;
        }
        Some(codegraph::render::navigation(
            &map,
            &RenderOptions::default(),
        ))
    }

    /// The blast radius of a `git diff -U0` against the graph's tree, rendered.
    pub fn blast_radius(&self, diff_u0: &str) -> Option<String> {
        let changes = changes_of(diff_u0);
        if changes.is_empty() {
            return None;
        }
        let b = self.graph.blast_radius(&changes);
        Some(codegraph::render::blast_radius(
            &b,
            &RenderOptions::default(),
        ))
    }
}

impl TaskGraph {
    /// Plan gate: the predicted blast radius of a plan that names `files` (each taken whole):
    /// how many files it touches or impacts (named plus impacted, each once), and the radius
    /// rendered.
    pub fn plan_blast(&self, files: &[String]) -> (i32, String) {
        let changes: Vec<Change> = files
            .iter()
            .map(|f| Change {
                path: f.clone(),
                ranges: Vec::new(),
            })
            .collect();
        let b = self.graph.blast_radius(&changes);
        let mut all: Vec<&str> = files
            .iter()
            .map(String::as_str)
            .chain(b.impacted_files.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        let text = codegraph::render::blast_radius(&b, &RenderOptions::default());
        (i32::try_from(all.len()).unwrap_or(i32::MAX), text)
    }

    /// The blast radius of a `git diff -U0` rendered, with the radius itself and which of its
    /// symbols tests reach (the graph's tested-by edges).
    pub fn blast_and_coverage(
        &self,
        diff_u0: &str,
    ) -> Option<(String, codegraph::BlastRadius, codegraph::Coverage)> {
        let changes = changes_of(diff_u0);
        if changes.is_empty() {
            return None;
        }
        let b = self.graph.blast_radius(&changes);
        let c = self.graph.coverage(&b);
        let text = codegraph::render::blast_radius(&b, &RenderOptions::default());
        Some((text, b, c))
    }
}

/// Changed base-side line ranges per file from `git diff -U0` output. Files new in the diff are
/// left out (the graph does not know them); a pure insertion marks the line it follows.
pub fn changes_of(diff: &str) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    let mut current: Option<usize> = None;
    for line in diff.lines() {
        if let Some(path) = line.strip_prefix("--- ") {
            current = path.strip_prefix("a/").map(|p| {
                out.push(Change {
                    path: p.to_owned(),
                    ranges: Vec::new(),
                });
                out.len() - 1
            });
        } else if let (Some(i), Some(hunk)) = (current, line.strip_prefix("@@ -")) {
            let old = hunk.split_whitespace().next().unwrap_or_default();
            let (start, len) = match old.split_once(',') {
                Some((s, l)) => (s.parse::<u32>().unwrap_or(0), l.parse::<u32>().unwrap_or(0)),
                None => (old.parse::<u32>().unwrap_or(0), 1),
            };
            let start = start.max(1);
            let end = if len == 0 { start } else { start + len - 1 };
            out[i].ranges.push((start, end));
        }
    }
    out.retain(|c| !c.ranges.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunks_become_base_side_ranges() {
        let diff = "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -10,3 +10,4 @@ fn x\n-a\n+b\n@@ -40,0 +42,2 @@\n+c\ndiff --git a/new.rs b/new.rs\n--- /dev/null\n+++ b/new.rs\n@@ -0,0 +1,3 @@\n+x\n";
        let c = changes_of(diff);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "src/a.rs");
        assert_eq!(c[0].ranges, vec![(10, 12), (40, 40)]);
    }

    #[tokio::test]
    async fn a_checkout_gets_navigation_and_a_blast_radius() {
        let dir = std::env::temp_dir().join(format!("bp-graph-{}", std::process::id()));
        let repo = dir.join("repo");
        std::fs::create_dir_all(repo.join("src")).unwrap();
        std::fs::write(
            repo.join("src/billing.py"),
            "def compute_invoice(order):\n    return order.total\n\n\ndef send_invoice(order):\n    return compute_invoice(order)\n",
        )
        .unwrap();
        let graphs = Graphs::new(&dir.join("graphs"));
        let never = tokio_util::sync::CancellationToken::new();
        let limit = std::time::Duration::from_secs(60);
        let (g, summary) = graphs
            .prepare("acme/x", &repo, limit, &never)
            .await
            .unwrap();
        assert!(summary.contains("1 files parsed"), "{summary}");
        let nav = g
            .navigation("The invoice total is wrong in compute_invoice")
            .unwrap();
        assert!(nav.contains("src/billing.py"), "{nav}");
        let diff = "--- a/src/billing.py\n+++ b/src/billing.py\n@@ -2 +2 @@\n-    return order.total\n+    return order.total + tax\n";
        let blast = g.blast_radius(diff).unwrap();
        assert!(
            blast.contains("send_invoice"),
            "the caller is impacted: {blast}"
        );
        // A plan naming the file: the file itself, nothing else depends on it from outside.
        let (n, text) = g.plan_blast(&["src/billing.py".to_string(), "src/new.py".to_string()]);
        assert_eq!(n, 2, "{text}");
        // A second task reuses the index.
        let (_, summary) = graphs
            .prepare("acme/x", &repo, limit, &never)
            .await
            .unwrap();
        // A build past its limit stops and says so; the index is not damaged by it.
        let err = graphs
            .prepare("acme/x", &repo, std::time::Duration::ZERO, &never)
            .await
            .err()
            .expect("stopped");
        assert!(format!("{err:#}").contains("was stopped"), "{err:#}");
        let (_, summary2) = graphs
            .prepare("acme/x", &repo, limit, &never)
            .await
            .unwrap();
        assert!(summary2.contains("0 files parsed"), "{summary2}");
        assert!(summary.contains("0 files parsed"), "{summary}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
