//! Progress display for `weft run`: renders executor events as indicatif bars on a terminal (plain
//! lines otherwise), and routes tracing logs around the bars so the two never garble each other.
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use weft_engine::exec::{Event, EventSink};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The tracing writer: stderr, suspended around the progress bars while they are drawn.
pub(super) fn log_writer() -> LogWriter {
    LogWriter
}

pub(super) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[derive(Default)]
struct State {
    bars: HashMap<String, ProgressBar>,
    files: Vec<PathBuf>,
}

/// Draws a run's events: one bar per running node, one line per finished or cached node.
pub(super) struct Renderer {
    bars: Option<&'static MultiProgress>,
    state: Mutex<State>,
}

impl Renderer {
    pub(super) fn new() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        });
        Renderer {
            bars,
            state: Mutex::new(State::default()),
        }
    }

    /// The files written since the last call.
    pub(super) fn take_files(&self) -> Vec<PathBuf> {
        self.state
            .lock()
            .map(|mut s| std::mem::take(&mut s.files))
            .unwrap_or_default()
    }

    fn line(&self, text: String) {
        match self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

fn seconds(duration: &Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

impl EventSink for Renderer {
    fn event(&self, event: &Event) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            Event::RunStarted { .. } | Event::RunFinished { .. } => {}
            Event::NodeStarted { node_id, node_type } => match self.bars {
                Some(bars) => {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("{node_id} ({node_type})"));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    state.bars.insert(node_id.clone(), bar);
                }
                None => eprintln!("> {node_id} ({node_type})"),
            },
            Event::Progress {
                node_id,
                step,
                total,
            } => match state.bars.get(node_id) {
                Some(bar) => {
                    if bar.length() != Some(*total) {
                        let style = ProgressStyle::with_template(
                            "{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                        bar.set_style(style.progress_chars("=> "));
                        bar.set_length(*total);
                    }
                    bar.set_position(*step);
                }
                None if self.bars.is_none() => {
                    // Plain output: the first step, then about ten lines per node, however many steps.
                    let tenth = (*total / 10).max(1);
                    if *step == 1 || *step == *total || *step % tenth == 0 {
                        eprintln!("  {node_id}: {step}/{total}");
                    }
                }
                None => {}
            },
            Event::NodeCached { node_id, node_type } => {
                self.line(format!("  {node_id} ({node_type}) cached"))
            }
            Event::NodeFinished {
                node_id,
                node_type,
                duration,
            } => {
                if let Some(bar) = state.bars.remove(node_id) {
                    bar.finish_and_clear();
                }
                self.line(format!(
                    "  {node_id} ({node_type}) ran in {}",
                    seconds(duration)
                ));
            }
            Event::NodeFailed {
                node_id,
                node_type,
                error,
            } => {
                if let Some(bar) = state.bars.remove(node_id) {
                    bar.abandon();
                }
                self.line(format!("  {node_id} ({node_type}) failed: {error}"));
            }
            Event::Cancelled { node_id } => {
                for (_, bar) in state.bars.drain() {
                    bar.abandon();
                }
                let at = node_id
                    .as_ref()
                    .map(|n| format!(" at {n}"))
                    .unwrap_or_default();
                self.line(format!("  cancelled{at}"));
            }
            Event::FileWritten { path, .. } => state.files.push(path.clone()),
        }
    }
}
