//! Validation diagnostics: each problem of a workflow with its file, line, column and node id, and
//! the report that carries all of them at once.
use super::locate::Pos;
use crate::node::{ParamProblem, PortType};
use std::fmt;
use std::path::PathBuf;

/// One problem, where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The workflow file.
    pub file: Option<PathBuf>,
    /// Where in it.
    pub pos: Option<Pos>,
    /// The node it concerns.
    pub node: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl Diagnostic {
    /// The message without the file name: `12:9: node "sampler": …` (what test cases compare).
    pub fn without_file(&self) -> String {
        let mut text = String::new();
        if let Some(pos) = self.pos {
            text.push_str(&format!("{pos}: "));
        }
        if let Some(node) = &self.node {
            text.push_str(&format!("node \"{node}\": "));
        }
        text.push_str(&self.problem.to_string());
        text
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.pos) {
            (Some(file), Some(_)) => write!(f, "{}:", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => {}
        }
        f.write_str(&self.without_file())
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default()
}

/// What can be wrong with a workflow.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Not RON, or not the shape of a workflow.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A format version this weft does not read.
    #[error("unsupported workflow version {found} (this weft reads version {supported})")]
    Version {
        /// The file's version.
        found: u32,
        /// The version this weft reads.
        supported: u32,
    },
    /// A node id that links could not name.
    #[error("invalid node id: use letters, digits, '_' and '-'")]
    InvalidNodeId,
    /// Two nodes with one id.
    #[error("duplicate node id (the first is at {first})")]
    DuplicateNode {
        /// Where the first one is.
        first: String,
    },
    /// A type no plugin registered.
    #[error("unknown node type \"{name}\"{}", did_you_mean(.suggestion))]
    UnknownNodeType {
        /// The type given.
        name: String,
        /// The nearest registered name.
        suggestion: Option<String>,
    },
    /// A parameter the node type does not have.
    #[error("unknown parameter \"{name}\"{hint}")]
    UnknownParam {
        /// The name given.
        name: String,
        /// A suggestion, or a note that the name is an input port.
        hint: String,
    },
    /// A link to a port the node type does not have.
    #[error("unknown input \"{name}\"{hint}")]
    UnknownInput {
        /// The name given.
        name: String,
        /// A suggestion.
        hint: String,
    },
    /// A parameter given twice.
    #[error("parameter \"{0}\" is given more than once")]
    DuplicateParam(String),
    /// An input linked twice.
    #[error("input \"{0}\" is linked more than once")]
    DuplicateInput(String),
    /// A parameter given both as a literal and as a link.
    #[error("parameter \"{0}\" is given both in `params` and in `inputs`")]
    ParamAndLink(String),
    /// A required parameter without a value.
    #[error("missing parameter \"{name}\" ({kind})")]
    MissingParam {
        /// The parameter.
        name: String,
        /// Its port type, to say what is expected.
        kind: PortType,
    },
    /// A required input without a link.
    #[error("missing input \"{name}\" ({port_type})")]
    MissingInput {
        /// The input port.
        name: String,
        /// Its type.
        port_type: PortType,
    },
    /// A literal that does not fit its parameter.
    #[error("parameter \"{name}\": {problem}")]
    BadParam {
        /// The parameter.
        name: String,
        /// How it does not fit.
        problem: ParamProblem,
    },
    /// A link that is not `node` or `node.OUTPUT`.
    #[error("input \"{input}\": invalid link \"{link}\": write \"node\" or \"node.OUTPUT\"")]
    BadLink {
        /// The input.
        input: String,
        /// The text given.
        link: String,
    },
    /// A link to a node that does not exist.
    #[error("input \"{input}\": link to unknown node \"{target}\"{}", did_you_mean(.suggestion))]
    LinkToUnknownNode {
        /// The input.
        input: String,
        /// The node id given.
        target: String,
        /// The nearest node id.
        suggestion: Option<String>,
    },
    /// A link to an output the node does not have (or to a node with several, without naming one).
    #[error("input \"{input}\": node \"{target}\" ({target_type}) {reason}")]
    LinkToUnknownOutput {
        /// The input.
        input: String,
        /// The linked node.
        target: String,
        /// Its type.
        target_type: String,
        /// "has no output \"X\"; its outputs: …" and the like.
        reason: String,
    },
    /// A link between ports of different types.
    #[error("input \"{input}\" expects {expected}, but \"{link}\" is {found}")]
    TypeMismatch {
        /// The input.
        input: String,
        /// The link as written.
        link: String,
        /// The input's type.
        expected: PortType,
        /// The output's type.
        found: PortType,
    },
    /// The parameters pass the schema but not the node's typed `Params` (a plugin bug).
    #[error("parameters do not fit the node type's Params: {0}")]
    TypedParams(String),
    /// Nodes that depend on themselves.
    #[error("cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// Nothing to run.
    #[error(
        "the workflow has no output node (a sink such as SaveImage), so running it would do nothing"
    )]
    NoOutputNode,
}

/// Every problem of a workflow, in source order. Displays one per line.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ValidationReport {
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
}

impl ValidationReport {
    /// A report of `diagnostics`, sorted by position.
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by(|a, b| (a.pos, a.node.as_deref()).cmp(&(b.pos, b.node.as_deref())));
        ValidationReport { diagnostics }
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
