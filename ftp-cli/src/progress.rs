//! Progress bars on stderr, drawn only for a person watching a terminal.

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

/// Bars for a many-file command: files done, bytes, rate and ETA overall, and a line for the
/// file in flight. Hidden when `visible` is false.
pub struct BatchBars {
    multi: MultiProgress,
    overall: ProgressBar,
    file: ProgressBar,
    /// Files finished (well or not), and how many in all.
    files: (usize, usize),
    /// Bytes of the files finished, so the overall bar can follow the current file exactly
    /// even when a retry starts it again.
    base: u64,
}

impl BatchBars {
    pub fn new(visible: bool, files: usize, bytes: u64) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(bytes));
        overall.set_style(style(OVERALL_TEMPLATE));
        let file = multi.add(ProgressBar::new(0));
        file.set_style(style(FILE_TEMPLATE));
        let bars = BatchBars {
            multi,
            overall,
            file,
            files: (0, files),
            base: 0,
        };
        bars.show_count();
        bars
    }

    fn show_count(&self) {
        self.overall
            .set_prefix(format!("{}/{}", self.files.0, self.files.1));
    }

    /// A file ended; `size` is what it counts for overall.
    pub fn file_done(&mut self, size: u64) {
        self.files.0 += 1;
        self.base += size;
        self.overall.set_position(self.base);
        self.show_count();
    }

    /// Prints without tearing the bars.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    pub fn finish(&self) {
        self.file.finish_and_clear();
        self.overall.finish_and_clear();
    }
}

impl Progress for BatchBars {
    fn start(&mut self, name: &str, total: u64, done: u64) {
        self.file.set_length(total);
        self.file.set_position(done);
        self.file.set_message(name.to_owned());
        self.overall.set_position(self.base + done);
    }

    fn advance(&mut self, n: u64) {
        self.file.inc(n);
        self.overall.inc(n);
    }

    fn finish(&mut self) {}
}
