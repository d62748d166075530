//! Progress of a long analysis on stderr: an `indicatif` bar (bytes read of the total,
//! packets, flows, hellos, rate) when stderr is a terminal, a plain line every few seconds
//! when it is not (a log file, CI), nothing with `--quiet`. Warnings (damaged captures)
//! go through here so that they never tear the bar.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How the bar is refreshed at most.
const BAR_REFRESH: Duration = Duration::from_millis(100);

/// What has been done so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Bytes of capture file read.
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    pub hellos: u64,
    pub connections: u64,
}

enum Show {
    Bar(ProgressBar),
    Lines,
    Quiet,
}

pub struct Progress {
    show: Show,
    total: Option<u64>,
    started: Instant,
    last: Cell<Instant>,
    interval: Duration,
}

/// `1.25 GB`, `310.4 MB`, `12.0 kB`, `17 B` (decimal units).
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
    }
}

impl Progress {
    /// `total`: bytes of all input files, when known (not for standard input).
    pub fn new(quiet: bool, total: Option<u64>, interval: Duration) -> Progress {
        let show = if quiet {
            Show::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{spinner} [{elapsed_precise}] [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} \
                 ({decimal_bytes_per_sec}, {eta}) {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {decimal_bytes} ({decimal_bytes_per_sec}) {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            Show::Bar(bar)
        } else {
            Show::Lines
        };
        let now = Instant::now();
        if let Show::Bar(bar) = &show {
            bar.enable_steady_tick(BAR_REFRESH);
        }
        Progress {
            show,
            total,
            started: now,
            last: Cell::new(now),
            interval,
        }
    }

    fn counts_text(c: &Counts) -> String {
        format!(
            "{} packets, {} flows, {} hellos, {} connections",
            c.packets, c.flows, c.hellos, c.connections
        )
    }

    fn rate(&self, c: &Counts) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        format!("{}/s", human_bytes(c.bytes as f64 / secs))
    }

    /// Called often; redraws or prints only when it is time.
    pub fn tick(&self, c: &Counts) {
        let due = match self.show {
            Show::Quiet => return,
            Show::Bar(_) => BAR_REFRESH,
            Show::Lines => self.interval,
        };
        if self.last.get().elapsed() >= due {
            self.show(c);
        }
    }

    /// Redraws or prints now (at the end of each file).
    pub fn show(&self, c: &Counts) {
        self.last.set(Instant::now());
        match &self.show {
            Show::Bar(bar) => {
                bar.set_position(c.bytes);
                bar.set_message(Self::counts_text(c));
            }
            Show::Lines => {
                let of = match self.total {
                    Some(t) if t > 0 => format!(
                        " of {} ({:.0}%)",
                        human_bytes(t as f64),
                        c.bytes as f64 * 100.0 / t as f64
                    ),
                    _ => String::new(),
                };
                eprintln!(
                    "tlspeek: analyze: {}{of}, {}, {}",
                    human_bytes(c.bytes as f64),
                    Self::counts_text(c),
                    self.rate(c)
                );
            }
            Show::Quiet => {}
        }
    }

    /// A warning or error line (printed even with `--quiet`).
    pub fn warn(&self, line: &str) {
        match &self.show {
            Show::Bar(bar) => bar.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }

    /// Clears the bar and prints the summary line (not with `--quiet`).
    pub fn finish(&self, c: &Counts, extra: &str) {
        if let Show::Bar(bar) = &self.show {
            bar.finish_and_clear();
        }
        if matches!(self.show, Show::Quiet) {
            return;
        }
        eprintln!(
            "tlspeek: analyzed {} in {:.2} s ({}): {}{extra}",
            human_bytes(c.bytes as f64),
            self.started.elapsed().as_secs_f64(),
            self.rate(c),
            Self::counts_text(c),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(17.0), "17 B");
        assert_eq!(human_bytes(12_000.0), "12.0 kB");
        assert_eq!(human_bytes(1_260_000_000.0), "1.3 GB");
    }
}
