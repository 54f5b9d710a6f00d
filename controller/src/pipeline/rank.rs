//! Best-of-N ranking: which candidate of a round is pushed, and why each other one lost.
//!
//! Pure: the push stage ([`crate::pipeline::stages`]) reads the candidates
//! ([`crate::store::candidates`]), asks the reviewer to score the finalists, and records what
//! [`decide`] returns. The order, key by key: the run succeeded (verify passed, a bundle exists);
//! its tests passed; the bug was reproduced (reproduce-first); the smaller diff (numstat lines);
//! the larger share of the blast radius covered by tests that ran. The best candidates on the
//! first three keys, at most [`FINALISTS`], are the finalists; when the reviewer scored every
//! finalist its score decides among them, else the order above does (and the record says the
//! reviewer was not consulted, and why). Inputs other helpers fill in later (tests, reproduction,
//! coverage, backend) are optional: a missing one ranks below a good one and above a bad one.

use std::cmp::Ordering;

use serde::Serialize;

/// How many candidates the reviewer compares at most.
pub const FINALISTS: usize = 2;

/// One candidate, as ranking sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Candidate {
    /// Its task id.
    pub task_id: i64,
    /// Its place among its siblings (1..N); the earlier wins a tie.
    pub candidate: i32,
    /// Its model.
    pub model: String,
    /// Its agent backend, when known.
    pub backend: Option<String>,
    /// How its run ended (`succeeded`, `verify_failed`, …).
    pub outcome: String,
    /// Whether its result has a bundle to push.
    pub has_bundle: bool,
    /// Whether the tests it added or changed passed (evidence; `None`: unknown).
    pub tests_passed: Option<bool>,
    /// Reproduce-first: whether the bug was reproduced (`None`: not asked, or unknown).
    pub reproduced: Option<bool>,
    /// Lines added plus removed (numstat).
    pub diff_lines: Option<i64>,
    /// Share (0..=1) of the changed symbols' blast radius covered by tests that ran.
    pub coverage: Option<f64>,
    /// The reviewer's score (0..=1), for finalists it scored.
    pub reviewer_score: Option<f64>,
    /// What it cost.
    pub cost_microusd: i64,
}

impl Candidate {
    /// Whether it may win at all: its run succeeded (verify passed) and left a bundle.
    pub fn eligible(&self) -> bool {
        self.outcome == "succeeded" && self.has_bundle
    }
}

/// One candidate's line in the ranking record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The candidate's inputs.
    #[serde(flatten)]
    pub candidate: Candidate,
    /// 1 = the winner.
    pub rank: usize,
    /// Whether it was among the finalists.
    pub finalist: bool,
    /// Why it won or lost.
    pub reason: String,
}

/// What [`decide`] chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The winner's task id (none: no candidate may win).
    pub winner: Option<i64>,
    /// Every candidate, by rank.
    pub entries: Vec<Entry>,
}

/// Better first: `Some(true)`, then unknown, then `Some(false)`.
fn tri(v: Option<bool>) -> u8 {
    match v {
        Some(true) => 0,
        None => 1,
        Some(false) => 2,
    }
}

/// The keys that make a finalist: succeeded, tests, reproduction.
fn hard(c: &Candidate) -> (u8, u8, u8) {
    (
        u8::from(!c.eligible()),
        tri(c.tests_passed),
        tri(c.reproduced),
    )
}

/// Smaller diff first (unknown last), then more coverage (unknown last).
fn soft(a: &Candidate, b: &Candidate) -> Ordering {
    let diff = |c: &Candidate| c.diff_lines.unwrap_or(i64::MAX);
    let cov = |c: &Candidate| c.coverage.unwrap_or(-1.0);
    diff(a)
        .cmp(&diff(b))
        .then_with(|| cov(b).partial_cmp(&cov(a)).unwrap_or(Ordering::Equal))
}

/// The order without the reviewer.
fn by_inputs(a: &Candidate, b: &Candidate) -> Ordering {
    hard(a)
        .cmp(&hard(b))
        .then_with(|| soft(a, b))
        .then_with(|| a.candidate.cmp(&b.candidate))
}

/// The finalists, best first: eligible candidates level with the best on the hard keys, at most
/// [`FINALISTS`]. The reviewer is asked about these only when there are two or more.
pub fn finalists(cands: &[Candidate]) -> Vec<i64> {
    let mut sorted: Vec<&Candidate> = cands.iter().collect();
    sorted.sort_by(|a, b| by_inputs(a, b));
    let Some(best) = sorted.first().filter(|c| c.eligible()) else {
        return Vec::new();
    };
    let key = hard(best);
    sorted
        .iter()
        .filter(|c| c.eligible() && hard(c) == key)
        .take(FINALISTS)
        .map(|c| c.task_id)
        .collect()
}

/// Ranks the candidates (their `reviewer_score` filled in for the finalists the reviewer
/// scored).
pub fn decide(cands: &[Candidate]) -> Decision {
    let finals = finalists(cands);
    let scored = finals.len() > 1
        && finals.iter().all(|id| {
            cands
                .iter()
                .any(|c| c.task_id == *id && c.reviewer_score.is_some())
        });
    let mut sorted: Vec<&Candidate> = cands.iter().collect();
    sorted.sort_by(|a, b| {
        let (fa, fb) = (finals.contains(&a.task_id), finals.contains(&b.task_id));
        fb.cmp(&fa)
            .then_with(|| {
                if scored && fa && fb {
                    let s = |c: &Candidate| c.reviewer_score.unwrap_or(0.0);
                    s(b).partial_cmp(&s(a)).unwrap_or(Ordering::Equal)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| by_inputs(a, b))
    });
    let winner = sorted.first().filter(|c| c.eligible()).copied();
    // The reviewer decided only if it scored some finalist below the winner.
    let by_score = scored
        && winner.is_some_and(|w| {
            cands
                .iter()
                .any(|c| finals.contains(&c.task_id) && c.reviewer_score < w.reviewer_score)
        });
    let entries = sorted
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            candidate: (*c).clone(),
            rank: i + 1,
            finalist: finals.contains(&c.task_id),
            reason: match winner {
                Some(w) if w.task_id == c.task_id => won(c, finals.len(), scored, by_score),
                Some(w) => lost(c, w, scored && finals.contains(&c.task_id)),
                None => format!("no candidate may win; this one: {}", unfit(c)),
            },
        })
        .collect();
    Decision {
        winner: winner.map(|w| w.task_id),
        entries,
    }
}

fn unfit(c: &Candidate) -> String {
    if c.outcome != "succeeded" {
        format!("its run did not succeed ({})", c.outcome)
    } else {
        "its result has no bundle to push".to_owned()
    }
}

fn won(c: &Candidate, finalists: usize, scored: bool, by_score: bool) -> String {
    match (finalists, scored, by_score) {
        (1, _, _) => {
            "won: the only candidate that succeeded with the best tests and reproduction".into()
        }
        (_, true, true) => format!(
            "won: the reviewer scored it highest of {finalists} finalists ({:.2})",
            c.reviewer_score.unwrap_or_default()
        ),
        (_, true, false) => format!(
            "won: the reviewer scored the {finalists} finalists level ({:.2}); best on the inputs",
            c.reviewer_score.unwrap_or_default()
        ),
        _ => "won: best on the inputs (the reviewer did not score the finalists)".into(),
    }
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn lines(v: Option<i64>) -> String {
    v.map_or_else(|| "unknown".into(), |n| format!("{n} lines"))
}

/// Why `c` ranks below winner `w`: the first key on which it is worse.
fn lost(c: &Candidate, w: &Candidate, by_reviewer: bool) -> String {
    if !c.eligible() {
        return format!("lost: {}", unfit(c));
    }
    let said = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    if tri(c.tests_passed) != tri(w.tests_passed) {
        return format!(
            "lost: its tests passed: {}, the winner's: {}",
            said(c.tests_passed),
            said(w.tests_passed)
        );
    }
    if tri(c.reproduced) != tri(w.reproduced) {
        return format!(
            "lost: it reproduced the bug: {}, the winner: {}",
            said(c.reproduced),
            said(w.reproduced)
        );
    }
    if by_reviewer && c.reviewer_score != w.reviewer_score {
        return format!(
            "lost: the reviewer scored it {:.2}, the winner {:.2}",
            c.reviewer_score.unwrap_or_default(),
            w.reviewer_score.unwrap_or_default()
        );
    }
    if c.diff_lines.unwrap_or(i64::MAX) != w.diff_lines.unwrap_or(i64::MAX) {
        return format!(
            "lost: a larger diff ({} against the winner's {})",
            lines(c.diff_lines),
            lines(w.diff_lines)
        );
    }
    let cov = |c: &Candidate| c.coverage.map_or_else(|| "unknown".into(), pct);
    if c.coverage != w.coverage {
        return format!(
            "lost: less of its blast radius covered by tests ({} against the winner's {})",
            cov(c),
            cov(w)
        );
    }
    "lost: level with the winner on every input; the earlier candidate won".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: i64, outcome: &str, diff: i64) -> Candidate {
        Candidate {
            task_id: id,
            candidate: id as i32,
            model: "sonnet".into(),
            outcome: outcome.into(),
            has_bundle: outcome == "succeeded",
            diff_lines: Some(diff),
            ..Candidate::default()
        }
    }

    #[test]
    fn a_failed_verify_loses_and_the_smaller_diff_wins() {
        let mut small = cand(3, "succeeded", 4);
        small.coverage = Some(1.0);
        let d = decide(&[cand(1, "verify_failed", 1), cand(2, "succeeded", 40), small]);
        assert_eq!(d.winner, Some(3));
        let ranks: Vec<(i64, usize)> = d
            .entries
            .iter()
            .map(|e| (e.candidate.task_id, e.rank))
            .collect();
        assert_eq!(ranks, [(3, 1), (2, 2), (1, 3)]);
        assert!(
            d.entries[1]
                .reason
                .contains("larger diff (40 lines against the winner's 4 lines)")
        );
        assert!(
            d.entries[2]
                .reason
                .contains("did not succeed (verify_failed)"),
            "{:?}",
            d.entries[2]
        );
        assert!(d.entries[0].finalist && d.entries[1].finalist && !d.entries[2].finalist);
    }

    #[test]
    fn coverage_breaks_a_diff_tie_and_unknown_inputs_rank_between_good_and_bad() {
        let mut a = cand(1, "succeeded", 10);
        a.coverage = Some(0.5);
        let mut b = cand(2, "succeeded", 10);
        b.coverage = Some(1.0);
        assert_eq!(decide(&[a.clone(), b.clone()]).winner, Some(2));
        let d = decide(&[a.clone(), b.clone()]);
        assert!(
            d.entries[1]
                .reason
                .contains("less of its blast radius covered by tests (50%"),
            "{:?}",
            d.entries[1]
        );

        // Reproduced beats unknown beats not reproduced, whatever the diff.
        let (mut yes, no, mut unknown) = (
            cand(1, "succeeded", 90),
            cand(2, "succeeded", 1),
            cand(3, "succeeded", 5),
        );
        yes.reproduced = Some(true);
        let mut no = no;
        no.reproduced = Some(false);
        unknown.reproduced = None;
        let d = decide(&[no, unknown, yes]);
        let order: Vec<i64> = d.entries.iter().map(|e| e.candidate.task_id).collect();
        assert_eq!(order, [1, 3, 2]);
        assert_eq!(
            finalists(
                &d.entries
                    .iter()
                    .map(|e| e.candidate.clone())
                    .collect::<Vec<_>>()
            ),
            [1]
        );
    }

    #[test]
    fn the_reviewer_decides_among_finalists_only_when_it_scored_them_all() {
        let (mut a, mut b, c) = (
            cand(1, "succeeded", 5),
            cand(2, "succeeded", 50),
            cand(3, "succeeded", 60),
        );
        assert_eq!(finalists(&[a.clone(), b.clone(), c.clone()]), [1, 2]);
        a.reviewer_score = Some(0.2);
        // One score missing: the inputs decide.
        assert_eq!(decide(&[a.clone(), b.clone(), c.clone()]).winner, Some(1));
        b.reviewer_score = Some(0.9);
        let d = decide(&[a, b, c]);
        assert_eq!(d.winner, Some(2));
        assert!(d.entries[0].reason.contains("reviewer scored it highest"));
        assert!(
            d.entries[1]
                .reason
                .contains("reviewer scored it 0.20, the winner 0.90")
        );
        // Level scores: the inputs decide, and the reasons say so.
        let (mut x, mut y) = (cand(1, "succeeded", 9), cand(2, "succeeded", 3));
        x.reviewer_score = Some(1.0);
        y.reviewer_score = Some(1.0);
        let level = decide(&[x, y]);
        assert_eq!(level.winner, Some(2));
        assert!(
            level.entries[0].reason.contains("finalists level"),
            "{:?}",
            level.entries[0]
        );
        assert!(
            level.entries[1].reason.contains("larger diff"),
            "{:?}",
            level.entries[1]
        );
        // The third was no finalist: it lost on its inputs.
        assert!(
            d.entries[2].reason.contains("larger diff"),
            "{:?}",
            d.entries[2]
        );
    }

    #[test]
    fn nothing_wins_when_nothing_succeeded_and_ties_go_to_the_earlier_candidate() {
        let d = decide(&[cand(1, "agent_failed", 1), cand(2, "budget_exceeded", 1)]);
        assert_eq!(d.winner, None);
        assert!(
            d.entries
                .iter()
                .all(|e| e.reason.starts_with("no candidate may win"))
        );
        let d = decide(&[cand(2, "succeeded", 3), cand(1, "succeeded", 3)]);
        assert_eq!(d.winner, Some(1));
        assert!(d.entries[1].reason.contains("earlier candidate won"));
        // A success without a bundle cannot win.
        let mut bare = cand(1, "succeeded", 1);
        bare.has_bundle = false;
        assert_eq!(decide(&[bare, cand(2, "succeeded", 9)]).winner, Some(2));
    }
}
