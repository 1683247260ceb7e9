//! Progress bars on stderr, drawn only for a person watching a terminal.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressStyle;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState};

use crate::client::Progress;

// Both fit a 60-column terminal: a name of at most [`NAME_WIDTH`] columns, a short bar, and
// a rate and ETA of at most 24 ("1023.99 MiB/s ETA 59m59s").
const FILE_TEMPLATE: &str = "{msg} [{bar:9}] {percent:>3}% {speed}";
const OVERALL_TEMPLATE: &str = "{prefix:>9} files [{bar:9}] {percent:>3}% {speed}";
/// Longest name on a bar, in characters; a longer one loses its middle to an ellipsis.
const NAME_WIDTH: usize = 18;
/// No byte for this long, and the rate says "stalled" instead of a figure from before.
const STALLED: Duration = Duration::from_secs(3);

/// `name` in at most `width` characters: a longer one keeps its start and its end (where the
/// extension is), with an ellipsis between.
pub fn shorten(name: &str, width: usize) -> String {
    let count = name.chars().count();
    if count <= width {
        return name.to_owned();
    }
    let keep = width.saturating_sub(1);
    let tail = keep / 2;
    let head = keep - tail;
    let start: String = name.chars().take(head).collect();
    let end: String = name.chars().skip(count - tail).collect();
    format!("{start}\u{2026}{end}")
}

/// When a bar's bytes last moved: its rate shows nothing before the first byte (rather than
/// "0 B/s ETA 0s") and "stalled" once bytes stop coming.
#[derive(Clone, Debug)]
struct Watch(Arc<Mutex<Moved>>);

#[derive(Debug)]
struct Moved {
    /// The position last seen.
    pos: u64,
    /// When it last changed (or the transfer started).
    at: Instant,
    /// Whether a byte has moved since the transfer started.
    any: bool,
}

impl Watch {
    fn new() -> Watch {
        Watch(Arc::new(Mutex::new(Moved {
            pos: 0,
            at: Instant::now(),
            any: false,
        })))
    }

    /// A transfer (re)starts at `pos`.
    fn start(&self, pos: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m = Moved {
            pos,
            at: Instant::now(),
            any: false,
        };
    }

    /// The `{speed}` of a bar at `state`.
    fn speed(&self, state: &ProgressState, now: Instant) -> String {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.pos() != m.pos {
            m.pos = state.pos();
            m.at = now;
            m.any = true;
        }
        speed(
            m.any,
            now.duration_since(m.at),
            state.per_sec(),
            state.eta(),
        )
    }
}

/// What a bar shows of its rate: nothing before the first byte, `stalled` after [`STALLED`]
/// without one, else the rate and the time left.
fn speed(any: bool, idle: Duration, per_sec: f64, eta: Duration) -> String {
    if !any {
        return String::new();
    }
    if idle >= STALLED {
        return "stalled".to_owned();
    }
    format!(
        "{}/s ETA {}",
        HumanBytes(per_sec as u64),
        short_duration(eta)
    )
}

/// `45s`, `3m04s`, `2h05m`: short, for a bar.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", (s / 3600).min(99), s % 3600 / 60),
    }
}

fn style(template: &str, watch: &Watch) -> ProgressStyle {
    let watch = watch.clone();
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .with_key(
            "speed",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&watch.speed(state, Instant::now()));
            },
        )
        .progress_chars("=> ")
}

/// One indicatif bar per transfer.
#[derive(Default)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn start(&mut self, name: &str, total: u64, done: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let watch = Watch::new();
        bar.set_style(style(FILE_TEMPLATE, &watch));
        bar.set_message(shorten(name, NAME_WIDTH));
        bar.set_position(done);
        watch.start(done);
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Bars for a many-file command: files done, bytes, rate and ETA overall, and a line for each
/// file in flight (one per slot: files moved side by side). Hidden when `visible` is false.
pub struct BatchBars {
    multi: MultiProgress,
    overall: ProgressBar,
    /// Each slot's bar, and when its bytes last moved.
    slots: Vec<(ProgressBar, Watch)>,
    /// Files finished (well or not), and how many in all.
    files: Cell<(usize, usize)>,
}

impl BatchBars {
    pub fn new(visible: bool, files: usize, bytes: u64, slots: usize) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(bytes));
        overall.set_style(style(OVERALL_TEMPLATE, &Watch::new()));
        let slots = (0..slots)
            .map(|_| {
                let bar = multi.add(ProgressBar::new(0));
                let watch = Watch::new();
                bar.set_style(style(FILE_TEMPLATE, &watch));
                (bar, watch)
            })
            .collect();
        let bars = BatchBars {
            multi,
            overall,
            slots,
            files: Cell::new((0, files)),
        };
        bars.show_count();
        bars
    }

    /// The progress of the files moved in slot `i`.
    pub fn slot(&self, i: usize) -> SlotProgress {
        SlotProgress {
            file: self.slots[i].0.clone(),
            watch: self.slots[i].1.clone(),
            overall: self.overall.clone(),
            counted: 0,
        }
    }

    fn show_count(&self) {
        let (done, total) = self.files.get();
        self.overall.set_prefix(format!("{done}/{total}"));
    }

    /// The file in `slot` ended, well or not; overall, it now counts for its whole `size`.
    pub fn file_done(&self, slot: &mut SlotProgress, size: u64) {
        slot.recount(size);
        slot.counted = 0;
        let (done, total) = self.files.get();
        self.files.set((done + 1, total));
        self.show_count();
    }

    /// Prints without tearing the bars.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    pub fn finish(&self) {
        for (bar, _) in &self.slots {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// One slot's file bar, feeding the overall bar too.
pub struct SlotProgress {
    file: ProgressBar,
    /// When the file's bytes last moved.
    watch: Watch,
    overall: ProgressBar,
    /// Bytes of the current file the overall bar counts, so that a retry that starts the
    /// file again (or resumes it) moves the overall bar exactly.
    counted: u64,
}

impl SlotProgress {
    /// Makes the overall bar count `n` bytes of the current file.
    fn recount(&mut self, n: u64) {
        let pos = self.overall.position();
        self.overall
            .set_position(pos.saturating_add(n).saturating_sub(self.counted));
        self.counted = n;
    }
}

impl Progress for SlotProgress {
    fn start(&mut self, name: &str, total: u64, done: u64) {
        self.file.set_length(total);
        self.file.set_position(done);
        self.file.set_message(shorten(name, NAME_WIDTH));
        self.watch.start(done);
        self.recount(done);
    }

    fn advance(&mut self, n: u64) {
        self.file.inc(n);
        self.overall.inc(n);
        self.counted += n;
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_lose_their_middle() {
        assert_eq!(shorten("beach.jpg", 18), "beach.jpg");
        let short = shorten("2024/holidays/very-long-name-of-a-photo.jpg", 18);
        assert_eq!(short, "2024/holi\u{2026}hoto.jpg");
        assert_eq!(short.chars().count(), 18);
        assert_eq!(
            shorten("日本語のとても長いファイル名です.txt", 10)
                .chars()
                .count(),
            10
        );
    }

    #[test]
    fn the_rate_is_blank_before_the_first_byte_and_says_stalled() {
        let eta = Duration::from_secs(184);
        assert_eq!(speed(false, Duration::ZERO, 0.0, Duration::ZERO), "");
        assert_eq!(speed(true, STALLED, 1e6, eta), "stalled");
        assert_eq!(
            speed(true, Duration::ZERO, 1048576.0, eta),
            "1.00 MiB/s ETA 3m04s"
        );
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h05m");
    }

    /// The widest a bar's line gets fits 60 columns.
    #[test]
    fn bars_fit_sixty_columns() {
        let widest_speed = speed(true, Duration::ZERO, 1023.99 * 1048576.0, eta_max());
        let line = format!(
            "{} [{}] 100% {widest_speed}",
            "n".repeat(NAME_WIDTH),
            "=".repeat(9)
        );
        assert!(line.chars().count() <= 60, "{line}");
        let overall = format!(
            "{:>9} files [{}] 100% {widest_speed}",
            "1000/1000",
            "=".repeat(9)
        );
        assert!(overall.chars().count() <= 60, "{overall}");
    }

    fn eta_max() -> Duration {
        Duration::from_secs(3599)
    }
}
