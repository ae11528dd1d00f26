//! A byte progress bar on a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use replication::CopyProgress;

/// Shows bytes copied for one image on stderr.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar when stderr is a terminal and output is not JSON.
    pub fn for_terminal(label: &str, enabled: bool) -> Option<Arc<Bar>> {
        if !enabled || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_string());
        Some(Arc::new(Bar(bar)))
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl CopyProgress for Bar {
    fn planned(&self, _blobs: usize, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advanced(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
