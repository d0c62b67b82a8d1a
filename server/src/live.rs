//! What the running server knows beyond its database: the progress of the uploads its
//! transfer service is receiving, the counters `/metrics` reports, and news of logouts.
//!
//! The transfer service writes here; the console and the API read. A control server of
//! a cluster has no transfer service: it mirrors what the transfer servers report
//! through the metadata ([`Live::mirror`]). Everything is
//! bounded: one entry per open upload stream (streams are capped by `--max-uploads`),
//! and a few rate samples per entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::meta::{JobReport, UploadReport};

/// The window over which an upload's rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Rate samples kept per upload at most.
const MAX_SAMPLES: usize = 64;

/// A live upload's progress, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UploadProgress {
    /// Bytes of block content the server has asked for in this session.
    pub bytes_needed: u64,
    /// Of those, the bytes stored durably.
    pub bytes_stored: u64,
    /// Bytes received on the wire (compressed, page deltas) in this session.
    pub bytes_on_wire: u64,
    /// Wire bytes per second over the last few seconds.
    pub rate: u64,
    /// Seconds until what was asked for so far is stored, at the present pace.
    pub eta_secs: Option<u64>,
    /// The terminal's own account of the whole finish, if it sends one.
    pub job: Option<JobReport>,
}

#[derive(Debug)]
struct Upload {
    session: u64,
    needed: u64,
    stored: u64,
    on_wire: u64,
    job: Option<JobReport>,
    /// `(when, stored, on_wire)`, oldest first.
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Upload {
    fn fresh(session: u64, now: Instant) -> Self {
        Self {
            session,
            needed: 0,
            stored: 0,
            on_wire: 0,
            job: None,
            samples: VecDeque::from([(now, 0, 0)]),
        }
    }

    /// Records what is stored now, for the rate; old samples go.
    fn sample(&mut self, now: Instant) {
        self.samples.push_back((now, self.stored, self.on_wire));
        while self.samples.len() > MAX_SAMPLES
            || self.samples.len() > 2
                && self
                    .samples
                    .get(1)
                    .is_some_and(|(t, ..)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn progress(&self, now: Instant) -> UploadProgress {
        let (mut rate, mut content_rate) = (0.0, 0.0);
        if let Some(&(then, stored, on_wire)) = self.samples.front() {
            let secs = now.duration_since(then).as_secs_f64();
            if secs >= 0.5 {
                rate = (self.on_wire - on_wire) as f64 / secs;
                content_rate = (self.stored - stored) as f64 / secs;
            }
        }
        let left = self.needed.saturating_sub(self.stored);
        let eta_secs = if left == 0 {
            Some(0)
        } else if content_rate > 0.0 {
            Some((left as f64 / content_rate).ceil() as u64)
        } else {
            None
        };
        UploadProgress {
            bytes_needed: self.needed,
            bytes_stored: self.stored,
            bytes_on_wire: self.on_wire,
            rate: rate as u64,
            eta_secs,
            job: self.job,
        }
    }
}

/// Counters since the server started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Wire bytes of chunks as they arrive, before verification.
    pub bytes_received: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub chunks_stored: AtomicU64,
    pub verification_failures: AtomicU64,
    pub login_failures: AtomicU64,
    pub versions_committed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The running server's uploads and counters.
#[derive(Debug)]
pub struct Live {
    uploads: Mutex<HashMap<String, Upload>>,
    pub counters: Counters,
    /// Bumped on every change, so watchers wake only when there is news.
    changed: watch::Sender<u64>,
    /// Bumped on every logout: event streams check that their session still holds.
    logouts: watch::Sender<u64>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            uploads: Mutex::default(),
            counters: Counters::default(),
            changed: watch::channel(0).0,
            logouts: watch::channel(0).0,
        }
    }
}

impl Live {
    fn with_upload(&self, guid: &str, session: u64, change: impl FnOnce(&mut Upload)) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(upload) = uploads.get_mut(guid).filter(|u| u.session == session) {
            change(upload);
        }
        drop(uploads);
        self.changed.send_modify(|n| *n += 1);
    }

    /// An upload stream opened (replacing an older stream of the same update).
    pub fn opened(&self, guid: &str, session: u64) {
        let upload = Upload::fresh(session, Instant::now());
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(guid.to_owned(), upload);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The server asked for `bytes` more of block content.
    pub fn needed(&self, guid: &str, session: u64, bytes: u64) {
        self.with_upload(guid, session, |u| u.needed += bytes);
    }

    /// `chunks` chunks of `content` bytes, `on_wire` as received, are stored durably.
    pub fn stored(&self, guid: &str, session: u64, chunks: u64, content: u64, on_wire: u64) {
        Counters::add(&self.counters.chunks_stored, chunks);
        Counters::add(&self.counters.bytes_stored, content);
        self.with_upload(guid, session, |u| {
            u.stored += content;
            u.on_wire += on_wire;
            u.sample(Instant::now());
        });
    }

    /// The terminal's account of its whole finish.
    pub fn job(&self, guid: &str, session: u64, job: JobReport) {
        self.with_upload(guid, session, |u| u.job = Some(job));
    }

    /// The stream of that session ended.
    pub fn closed(&self, guid: &str, session: u64) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if uploads.get(guid).is_some_and(|u| u.session == session) {
            uploads.remove(guid);
        }
        drop(uploads);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The progress of an update's open upload stream, if it has one.
    pub fn progress(&self, guid: &str) -> Option<UploadProgress> {
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.get(guid).map(|u| u.progress(Instant::now()))
    }

    /// The open upload streams, as a transfer server reports them.
    pub fn reports(&self) -> Vec<UploadReport> {
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads
            .iter()
            .map(|(guid, u)| UploadReport {
                guid: guid.clone(),
                session: u.session,
                needed: u.needed,
                stored: u.stored,
                on_wire: u.on_wire,
                job: u.job,
            })
            .collect()
    }

    /// Takes the transfer servers' latest reports as the open upload streams: the rate
    /// is measured between reports; a stream no longer reported is closed.
    pub fn mirror(&self, reports: Vec<UploadReport>) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let reported: std::collections::HashSet<&str> =
            reports.iter().map(|r| r.guid.as_str()).collect();
        uploads.retain(|guid, _| reported.contains(guid.as_str()));
        for r in &reports {
            let upload = uploads
                .entry(r.guid.clone())
                .and_modify(|u| {
                    if u.session != r.session {
                        *u = Upload::fresh(r.session, now);
                    }
                })
                .or_insert_with(|| Upload::fresh(r.session, now));
            upload.needed = r.needed;
            upload.job = r.job;
            if (upload.stored, upload.on_wire) != (r.stored, r.on_wire) {
                upload.stored = r.stored;
                upload.on_wire = r.on_wire;
                upload.sample(now);
            }
        }
        drop(uploads);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Upload streams open now.
    pub fn uploads(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes on every change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A session ended by logout.
    pub fn logged_out(&self) {
        self.logouts.send_modify(|n| *n += 1);
    }

    /// Wakes on every logout.
    pub fn watch_logouts(&self) -> watch::Receiver<u64> {
        self.logouts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_one_session() {
        let live = Live::default();
        live.opened("g", 1);
        live.needed("g", 1, 1000);
        live.stored("g", 1, 1, 400, 100);
        // A stale session's news is ignored.
        live.stored("g", 0, 1, 400, 100);
        let p = live.progress("g").unwrap();
        assert_eq!(
            (p.bytes_needed, p.bytes_stored, p.bytes_on_wire),
            (1000, 400, 100)
        );
        assert_eq!(Counters::get(&live.counters.bytes_stored), 800);
        live.opened("g", 2);
        assert_eq!(live.progress("g").unwrap().bytes_stored, 0);
        live.closed("g", 1);
        assert_eq!(live.uploads(), 1);
        live.closed("g", 2);
        assert!(live.progress("g").is_none());
    }

    /// A control server shows what the transfer servers report: progress, and a stream
    /// that is no longer reported (or of a new session) replaced.
    #[test]
    fn a_mirror_follows_the_reports() {
        let transfer = Live::default();
        transfer.opened("g", 3);
        transfer.needed("g", 3, 1000);
        transfer.stored("g", 3, 1, 400, 100);
        let control = Live::default();
        let changes = control.watch();
        control.mirror(transfer.reports());
        assert!(changes.has_changed().unwrap(), "watchers wake");
        let p = control.progress("g").unwrap();
        assert_eq!(
            (p.bytes_needed, p.bytes_stored, p.bytes_on_wire),
            (1000, 400, 100)
        );
        transfer.stored("g", 3, 1, 500, 100);
        let job = JobReport {
            percent: 37,
            total: 1_265_000_000,
            eta_secs: Some(193),
            rate: 1_000_000,
        };
        transfer.job("g", 3, job);
        transfer.job("g", 2, JobReport { percent: 99, ..job });
        control.mirror(transfer.reports());
        assert_eq!(control.progress("g").unwrap().bytes_stored, 900);
        assert_eq!(
            control.progress("g").unwrap().job,
            Some(job),
            "the terminal's figures, of its session"
        );
        transfer.opened("g", 4);
        control.mirror(transfer.reports());
        assert_eq!(control.progress("g").unwrap().bytes_stored, 0);
        control.mirror(Vec::new());
        assert!(control.progress("g").is_none());
        assert_eq!(control.uploads(), 0);
    }

    #[test]
    fn rate_and_eta_come_from_recent_samples() {
        let start = Instant::now();
        let upload = Upload {
            session: 1,
            needed: 3000,
            stored: 1000,
            on_wire: 500,
            job: None,
            samples: VecDeque::from([(start, 0, 0)]),
        };
        let p = upload.progress(start + Duration::from_secs(2));
        assert_eq!(p.rate, 250);
        assert_eq!(p.eta_secs, Some(4));
        // Too soon to tell.
        assert_eq!(upload.progress(start).eta_secs, None);
    }
}
