//! Progress bars on stderr, drawn only for a person watching a terminal.

use std::cell::Cell;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Progress;

const FILE_TEMPLATE: &str =
    "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
const OVERALL_TEMPLATE: &str =
    "{prefix:>9} files [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
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
        bar.set_style(style(FILE_TEMPLATE));
        bar.set_message(name.to_owned());
        bar.set_position(done);
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
    slots: Vec<ProgressBar>,
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
        overall.set_style(style(OVERALL_TEMPLATE));
        let slots = (0..slots)
            .map(|_| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style(FILE_TEMPLATE));
                bar
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
            file: self.slots[i].clone(),
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
        for bar in &self.slots {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// One slot's file bar, feeding the overall bar too.
pub struct SlotProgress {
    file: ProgressBar,
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
        self.file.set_message(name.to_owned());
        self.recount(done);
    }

    fn advance(&mut self, n: u64) {
        self.file.inc(n);
        self.overall.inc(n);
        self.counted += n;
    }

    fn finish(&mut self) {}
}
