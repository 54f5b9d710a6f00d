//! Budgets: the fleet's default task budget and the daily budgets of repositories and of the
//! fleet. Today's spend is counted by the ledger's trigger and what running attempts were
//! granted by the claim (`claims.rs`) and the task trigger that returns it (migration 0012);
//! this module sets the budgets, reads the figures, and keeps the `budget` holds visible: the
//! queued tasks of a repository with nothing left today wait on a hold that says what was spent
//! and when it clears, released as soon as the day turns or the budget is raised.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::lifecycle::TaskId;
use super::{Error, Result, Store};

/// What is left of a daily budget, micro-dollars, for the budget row whose columns are prefixed
/// by `$p` (`"r."` for a repository, `""` for settings) and whose budget column is `$budget`:
/// NULL when no daily budget is set. Today's spend counts only if it was counted today (UTC);
/// grants to running attempts count. The rule is the SQL function `budget_left_today`
/// (migration 0041), which the claim uses too.
macro_rules! left_today {
    ($p:literal, $budget:literal) => {
        concat!(
            "budget_left_today(",
            $p,
            $budget,
            ", ",
            $p,
            "spend_day, ",
            $p,
            "day_spent_microusd, ",
            $p,
            "day_granted_microusd)"
        )
    };
}

/// [`left_today!`] of a repository's row.
macro_rules! day_left {
    ($p:literal) => {
        left_today!($p, "budget_daily_microusd")
    };
}

/// [`left_today!`] of the settings row (the fleet's budget).
macro_rules! fleet_left {
    ($p:literal) => {
        left_today!($p, "budget_global_daily_microusd")
    };
}

/// Today's figures of one budget (a repository's or the fleet's), micro-dollars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DayBudget {
    /// The daily budget, if one is set.
    pub budget_microusd: Option<i64>,
    /// Spent today (UTC): the agents' metered calls and the controller's own.
    pub spent_microusd: i64,
    /// Granted to attempts still running.
    pub granted_microusd: i64,
}

impl DayBudget {
    /// What is left today, if a budget is set.
    pub fn left_microusd(&self) -> Option<i64> {
        self.budget_microusd
            .map(|b| b - self.spent_microusd - self.granted_microusd)
    }
}

/// When today's budgets start over: the next 00:00 UTC.
pub fn next_day_boundary(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    tomorrow
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now)
}

// The queued, unheld tasks of repositories with nothing left today (or of every repository when
// the fleet has nothing left) go on a `budget` hold; the event says what was spent and when it
// clears.
const HOLD_SQL: &str = concat!(
    "WITH fleet AS (SELECT budget_global_daily_microusd AS budget, ",
    "  CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END AS spent, ",
    "  day_granted_microusd AS granted, ",
    fleet_left!(""),
    " AS left_microusd FROM settings), ",
    "over AS (SELECT r.id, ",
    "  CASE WHEN COALESCE(",
    day_left!("r."),
    ", 1) <= 0 THEN 'repository' ELSE 'fleet' END AS scope, ",
    "  CASE WHEN COALESCE(",
    day_left!("r."),
    ", 1) <= 0 THEN r.budget_daily_microusd ELSE f.budget END AS budget, ",
    "  CASE WHEN COALESCE(",
    day_left!("r."),
    ", 1) <= 0 THEN (CASE WHEN r.spend_day = (now() AT TIME ZONE 'UTC')::date THEN r.day_spent_microusd ELSE 0 END) ELSE f.spent END AS spent, ",
    "  CASE WHEN COALESCE(",
    day_left!("r."),
    ", 1) <= 0 THEN r.day_granted_microusd ELSE f.granted END AS granted ",
    "  FROM repos r CROSS JOIN fleet f WHERE COALESCE(",
    day_left!("r."),
    ", 1) <= 0 OR COALESCE(f.left_microusd, 1) <= 0) ",
    "UPDATE tasks t SET hold_kind = 'budget', hold_until = $1, hold_by = 'system', ",
    "  ev_seq = t.ev_seq + 1, ev_actor = 'system', ev_reason = 'budget_hold', ",
    "  ev_data = jsonb_build_object('scope', over.scope, 'budget_microusd', over.budget, ",
    "    'spent_microusd', over.spent, 'granted_microusd', over.granted, 'clears_at', $1, ",
    "    'note', format('the %s''s daily budget of $%s is used up today ($%s spent, $%s granted to running tasks); ",
    "dispatch resumes at %s or when the budget is raised', over.scope, round(over.budget / 1e6, 2), ",
    "round(over.spent / 1e6, 2), round(over.granted / 1e6, 2), to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"'))) ",
    "FROM over WHERE t.repo_id = over.id AND t.status = 'queued' AND t.hold_kind IS NULL ",
    // A claim not started yet holds its grant already: it goes ahead.
    "  AND NOT EXISTS (SELECT 1 FROM task_claims c WHERE c.task_id = t.id) ",
    "RETURNING t.id"
);

// `budget` holds whose repository and fleet both have something left again (the day turned, the
// budget was raised or cleared) are released.
const RELEASE_SQL: &str = concat!(
    "UPDATE tasks t SET hold_kind = NULL, hold_until = NULL, hold_by = NULL, ",
    "  ev_seq = t.ev_seq + 1, ev_actor = 'system', ev_reason = 'budget_released', ev_data = NULL ",
    "FROM repos r CROSS JOIN settings s ",
    "WHERE t.repo_id = r.id AND t.status = 'queued' AND t.hold_kind = 'budget' ",
    "  AND COALESCE(",
    day_left!("r."),
    ", 1) > 0 AND COALESCE(",
    fleet_left!("s."),
    ", 1) > 0 ",
    "RETURNING t.id"
);

impl Store {
    /// Sets the fleet's budgets: every task's budget where its repository sets none, and the
    /// fleet's daily budget (`None`: no fleet-wide daily limit). What running attempts hold is
    /// counted afresh, so a daily budget set while work runs sees it.
    pub async fn set_fleet_budgets(
        &self,
        task_microusd: i64,
        daily_microusd: Option<i64>,
    ) -> Result<()> {
        if task_microusd <= 0 || daily_microusd.is_some_and(|d| d < 0) {
            return Err(Error::Invalid(format!(
                "a task budget must be above zero and a daily budget zero or more (got {task_microusd} and {daily_microusd:?} micro-dollars)"
            )));
        }
        sqlx::query(
            "UPDATE settings SET budget_task_microusd = $1, budget_global_daily_microusd = $2, \
             day_granted_microusd = (SELECT COALESCE(sum(granted_microusd), 0) FROM tasks \
                                     WHERE status IN ('leased', 'running', 'verifying')) \
               + (SELECT COALESCE(sum(granted_microusd), 0) FROM task_claims), \
             updated_at = now()",
        )
        .bind(task_microusd)
        .bind(daily_microusd)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Today's figures of the fleet's daily budget.
    pub async fn fleet_day(&self) -> Result<DayBudget> {
        Ok(sqlx::query_as(
            "SELECT budget_global_daily_microusd AS budget_microusd, \
               CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END AS spent_microusd, \
               day_granted_microusd AS granted_microusd FROM settings",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Today's figures of a repository's daily budget.
    pub async fn repo_day(&self, repo: super::RepoId) -> Result<DayBudget> {
        sqlx::query_as(
            "SELECT budget_daily_microusd AS budget_microusd, \
               CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END AS spent_microusd, \
               day_granted_microusd AS granted_microusd FROM repos WHERE id = $1",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RepoNotFound(format!("#{repo}")))
    }

    /// Puts the queued tasks of repositories with nothing left today on a `budget` hold and
    /// releases the holds that can go; returns the tasks held and released.
    pub async fn sweep_budget_holds(&self) -> Result<(Vec<TaskId>, Vec<TaskId>)> {
        let held: Vec<TaskId> = sqlx::query_scalar(HOLD_SQL)
            .bind(next_day_boundary(Utc::now()))
            .fetch_all(&self.pool)
            .await?;
        let released: Vec<TaskId> = sqlx::query_scalar(RELEASE_SQL)
            .fetch_all(&self.pool)
            .await?;
        if !held.is_empty() {
            tracing::info!(tasks = held.len(), "daily budget used up: tasks held");
        }
        Ok((held, released))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_turns_at_midnight_utc() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            next_day_boundary(t("2026-11-25T17:30:00Z")),
            t("2026-11-26T00:00:00Z")
        );
        assert_eq!(
            next_day_boundary(t("2026-12-31T23:59:59Z")),
            t("2027-01-01T00:00:00Z")
        );
    }
}
