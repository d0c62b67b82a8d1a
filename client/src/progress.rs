//! Upload progress as the manual shows it (`37% complete... (468 MB / 1,265 MB)`) plus
//! rate and ETA: a live bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotate_engine::Progress;
use indicatif::{ProgressBar, ProgressStyle};

use crate::i18n::Lang;

/// How often a plain progress line is printed when stdout is not a terminal.
const PLAIN_INTERVAL: Duration = Duration::from_secs(3);
/// How often the live bar is refreshed.
const BAR_INTERVAL: Duration = Duration::from_millis(200);

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

/// Reports `progress` until dropped.
#[derive(Debug)]
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub fn start(progress: Arc<Progress>, total: u64, lang: Lang) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{wide_bar} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = std::collections::VecDeque::from([(start, 0u64)]);
            let interval = if shown.is_some() {
                BAR_INTERVAL
            } else {
                PLAIN_INTERVAL
            };
            println!("{}", lang.percent(0, "0", &mb(total)));
            loop {
                tokio::time::sleep(interval).await;
                // Sent chunks count once the server confirms it stored them.
                let done = progress.settled().min(total);
                let now = Instant::now();
                samples.push_back((now, done));
                while samples.len() > 2 && now - samples[0].0 > Duration::from_secs(10) {
                    samples.pop_front();
                }
                let (t0, d0) = samples[0];
                let rate = (done - d0) as f64 / (now - t0).as_secs_f64().max(0.001);
                let eta = if rate > 0.0 {
                    ((total - done) as f64 / rate) as u64
                } else {
                    0
                };
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                let line = format!(
                    "{} {}",
                    lang.percent(pct, &mb(done), &mb(total)),
                    lang.rate_eta(&format!("{:.1}", rate / 1e6), &eta_text(eta))
                );
                match &shown {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(line);
                    }
                    None => println!("{line}"),
                }
            }
        });
        Self { task, bar }
    }

    /// Stops reporting; prints the final 100% line.
    pub fn finish(self, total: u64, lang: Lang) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        println!("{}", lang.percent(100, &mb(total), &mb(total)));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.abandon();
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
}
