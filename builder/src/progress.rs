//! Progress on a terminal: one live bar per blob being pulled (bytes, rate, ETA) and a spinner per stage, drawn by
//! indicatif. tracing's lines go through [`Stderr`], which lifts the bars while a line is written, so the two never
//! clobber each other. Off a terminal, with `-q` or with JSON messages, [`enable`] is never called: nothing is
//! drawn, every call here is a no-op, and stderr carries the plain log lines alone.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// How often a spinner moves, and a bar is redrawn when no bytes arrive.
const TICK: Duration = Duration::from_millis(120);

/// Turns the bars on, drawn on stderr. Called once, by the command line, only when stderr is a terminal.
pub fn enable() {
    let _ = MULTI.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
}

/// Whether bars are drawn.
pub fn enabled() -> bool {
    MULTI.get().is_some()
}

/// Runs `f` with the bars lifted off the terminal (for anything else written to it), and draws them again after.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match MULTI.get() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// tracing's writer: stderr, below the bars.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        suspend(|| io::stderr().write_all(buf)).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

/// One live line; cleared when dropped (the stage's own log line says how it ended).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A transfer of `total` bytes: `label  [=====>    ]  12.0 MiB/40.0 MiB  3.1 MiB/s  9s`.
    pub fn bytes(label: &str, total: u64) -> Bar {
        Bar::add(
            ProgressBar::new(total),
            "{spinner:.green} {msg:<36} [{bar:30.cyan/blue}] {decimal_bytes:>10}/{decimal_total_bytes:<10} {decimal_bytes_per_sec:>12} {eta:>4}",
            label,
        )
    }

    /// A stage of unknown length: `label  12s`.
    pub fn stage(label: &str) -> Bar {
        Bar::add(
            ProgressBar::no_length(),
            "{spinner:.green} {msg} {elapsed:.dim}",
            label,
        )
    }

    fn add(bar: ProgressBar, template: &str, label: &str) -> Bar {
        let Some(multi) = MULTI.get() else {
            return Bar(None);
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = multi.add(bar.with_style(style).with_message(label.to_string()));
        bar.enable_steady_tick(TICK);
        Bar(Some(bar))
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Back to zero: a transfer that starts over.
    pub fn reset(&self) {
        if let Some(b) = &self.0 {
            b.set_position(0);
            b.reset_eta();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
            if let Some(m) = MULTI.get() {
                m.remove(&b);
            }
        }
    }
}

/// Runs one stage of the build under a spinner, and logs its line (`squashfs root ms=812`) once it has worked.
pub fn step<T, E>(what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let bar = Bar::stage(what);
    let t = Instant::now();
    let done = f();
    drop(bar);
    if done.is_ok() {
        info!(ms = t.elapsed().as_millis() as u64, "{what}");
    }
    done
}

/// `sha256:0123456789ab`: enough of a digest to tell blobs apart on a line.
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_inert_until_enabled() {
        // Never enabled in unit tests: every call is a no-op and nothing is drawn.
        let b = Bar::bytes("base", 10);
        b.inc(5);
        b.reset();
        assert!(b.0.is_none());
        assert_eq!(suspend(|| 7), 7);
    }

    #[test]
    fn a_short_digest_keeps_its_algorithm_and_12_hex() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short(&d), "sha256:abababababab");
        assert_eq!(short("xyz"), "xyz");
    }
}
