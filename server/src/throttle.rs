//! Login throttling. A password check runs argon2 (about 19 MiB and tens of
//! milliseconds), so checks run a few at a time (`concurrency`, the cores by default)
//! with a bounded queue; repeated failures slow down and then lock out the user name and
//! the client address for a while, growing with each further failure. Failures are
//! forgotten after `FORGET` without one; the table of failures is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ServerError;

/// Failures after which a user name is locked out.
const USER_FAILURES: u32 = 5;
/// Failures after which a client address is locked out (a PC room shares one address).
const ADDR_FAILURES: u32 = 20;
/// The first lockout; it doubles with each further failure, up to `MAX_LOCKOUT`.
const FIRST_LOCKOUT: Duration = Duration::from_secs(30);
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Delay added before answering each failure, per failure so far, up to `MAX_DELAY`.
const DELAY_STEP: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// A failure is forgotten after this long without another.
const FORGET: Duration = Duration::from_secs(15 * 60);
/// Entries kept in the failure table at most.
const MAX_ENTRIES: usize = 10_000;
/// Logins waiting for a password check at most, per permit; beyond, refused at once.
const QUEUE_PER_CHECK: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Shared by every login of a server.
#[derive(Debug)]
pub struct LoginThrottle {
    checks: Semaphore,
    queue: usize,
    waiting: AtomicUsize,
    failures: Mutex<HashMap<Key, Failures>>,
}

/// Counts a login waiting for a slot, until it is admitted, refused or dropped.
struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot to run one password check.
#[derive(Debug)]
pub struct CheckSlot<'a>(#[allow(dead_code)] SemaphorePermit<'a>);

impl LoginThrottle {
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            checks: Semaphore::new(concurrency),
            queue: concurrency * QUEUE_PER_CHECK,
            waiting: Default::default(),
            failures: Mutex::default(),
        }
    }

    /// Refuses a locked-out user or address, then waits for a check slot.
    ///
    /// # Errors
    /// `LoginLocked` while locked out; `Busy` when too many logins already wait.
    pub async fn admit(
        &self,
        user: &str,
        addr: Option<IpAddr>,
    ) -> Result<CheckSlot<'_>, ServerError> {
        let now = Instant::now();
        {
            let failures = self.lock();
            for key in keys(user, addr) {
                if let Some(until) = failures.get(&key).and_then(|f| f.locked_until)
                    && until > now
                {
                    return Err(ServerError::LoginLocked {
                        secs: (until - now).as_secs().max(1),
                    });
                }
            }
        }
        let waiter = Waiter(&self.waiting);
        if waiter.0.fetch_add(1, Ordering::AcqRel) >= self.queue {
            return Err(ServerError::Busy("too many logins at once".into()));
        }
        let permit = self.checks.acquire().await;
        drop(waiter);
        permit
            .map(CheckSlot)
            .map_err(|_| ServerError::Busy("the server is stopping".into()))
    }

    /// Records a failure; returns how long to wait before answering it.
    pub fn failed(&self, user: &str, addr: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() >= MAX_ENTRIES {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET);
            if failures.len() >= MAX_ENTRIES {
                // Still full: forget the oldest half.
                let mut lasts: Vec<Instant> = failures.values().map(|f| f.last).collect();
                lasts.sort();
                let cut = lasts[lasts.len() / 2];
                failures.retain(|_, f| f.last > cut);
            }
        }
        let mut worst = 0;
        for key in keys(user, addr) {
            let threshold = match key {
                Key::User(_) => USER_FAILURES,
                Key::Addr(_) => ADDR_FAILURES,
            };
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(entry.last) >= FORGET {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count >= threshold {
                let doublings = (entry.count - threshold).min(16);
                let lockout = FIRST_LOCKOUT
                    .saturating_mul(1 << doublings)
                    .min(MAX_LOCKOUT);
                entry.locked_until = Some(now + lockout);
            }
            worst = worst.max(entry.count);
        }
        DELAY_STEP.saturating_mul(worst).min(MAX_DELAY)
    }

    /// Forgets the failures of a user (and of the address) after a good login.
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>) {
        let mut failures = self.lock();
        for key in keys(user, addr) {
            failures.remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn keys(user: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::User(user.to_owned())).chain(addr.map(Key::Addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_slow_down_then_lock_out_and_a_success_forgets_them() {
        let throttle = LoginThrottle::new(2);
        let addr = Some(IpAddr::from([10, 0, 0, 7]));
        let mut delays = Vec::new();
        for _ in 0..USER_FAILURES {
            drop(throttle.admit("alice", addr).await.expect("admitted"));
            delays.push(throttle.failed("alice", addr));
        }
        assert!(delays.windows(2).all(|w| w[0] <= w[1]) && delays[0] > Duration::ZERO);
        let locked = throttle.admit("alice", addr).await.expect_err("locked");
        assert!(matches!(locked, ServerError::LoginLocked { secs } if secs >= 25));
        // Another user from elsewhere is not locked; the address is not yet.
        assert!(
            throttle
                .admit("bob", Some(IpAddr::from([10, 0, 0, 8])))
                .await
                .is_ok()
        );
        assert!(throttle.admit("carol", addr).await.is_ok());
        throttle.succeeded("alice", addr);
        assert!(throttle.admit("alice", addr).await.is_ok());
    }

    #[tokio::test]
    async fn checks_run_a_few_at_a_time_and_the_queue_is_bounded() {
        let throttle = LoginThrottle::new(1);
        let slot = throttle.admit("a", None).await.expect("first");
        let waiting: Vec<_> = (0..QUEUE_PER_CHECK)
            .map(|_| Box::pin(throttle.admit("a", None)))
            .collect();
        let mut waiting = waiting;
        for w in &mut waiting {
            assert!(
                futures::poll!(w.as_mut()).is_pending(),
                "waits for the slot"
            );
        }
        let refused = throttle.admit("a", None).await.expect_err("queue full");
        assert!(matches!(refused, ServerError::Busy(_)));
        drop(slot);
        assert!(waiting.remove(0).await.is_ok());
    }
}
