//! The task dependency graph (petgraph): an edge `task → dependency` means `task` waits for
//! `dependency`. Triage plans a batch on it — a suggested dependency that would close a cycle is
//! dropped with the cycle it would have made, instead of failing the whole batch — and the
//! dependency view of a task (what it waits for, what waits for it, how far) is read from it.
//!
//! Pure: built from the store's edges ([`crate::store::tasks::DependencyEdge`]); the store still
//! refuses a cycle inside the transaction that adds an edge, for plans that race.

use std::collections::{HashMap, VecDeque};

use petgraph::Direction;
use petgraph::graphmap::DiGraphMap;

use crate::store::TaskId;
use crate::store::tasks::DependencyEdge;

/// How a task waits for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Its fate is tied: if the dependency fails, so does the task.
    Hard,
    /// Ordering only (they touch the same files).
    Soft,
}

/// A dependency that would close a cycle, with the cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// `task`, `dependency`, …, `task`: each waits for the next.
    pub path: Vec<TaskId>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self.path.iter().map(|t| format!("task {t}")).collect();
        write!(f, "{}", steps.join(" waits for "))
    }
}

/// A task reached from another in the dependency view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// The task.
    pub task: TaskId,
    /// Edges away (1: directly).
    pub depth: u32,
    /// Whether every edge on the way is hard.
    pub hard: bool,
}

/// The graph.
#[derive(Debug, Default, Clone)]
pub struct DependencyGraph {
    g: DiGraphMap<TaskId, Link>,
}

impl DependencyGraph {
    /// The graph of `edges` (a hard edge wins over a soft one between the same tasks).
    pub fn from_edges(edges: &[DependencyEdge]) -> Self {
        let mut g = DiGraphMap::new();
        for e in edges {
            let link = if e.soft { Link::Soft } else { Link::Hard };
            let keep = match g.edge_weight(e.task, e.depends_on) {
                Some(Link::Hard) => Link::Hard,
                _ => link,
            };
            g.add_edge(e.task, e.depends_on, keep);
        }
        Self { g }
    }

    /// Makes `task` wait for `dependency`, unless that closes a cycle (a task waiting for itself,
    /// directly or through others): then nothing changes and the cycle is returned.
    pub fn add(&mut self, task: TaskId, dependency: TaskId, link: Link) -> Result<(), Cycle> {
        self.g.add_node(task);
        self.g.add_node(dependency);
        if let Some(back) = self.path(dependency, task) {
            let mut path = vec![task];
            path.extend(back);
            return Err(Cycle { path });
        }
        let keep = match self.g.edge_weight(task, dependency) {
            Some(Link::Hard) => Link::Hard,
            _ => link,
        };
        self.g.add_edge(task, dependency, keep);
        Ok(())
    }

    /// The shortest chain of waits from `from` to `to` (both included), if there is one.
    fn path(&self, from: TaskId, to: TaskId) -> Option<Vec<TaskId>> {
        petgraph::algo::astar(&self.g, from, |n| n == to, |_| 1u32, |_| 0).map(|(_, path)| path)
    }

    /// What `task` waits for, directly and through others, nearest first.
    pub fn waits_for(&self, task: TaskId) -> Vec<Reached> {
        self.reach(task, Direction::Outgoing)
    }

    /// What waits for `task`, directly and through others, nearest first.
    pub fn blocks(&self, task: TaskId) -> Vec<Reached> {
        self.reach(task, Direction::Incoming)
    }

    /// Breadth-first from `task` along `dir`; a task reached both ways counts as hard when any
    /// shortest way is.
    fn reach(&self, task: TaskId, dir: Direction) -> Vec<Reached> {
        if !self.g.contains_node(task) {
            return Vec::new();
        }
        let mut seen: HashMap<TaskId, (u32, bool)> = HashMap::from([(task, (0, true))]);
        let mut queue = VecDeque::from([task]);
        let mut out = Vec::new();
        while let Some(n) = queue.pop_front() {
            let (depth, hard) = seen[&n];
            for (a, b, link) in self.g.edges_directed(n, dir) {
                let next = if a == n { b } else { a };
                let next_hard = hard && *link == Link::Hard;
                match seen.get_mut(&next) {
                    None => {
                        seen.insert(next, (depth + 1, next_hard));
                        queue.push_back(next);
                    }
                    Some((d, h)) if *d == depth + 1 && next_hard => *h = true,
                    Some(_) => {}
                }
            }
        }
        for (t, (depth, hard)) in seen {
            if t != task {
                out.push(Reached {
                    task: t,
                    depth,
                    hard,
                });
            }
        }
        out.sort_by_key(|r| (r.depth, r.task));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(task: TaskId, depends_on: TaskId, soft: bool) -> DependencyEdge {
        DependencyEdge {
            task,
            depends_on,
            soft,
        }
    }

    #[test]
    fn a_dependency_closing_a_cycle_is_refused_with_the_cycle() {
        let mut g = DependencyGraph::from_edges(&[edge(2, 1, false), edge(3, 2, true)]);
        assert_eq!(g.add(4, 3, Link::Hard), Ok(()));
        let cycle = g.add(1, 4, Link::Hard).unwrap_err();
        assert_eq!(cycle.path, vec![1, 4, 3, 2, 1]);
        assert_eq!(
            cycle.to_string(),
            "task 1 waits for task 4 waits for task 3 waits for task 2 waits for task 1"
        );
        // A task waiting for itself is the shortest cycle.
        assert_eq!(g.add(5, 5, Link::Soft).unwrap_err().path, vec![5, 5]);
        // Refused edges changed nothing.
        assert!(g.blocks(1).iter().all(|r| r.task != 5));
        assert!(g.waits_for(1).is_empty());
    }

    #[test]
    fn the_view_reaches_both_ways_with_depth_and_hardness() {
        let g = DependencyGraph::from_edges(&[
            edge(2, 1, false),
            edge(3, 2, true),
            edge(4, 3, false),
            edge(4, 1, false),
        ]);
        assert_eq!(
            g.waits_for(4),
            vec![
                Reached {
                    task: 1,
                    depth: 1,
                    hard: true
                },
                Reached {
                    task: 3,
                    depth: 1,
                    hard: true
                },
                Reached {
                    task: 2,
                    depth: 2,
                    hard: false
                },
            ]
        );
        assert_eq!(
            g.blocks(1),
            vec![
                Reached {
                    task: 2,
                    depth: 1,
                    hard: true
                },
                Reached {
                    task: 4,
                    depth: 1,
                    hard: true
                },
                Reached {
                    task: 3,
                    depth: 2,
                    hard: false
                },
            ]
        );
        assert!(g.waits_for(99).is_empty());
    }
}
