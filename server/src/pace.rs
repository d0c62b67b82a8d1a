//! Per-account pacing: an allowance of some work per second (bytes a probe makes the
//! server read, updates started) with a burst, kept as each account's "theoretical
//! arrival time" (GCRA). An account within its burst goes at once; past it, it waits or
//! is refused. The table holds only accounts still paying off work, at most
//! `MAX_ACCOUNTS`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Accounts kept at most; an account absent from the table has its whole burst.
const MAX_ACCOUNTS: usize = 10_000;

/// One kind of work's allowance, per account.
#[derive(Debug)]
pub struct Pace {
    /// Seconds one unit of work costs.
    cost: f64,
    /// How far ahead of now an account may have spent.
    burst: Duration,
    due: Mutex<HashMap<String, Instant>>,
}

impl Pace {
    /// `per_sec` units a second, `burst` of them at once.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            cost: 1.0 / per_sec,
            burst: Duration::from_secs_f64(burst / per_sec),
            due: Mutex::default(),
        }
    }

    /// Gives back `units` spent ahead (reserved at most, used less).
    pub fn refund(&self, account: &str, units: f64) {
        let now = Instant::now();
        let back = Duration::from_secs_f64((units * self.cost).clamp(0.0, 86_400.0));
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = due.get_mut(account) {
            *at = at.checked_sub(back).unwrap_or(now).max(now);
        }
    }

    /// Spends `units` if the account is within its burst; else how long to wait.
    ///
    /// # Errors
    /// The wait, when the account has spent its burst.
    pub fn try_spend(&self, account: &str, units: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::wait_in(&due, self.burst, account, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        self.charge(&mut due, account, units, now);
        Ok(())
    }

    #[cfg(test)]
    fn wait_at(&self, account: &str, now: Instant) -> Duration {
        let due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        Self::wait_in(&due, self.burst, account, now)
    }

    fn wait_in(
        due: &HashMap<String, Instant>,
        burst: Duration,
        account: &str,
        now: Instant,
    ) -> Duration {
        due.get(account).map_or(Duration::ZERO, |&at| {
            at.saturating_duration_since(now + burst)
        })
    }

    #[cfg(test)]
    fn spend_at(&self, account: &str, units: f64, now: Instant) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        self.charge(&mut due, account, units, now);
    }

    fn charge(&self, due: &mut HashMap<String, Instant>, account: &str, units: f64, now: Instant) {
        if due.len() >= MAX_ACCOUNTS && !due.contains_key(account) {
            // Accounts that paid off their work are as if absent.
            due.retain(|_, at| *at > now);
        }
        let cost = Duration::from_secs_f64((units * self.cost).clamp(0.0, 86_400.0));
        let at = due.entry(account.to_owned()).or_insert(now);
        *at = (*at).max(now) + cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_goes_at_once_within_its_burst_and_waits_past_it() {
        let pace = Pace::new(10.0, 20.0);
        let now = Instant::now();
        pace.spend_at("a", 20.0, now);
        assert_eq!(pace.wait_at("a", now), Duration::ZERO, "the burst");
        pace.spend_at("a", 10.0, now);
        let wait = pace.wait_at("a", now);
        assert!(
            wait > Duration::from_millis(990) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(pace.wait_at("b", now), Duration::ZERO, "another account");
        assert_eq!(
            pace.wait_at("a", now + Duration::from_secs(1)),
            Duration::ZERO
        );
        pace.refund("a", 30.0);
        assert_eq!(
            pace.wait_at("a", Instant::now()),
            Duration::ZERO,
            "given back"
        );
    }

    #[test]
    fn try_spend_refuses_past_the_burst() {
        let pace = Pace::new(1.0, 3.0);
        for _ in 0..4 {
            assert!(pace.try_spend("a", 1.0).is_ok());
        }
        let wait = pace.try_spend("a", 1.0).unwrap_err();
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert!(pace.try_spend("b", 1.0).is_ok());
    }

    #[test]
    fn the_table_forgets_accounts_that_paid_off() {
        let pace = Pace::new(1000.0, 1.0);
        let now = Instant::now();
        for i in 0..MAX_ACCOUNTS {
            pace.spend_at(&i.to_string(), 1.0, now);
        }
        pace.spend_at("late", 1.0, now + Duration::from_secs(1));
        let due = pace.due.lock().unwrap();
        assert_eq!(due.len(), 1);
    }
}
