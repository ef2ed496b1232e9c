//! A progress bar with events/s and ETA on a terminal; plain periodic lines otherwise (logs,
//! CI), so long runs always say how far they are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    label: String,
    total: u64,
    started: Instant,
    last_line: Mutex<Instant>,
    plain: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64, show: bool) -> Self {
        let bar = ProgressBar::new(total);
        let plain = !show || bar.is_hidden();
        if !show {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        Self {
            bar,
            label: label.to_string(),
            total,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            plain: plain && show,
        }
    }

    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
        if self.plain
            && let Ok(mut last) = self.last_line.lock()
            && last.elapsed() >= Duration::from_secs(5)
        {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 {
                self.total.saturating_sub(done) as f64 / rate
            } else {
                f64::INFINITY
            };
            eprintln!(
                "{}: {done}/{} events, {rate:.0}/s, ETA {eta:.0} s",
                self.label, self.total
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
