//! [`NodeError`]: why a node failed, as the node says it (the executor adds the node id and type).
use super::value::Value;
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};

/// Why a node failed. The executor wraps it with the node's id and type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// An input is missing or holds the wrong kind of value.
    #[error("input \"{port}\": {reason}")]
    Input {
        /// The input port.
        port: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The parameters do not fit the node's `Params` struct.
    #[error("parameters: {0}")]
    Params(String),
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The user asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// Anything else, said in words.
    #[error("{0}")]
    Message(String),
    /// An error from a library the node uses.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl NodeError {
    /// An error said in words.
    pub fn msg(message: impl Into<String>) -> Self {
        NodeError::Message(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Wraps a library's error.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        NodeError::Other(Box::new(error))
    }

    pub(crate) fn wrong_input<B: Backend>(port: &str, expected: &str, found: &Value<B>) -> Self {
        NodeError::Input {
            port: port.to_owned(),
            reason: format!("expected {expected}, found {}", found.port_type()),
        }
    }
}
