//! Events: what the executor tells the outside world while it runs (the CLI draws progress bars
//! from them, tests record them).
use std::sync::Mutex;
use std::time::Duration;

/// Something that happened during a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A run began; `planned` nodes are needed by the output nodes.
    RunStarted {
        /// The executor's run counter, from 1.
        run: u64,
        /// How many nodes the run needs (each either runs or comes from the cache).
        planned: usize,
    },
    /// A node's result came from the cache; it did not run.
    NodeCached {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
    },
    /// A node began running.
    NodeStarted {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
    },
    /// A running node finished step `step` of `total`.
    Progress {
        /// The node's id.
        node_id: String,
        /// Steps done.
        step: u64,
        /// Steps in all.
        total: u64,
    },
    /// A node wrote a file (a sink's result).
    FileWritten {
        /// The node's id.
        node_id: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// A node finished.
    NodeFinished {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
        /// How long it ran.
        duration: Duration,
    },
    /// A node failed; the run stops.
    NodeFailed {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
        /// The error, as one line.
        error: String,
    },
    /// The run stopped because it was cancelled; `node_id` is the node that was running, if any.
    Cancelled {
        /// The node that was running or next.
        node_id: Option<String>,
    },
    /// The run finished.
    RunFinished {
        /// The executor's run counter.
        run: u64,
        /// Wall time of the run.
        duration: Duration,
    },
}

/// Receives events. Called on the executor's thread, in order.
pub trait EventSink: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// Ignores every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _event: &Event) {}
}

/// Keeps every event, for tests and tools.
#[derive(Default)]
pub struct EventLog(Mutex<Vec<Event>>);

impl EventLog {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for EventLog {
    fn event(&self, event: &Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event.clone());
        }
    }
}
