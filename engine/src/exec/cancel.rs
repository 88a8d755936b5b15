//! Cancellation: a shared flag that Ctrl-C sets and that the executor and long-running nodes poll.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cloneable "please stop" flag. Cancelling is one-way: make a new token for a new run.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything watching the token to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
