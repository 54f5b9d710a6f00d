//! What piles up on a runner host, pruned by age and a disk budget: the choice
//! ([`pick`]) shared by the environment snapshots ([`crate::environment::to_prune`]) and the
//! repositories — a repository's mirror and its code-graph index go together
//! ([`crate::workspace::Workspaces::prune`]); sizes are measured on disk ([`dir_bytes`]).
//! Task checkouts are per attempt: the daemon removes each when its attempt ends, and any left
//! over when it starts.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One thing that may be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its name.
    pub key: String,
    /// When it was last used, seconds since the epoch.
    pub last_used: u64,
    /// What it takes on disk, bytes.
    pub bytes: u64,
}

/// The items to remove: those unused for longer than `max_age`, then the least recently used
/// while the rest take more than `budget` bytes; never one in `keep`.
pub fn pick(
    items: &[Item],
    now: SystemTime,
    max_age: Duration,
    budget: u64,
    keep: &HashSet<String>,
) -> Vec<String> {
    let now = secs(now);
    let mut by_age: Vec<&Item> = items.iter().filter(|i| !keep.contains(&i.key)).collect();
    by_age.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.key.cmp(&b.key)));
    let mut total: u64 = items.iter().map(|i| i.bytes).sum();
    let mut out = Vec::new();
    for i in by_age {
        if now.saturating_sub(i.last_used) > max_age.as_secs() || total > budget {
            out.push(i.key.clone());
            total = total.saturating_sub(i.bytes);
        }
    }
    out
}

/// Seconds since the epoch.
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// When `path` was last modified, seconds since the epoch (`None`: it is not there).
pub fn modified(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(secs)
}

/// Bytes of the regular files under `path` (links are not followed), bounded to `max_entries`
/// entries so a huge tree cannot hold the caller: past it the count is a lower bound.
pub fn dir_bytes(path: &Path, max_entries: usize) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        seen += 1;
        if seen > max_entries {
            break;
        }
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_ones_go_then_the_least_recently_used_over_the_budget_never_one_in_use() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let day = 86_400;
        let at = |d: u64| 100 * day - d * day;
        let items = vec![
            Item {
                key: "old".into(),
                last_used: at(40),
                bytes: 10,
            },
            Item {
                key: "old-in-use".into(),
                last_used: at(50),
                bytes: 10,
            },
            Item {
                key: "week".into(),
                last_used: at(7),
                bytes: 50,
            },
            Item {
                key: "today".into(),
                last_used: at(0),
                bytes: 50,
            },
        ];
        let keep: HashSet<String> = ["old-in-use".to_owned()].into();
        let month = Duration::from_secs(30 * day);
        assert_eq!(pick(&items, now, month, 1000, &keep), vec!["old"]);
        assert_eq!(
            pick(&items, now, month, 70, &keep),
            vec!["old", "week"],
            "over the budget the least recently used go, not the one in use"
        );
        assert_eq!(
            pick(&items, now, month, 0, &keep),
            vec!["old", "week", "today"]
        );
    }
}
