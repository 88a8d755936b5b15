//! The workflow file format (RON), version 1: a DTO of its own, separate from the runtime
//! [`Graph`](super::Graph), so the file format can change without the executor noticing.
//!
//! ```ron
//! // A comment.
//! Workflow(
//!     version: 1,
//!     description: "Invert a grey image and save it",   // optional
//!     nodes: {
//!         "grey":   (type: "EmptyImage", params: { "width": 64, "height": 64, "color": 8421504 }),
//!         "invert": (type: "ImageInvert", inputs: { "image": "grey" }),
//!         "save":   (type: "SaveImage", inputs: { "images": "invert.IMAGE" }, params: { "filename_prefix": "inverted" }),
//!     },
//! )
//! ```
//!
//! Node ids are map keys (letters, digits, `_`, `-`). `params` holds literals; `inputs` holds links,
//! `"node.OUTPUT"` or just `"node"` when that node has one output. An input may also feed a
//! parameter (ComfyUI's "convert widget to input"): `inputs: { "seed": "seed.INT" }`. The struct
//! name `Workflow` is optional; ron's `implicit_some` is on, so optional fields take plain values.
use super::diagnostic::{Diagnostic, Problem, ValidationReport};
use super::locate::{Locator, Pos};
use crate::node::ParamValue;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The format version this weft reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A workflow file, as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Workflow")]
pub struct WorkflowFile {
    /// The format version; must be [`FORMAT_VERSION`].
    pub version: u32,
    /// A line for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The nodes by id, in file order.
    pub nodes: OrderedMap<NodeEntry>,
}

/// One node of a workflow file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node type's registered name.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Literal parameters by name.
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub params: OrderedMap<ParamValue>,
    /// Links by input (or parameter) name: `"node.OUTPUT"` or `"node"`.
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub inputs: OrderedMap<String>,
}

/// A map that keeps file order and duplicate keys (so validation can report them; serde maps
/// silently keep the last).
#[derive(Clone, Debug, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first value under `key`, mutable.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` (the first entry of it, or a new one at the end).
    pub fn set(&mut self, key: &str, value: V) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Removes every entry under `key`.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The entries in order, with how many times each key was seen before (0 for the first).
    pub fn iter_with_occurrence(&self) -> impl Iterator<Item = (&str, &V, usize)> {
        self.0.iter().enumerate().map(|(i, (k, v))| {
            (
                k.as_str(),
                v,
                self.0[..i].iter().filter(|(p, _)| p == k).count(),
            )
        })
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with string keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, V>()? {
                    entries.push((k, v));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A link as written: `"node.OUTPUT"` or `"node"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRef<'a> {
    /// The source node's id.
    pub node: &'a str,
    /// The output's name, if given.
    pub output: Option<&'a str>,
}

impl<'a> LinkRef<'a> {
    /// Splits a link; `None` when it is not of the form `node` or `node.OUTPUT` with a valid id.
    pub fn parse(text: &'a str) -> Option<Self> {
        let (node, output) = match text.split_once('.') {
            Some((node, output)) => (node, Some(output)),
            None => (text, None),
        };
        let output_ok = output
            .is_none_or(|o| !o.is_empty() && !o.contains('.') && !o.contains(char::is_whitespace));
        (is_valid_node_id(node) && output_ok).then_some(LinkRef { node, output })
    }
}

/// Node ids: non-empty, letters, digits, `_` and `-` (a dot would make links ambiguous).
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// A parsed workflow: the DTO plus what is needed to point messages at its source.
#[derive(Clone)]
pub struct Workflow {
    /// The file it came from, for messages.
    pub path: Option<PathBuf>,
    /// The contents.
    pub file: WorkflowFile,
    locator: std::sync::Arc<Locator>,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("path", &self.path)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why a workflow could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid workflow.
    #[error(transparent)]
    Invalid(#[from] ValidationReport),
}

fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
}

impl Workflow {
    /// Parses workflow text; `path` only names the source in messages.
    pub fn parse(source: &str, path: Option<&Path>) -> Result<Self, ValidationReport> {
        let path = path.map(Path::to_owned);
        let file: WorkflowFile = ron_options().from_str(source).map_err(|e| {
            let pos = Pos {
                line: e.span.start.line.max(1),
                col: e.span.start.col.max(1),
            };
            let diagnostic = Diagnostic {
                file: path.clone(),
                pos: Some(pos),
                node: None,
                problem: Problem::Syntax(e.code.to_string()),
            };
            ValidationReport::new(vec![diagnostic])
        })?;
        let workflow = Workflow {
            path,
            file,
            locator: std::sync::Arc::new(Locator::new(source)),
        };
        if workflow.file.version != FORMAT_VERSION {
            let pos = workflow.value_pos(&["version"], 0);
            let problem = Problem::Version {
                found: workflow.file.version,
                supported: FORMAT_VERSION,
            };
            return Err(ValidationReport::new(vec![
                workflow.diagnostic(pos, None, problem),
            ]));
        }
        Ok(workflow)
    }

    /// Reads and parses a workflow file.
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let source = std::fs::read_to_string(path).map_err(|source| WorkflowError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&source, Some(path))?)
    }

    /// A workflow built in code (no source text: messages carry no positions).
    pub fn from_file(file: WorkflowFile) -> Self {
        Workflow {
            path: None,
            file,
            locator: std::sync::Arc::new(Locator::new("")),
        }
    }

    /// The workflow as RON text, in the canonical layout.
    pub fn to_ron(&self) -> String {
        let config = ron::ser::PrettyConfig::new().struct_names(true);
        // Serializing plain strings, numbers and maps cannot fail.
        ron_options()
            .to_string_pretty(&self.file, config)
            .unwrap_or_default()
    }

    /// Where the key at `path` starts (its `nth` occurrence).
    pub(crate) fn key_pos(&self, path: &[&str], nth: usize) -> Option<Pos> {
        self.locator.find_nth(path, nth).map(|(key, _)| key)
    }

    /// Where the value at `path` starts (its `nth` occurrence).
    pub(crate) fn value_pos(&self, path: &[&str], nth: usize) -> Option<Pos> {
        self.locator.find_nth(path, nth).map(|(_, value)| value)
    }

    pub(crate) fn diagnostic(
        &self,
        pos: Option<Pos>,
        node: Option<&str>,
        problem: Problem,
    ) -> Diagnostic {
        Diagnostic {
            file: self.path.clone(),
            pos,
            node: node.map(str::to_owned),
            problem,
        }
    }
}
