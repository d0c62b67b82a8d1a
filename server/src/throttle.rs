//! Login throttling. A password check runs argon2 (about 19 MiB and tens of
//! milliseconds), so checks run on a few dedicated threads (`concurrency`, the cores by
//! default) behind a bounded queue: memory stays at a few argon2 buffers whatever the
//! flood (on the shared blocking pool, each of its many threads would keep one). Repeated
//! failures slow down and then lock out the user name and the client address for a
//! while, growing with each further failure. Failures are forgotten after `FORGET`
//! without one; the table of failures is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

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
/// Logins waiting for a password check at most, per checking thread; beyond, refused at
/// once.
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

type Job = Box<dyn FnOnce() + Send>;

/// Shared by every login of a server.
#[derive(Debug)]
pub struct LoginThrottle {
    jobs: std::sync::mpsc::SyncSender<Job>,
    failures: Mutex<HashMap<Key, Failures>>,
}

impl LoginThrottle {
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(concurrency * QUEUE_PER_CHECK);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(cause = %e, "cannot start a password check thread");
            }
        }
        Self {
            jobs,
            failures: Mutex::default(),
        }
    }

    /// Runs a password check for `user` from `addr`, unless either is locked out.
    ///
    /// # Errors
    /// `LoginLocked` while locked out; `Busy` when too many checks already wait.
    pub async fn check<T: Send + 'static>(
        &self,
        user: &str,
        addr: Option<IpAddr>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServerError> {
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
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServerError::Busy("too many logins at once".into()));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServerError::Busy("password checks are not running".into()));
            }
        }
        result
            .await
            .map_err(|_| ServerError::Internal("a password check failed".into()))
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
            throttle.check("alice", addr, || ()).await.expect("checked");
            delays.push(throttle.failed("alice", addr));
        }
        assert!(delays.windows(2).all(|w| w[0] <= w[1]) && delays[0] > Duration::ZERO);
        let locked = throttle
            .check("alice", addr, || ())
            .await
            .expect_err("locked");
        assert!(matches!(locked, ServerError::LoginLocked { secs } if secs >= 25));
        // Another user from elsewhere is not locked; the address is not yet.
        let elsewhere = Some(IpAddr::from([10, 0, 0, 8]));
        assert!(throttle.check("bob", elsewhere, || ()).await.is_ok());
        assert!(throttle.check("carol", addr, || ()).await.is_ok());
        throttle.succeeded("alice", addr);
        assert!(throttle.check("alice", addr, || ()).await.is_ok());
    }

    #[tokio::test]
    async fn checks_run_on_their_threads_and_the_queue_is_bounded() {
        let throttle = Arc::new(LoginThrottle::new(1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let throttle = throttle.clone();
            tokio::spawn(
                async move { throttle.check("a", None, move || hold.recv().is_ok()).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut queued = Vec::new();
        for _ in 0..QUEUE_PER_CHECK {
            let throttle = throttle.clone();
            queued.push(tokio::spawn(async move {
                throttle
                    .check("a", None, || {
                        std::thread::current().name().map(str::to_owned)
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = throttle
            .check("a", None, || ())
            .await
            .expect_err("queue full");
        assert!(matches!(refused, ServerError::Busy(_)));
        release.send(()).expect("release");
        assert!(busy.await.expect("join").expect("ran"));
        for q in queued {
            let thread = q.await.expect("join").expect("ran");
            assert_eq!(thread.as_deref(), Some("password-check-0"));
        }
    }
}
