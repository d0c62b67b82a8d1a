//! Upload progress as the manual shows it (`37% complete... (468 MB / 1,265 MB)`) plus
//! rate and ETA: a live bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hotate_engine::Progress;
use indicatif::{ProgressBar, ProgressStyle};

use crate::i18n::Lang;

/// A plain progress line (stdout not a terminal) at least this often...
const PLAIN_INTERVAL: Duration = Duration::from_secs(3);
/// ...and at each tenth of the way; counters are looked at this often.
const TICK: Duration = Duration::from_millis(250);
/// How often the live bar is refreshed.
const BAR_INTERVAL: Duration = Duration::from_millis(200);
/// Rates are measured over this much of the recent past.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// `1265` → `1,265`: megabytes with thousands separators, as the manual prints them.
pub fn mb(bytes: u64) -> String {
    let mb = (bytes + 500_000) / 1_000_000;
    let digits = mb.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn eta_text(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs / 60 % 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// The figures of the last progress line: the upload sends them to the server, whose
/// console shows the same.
#[derive(Debug, Default)]
pub struct JobFigures(Mutex<Option<Figures>>);

/// A progress line's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub percent: u64,
    /// The bytes the line counts.
    pub total: u64,
    pub eta_secs: Option<u64>,
    /// Encoded bytes per second the server stored, recently.
    pub rate: u64,
}

impl JobFigures {
    fn set(&self, figures: Figures) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(figures);
    }

    /// The last line's figures, once one was drawn.
    pub fn get(&self) -> Option<Figures> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the counters said at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the upload began.
    pub at: f64,
    /// Bytes of the image read, and to read in all (0: not known yet).
    pub read: u64,
    pub to_read: u64,
    /// Bytes of the changed blocks found, of those the server answered for, and of those
    /// it needs; of these, the bytes compressed and handed over so far.
    pub changed: u64,
    pub answered: u64,
    pub needed: u64,
    pub compressed: u64,
    /// Encoded bytes handed over to be sent, and stored by the server.
    pub sent: u64,
    pub stored: u64,
}

impl Sample {
    /// The counters of `progress`, `at` seconds into the upload.
    pub fn of(progress: &Progress, at: f64) -> Self {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            at,
            read: load(&progress.bytes_read),
            to_read: load(&progress.bytes_to_read),
            changed: load(&progress.bytes_changed),
            answered: load(&progress.bytes_answered),
            needed: load(&progress.bytes_needed),
            compressed: load(&progress.bytes_compressed),
            sent: load(&progress.bytes_sent),
            stored: load(&progress.wire_stored),
        }
    }

    /// Encoded bytes still to store: those handed over, and those the needed blocks not
    /// compressed yet will take at the compression seen so far; the changed blocks not
    /// answered yet (found, or expected in the unread part at the density of the read
    /// part) count as needed in the share seen so far. `None` before anything compressed.
    fn wire_left(&self) -> Option<f64> {
        if self.compressed == 0 {
            return None;
        }
        let unread_changed = if self.read > 0 {
            self.to_read.saturating_sub(self.read) as f64 * self.changed as f64 / self.read as f64
        } else {
            0.0
        };
        let unanswered = self.changed.saturating_sub(self.answered) as f64 + unread_changed;
        let needed_share = self.needed as f64 / self.answered.max(1) as f64;
        let needed_left = self.needed.saturating_sub(self.compressed) as f64;
        let wire_per_byte = self.sent as f64 / self.compressed as f64;
        Some(
            self.sent.saturating_sub(self.stored) as f64
                + (needed_left + unanswered * needed_share) * wire_per_byte,
        )
    }
}

/// How far a finish is and how long it has left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// 0 to 99 until the server committed: the share of the finish's time gone.
    pub percent: u64,
    /// Seconds left, at least 1 while anything is; `None` until there is a pace.
    pub eta_secs: Option<u64>,
    /// Encoded bytes per second the server stored, recently.
    pub rate: f64,
}

/// The finish's two overlapping works are reading the image and sending what the server
/// lacks; the one that will take longer at its recent pace says how long is left, and
/// the percentage is the time gone of the time gone and left (see [`Sample::wire_left`]
/// for the bytes still to send). So a rate-limited finish moves with its link, not with
/// the unchanged blocks it skips.
#[derive(Debug, Default)]
pub struct Estimator {
    recent: std::collections::VecDeque<Sample>,
    shown: u64,
}

impl Estimator {
    pub fn update(&mut self, now: Sample) -> Estimate {
        self.recent.push_back(now);
        while self.recent.len() > 2 && now.at - self.recent[1].at > RATE_WINDOW.as_secs_f64() {
            self.recent.pop_front();
        }
        let first = self.recent[0];
        let span = (now.at - first.at).max(1e-3);
        let rate_of = |a: u64, b: u64| b.saturating_sub(a) as f64 / span;
        let (read_rate, store_rate) = (
            rate_of(first.read, now.read),
            rate_of(first.stored, now.stored),
        );
        let read_left = now.to_read.saturating_sub(now.read) as f64;
        let time_left = |left: f64, rate: f64| {
            if left <= 0.0 {
                Some(0.0)
            } else if rate > 0.0 {
                Some(left / rate)
            } else {
                None
            }
        };
        let reading = time_left(read_left, read_rate);
        let sending = match now.wire_left() {
            Some(left) => time_left(left, store_rate),
            // Nothing changed settled yet: nothing known to send, unless blocks changed.
            None if now.changed == 0 => Some(0.0),
            None => None,
        };
        let left = match (reading, sending) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let percent = match left {
            Some(left) if now.to_read > 0 => (100.0 * now.at / (now.at + left)) as u64,
            _ => 0,
        };
        self.shown = self.shown.max(percent.min(99));
        Estimate {
            percent: self.shown,
            eta_secs: left.map(|s| (s.ceil() as u64).max(1)),
            rate: store_rate,
        }
    }
}

/// Reports `progress` until finished or dropped.
#[derive(Debug)]
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
    /// Held while a line or the bar is drawn; `true` once the end was reported, after
    /// which nothing more is drawn.
    ended: Arc<std::sync::Mutex<bool>>,
    progress: Arc<Progress>,
    total: u64,
}

impl Reporter {
    /// Reports progress against `total`, the bytes the manual counts (the differential
    /// disk's data), known from `progress` once reading begins; each line's figures go
    /// to `figures` too.
    pub fn start(
        progress: Arc<Progress>,
        total: u64,
        lang: Lang,
        figures: Arc<JobFigures>,
    ) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(100);
            bar.set_style(
                ProgressStyle::with_template("{wide_bar} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let ended = Arc::new(std::sync::Mutex::new(false));
        let (shown, lock, counters) = (bar.clone(), ended.clone(), progress.clone());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut estimator = Estimator::default();
            // No line yet: the first waits for the total the manual counts (known once
            // reading begins), so that every line names the same total.
            let mut last_line: Option<(Instant, u64)> = None;
            loop {
                tokio::time::sleep(if shown.is_some() { BAR_INTERVAL } else { TICK }).await;
                let now = Instant::now();
                let sample = Sample::of(&progress, (now - start).as_secs_f64());
                let to_read = sample.to_read;
                let estimate = estimator.update(sample);
                tracing::trace!(?sample, ?estimate, "progress");
                let total = if to_read > 0 { to_read } else { total };
                figures.set(Figures {
                    percent: estimate.percent,
                    total,
                    eta_secs: estimate.eta_secs,
                    rate: estimate.rate as u64,
                });
                let line = format!(
                    "{} {}",
                    lang.percent(
                        estimate.percent,
                        &mb(total * estimate.percent / 100),
                        &mb(total)
                    ),
                    lang.rate_eta(
                        &format!("{:.1}", estimate.rate / 1e6),
                        &estimate.eta_secs.map_or_else(|| "-".to_owned(), eta_text),
                    )
                );
                let ended = lock.lock().unwrap_or_else(|e| e.into_inner());
                if *ended {
                    return;
                }
                match &shown {
                    Some(bar) => {
                        bar.set_position(estimate.percent);
                        bar.set_message(line);
                    }
                    None => {
                        let due = match last_line {
                            None => to_read > 0 || now - start >= PLAIN_INTERVAL,
                            Some((at, percent)) => {
                                now - at >= PLAIN_INTERVAL || estimate.percent / 10 > percent / 10
                            }
                        };
                        if due {
                            crate::say!("{line}");
                            last_line = Some((now, estimate.percent));
                        }
                    }
                }
            }
        });
        Self {
            task,
            bar,
            ended,
            progress: counters,
            total,
        }
    }

    /// Stops reporting; prints the final 100% line, after which nothing is drawn.
    pub fn finish(self, lang: Lang) {
        let total = match self.progress.bytes_to_read.load(Ordering::Relaxed) {
            0 => self.total,
            to_read => to_read,
        };
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        *ended = true;
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        crate::say!("{}", lang.percent(100, &mb(total), &mb(total)));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let first = !*ended;
        *ended = true;
        self.task.abort();
        if let Some(bar) = &self.bar
            && first
        {
            // The bar stays as it was; what follows starts on its own line.
            bar.abandon();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megabytes_read_like_the_manual() {
        assert_eq!(mb(0), "0");
        assert_eq!(mb(468_000_000), "468");
        assert_eq!(mb(1_265_000_000), "1,265");
        assert_eq!(mb(12_345_678_000_000), "12,345,678");
        assert_eq!(eta_text(75), "1m15s");
        assert_eq!(eta_text(3 * 3600 + 120), "3h02m");
    }

    /// A finish at `link` wire bytes/s: reading runs at 100 MB/s ahead of a link that
    /// carries half-size chunks of the 10% of blocks that changed. Returns each second's
    /// (time, sample) up to the end.
    fn rate_limited_finish(to_read: f64, link: f64) -> Vec<Sample> {
        let (density, ratio, dt) = (0.1, 0.5, 0.25);
        let (mut t, mut read, mut settled, mut sent) = (0.0, 0.0f64, 0.0f64, 0.0f64);
        let mut samples = Vec::new();
        loop {
            t += dt;
            read = (read + 100e6 * dt).min(to_read);
            let changed = read * density;
            // What was handed over is stored a step later.
            let stored = sent;
            let handed = (link * dt).min((changed - settled) * ratio);
            sent += handed;
            settled += handed / ratio;
            samples.push(Sample {
                at: t,
                read: read as u64,
                to_read: to_read as u64,
                changed: changed as u64,
                answered: changed as u64,
                needed: changed as u64,
                compressed: settled as u64,
                sent: sent as u64,
                stored: stored as u64,
            });
            if read >= to_read && stored >= to_read * density * ratio - 1.0 {
                return samples;
            }
            assert!(t < 1e5, "the simulated finish ends");
        }
    }

    #[test]
    fn a_rate_limited_finish_shows_the_share_of_its_time_gone() {
        for (to_read, link) in [(200e6, 1e6), (2e9, 5e6), (50e6, 0.25e6)] {
            let samples = rate_limited_finish(to_read, link);
            let end = samples.last().expect("samples").at;
            let mut estimator = Estimator::default();
            let mut last = 0;
            for sample in &samples {
                let estimate = estimator.update(*sample);
                let gone = 100.0 * sample.at / end;
                if sample.at >= 2.0 {
                    assert!(
                        (estimate.percent as f64 - gone).abs() <= 15.0,
                        "{to_read} B at {link} B/s, {:.2} s: {}% shown, {gone:.0}% of the time gone",
                        sample.at,
                        estimate.percent
                    );
                }
                assert!(estimate.percent >= last && estimate.percent <= 99);
                last = estimate.percent;
                if sample.stored < sample.sent || sample.read < sample.to_read {
                    assert_ne!(estimate.eta_secs, Some(0), "time left while bytes remain");
                }
            }
        }
    }
}
