//! Command-line overrides of a workflow's parameters: `--set node.param=value` and
//! `--sweep node.param=v1,v2,…`, parsed by the parameter's kind and checked before anything runs.
use super::workflow::Workflow;
use crate::node::ParamProblem;
use crate::registry::{NodeRegistry, nearest};
use burn::tensor::backend::Backend;

/// Why an override was refused. Each message starts with the argument as given.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OverrideError {
    /// Not of the form `node.param=value`.
    #[error("\"{arg}\": expected NODE.PARAM=VALUE")]
    Syntax {
        /// The argument.
        arg: String,
    },
    /// No node of that id.
    #[error("\"{arg}\": unknown node \"{node}\"{}", .suggestion.as_ref().map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default())]
    UnknownNode {
        /// The argument.
        arg: String,
        /// The node id given.
        node: String,
        /// The nearest node id.
        suggestion: Option<String>,
    },
    /// The node's type is not registered (validation reports it too).
    #[error("\"{arg}\": node \"{node}\" has the unknown type \"{node_type}\"")]
    UnknownType {
        /// The argument.
        arg: String,
        /// The node.
        node: String,
        /// Its type.
        node_type: String,
    },
    /// The node type has no such parameter.
    #[error("\"{arg}\": node \"{node}\" ({node_type}) has no parameter \"{param}\"{}", .suggestion.as_ref().map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default())]
    UnknownParam {
        /// The argument.
        arg: String,
        /// The node.
        node: String,
        /// Its type.
        node_type: String,
        /// The parameter given.
        param: String,
        /// The nearest parameter name.
        suggestion: Option<String>,
    },
    /// The value does not fit the parameter.
    #[error("\"{arg}\": parameter \"{param}\" of node \"{node}\": {problem}")]
    BadValue {
        /// The argument.
        arg: String,
        /// The node.
        node: String,
        /// The parameter.
        param: String,
        /// How it does not fit.
        problem: Box<ParamProblem>,
    },
}

/// One `node.param=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The node id.
    pub node: String,
    /// The parameter.
    pub param: String,
    /// The value as typed (parsed by the parameter's kind when applied).
    pub value: String,
}

fn split_target(arg: &str) -> Result<(String, String, &str), OverrideError> {
    let syntax = || OverrideError::Syntax {
        arg: arg.to_owned(),
    };
    let (target, value) = arg.split_once('=').ok_or_else(syntax)?;
    let (node, param) = target.trim().split_once('.').ok_or_else(syntax)?;
    if node.is_empty() || param.is_empty() {
        return Err(syntax());
    }
    Ok((node.to_owned(), param.to_owned(), value))
}

impl Assignment {
    /// Parses `node.param=value`.
    pub fn parse(arg: &str) -> Result<Self, OverrideError> {
        let (node, param, value) = split_target(arg)?;
        Ok(Assignment {
            node,
            param,
            value: value.to_owned(),
        })
    }

    /// How the assignment reads on the command line.
    pub fn to_arg(&self) -> String {
        format!("{}.{}={}", self.node, self.param, self.value)
    }
}

/// One `--sweep node.param=v1,v2,…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// The node id.
    pub node: String,
    /// The parameter.
    pub param: String,
    /// The values, in order (split at commas, so string values cannot contain one).
    pub values: Vec<String>,
}

impl Sweep {
    /// Parses `node.param=v1,v2,…`.
    pub fn parse(arg: &str) -> Result<Self, OverrideError> {
        let (node, param, values) = split_target(arg)?;
        let values: Vec<String> = values.split(',').map(str::to_owned).collect();
        Ok(Sweep {
            node,
            param,
            values,
        })
    }

    /// Every combination of the sweeps' values (the first sweep varies slowest), as assignments.
    /// No sweeps give one empty combination: a single run.
    pub fn combinations(sweeps: &[Sweep]) -> Vec<Vec<Assignment>> {
        let mut combinations = vec![Vec::new()];
        for sweep in sweeps {
            combinations = combinations
                .into_iter()
                .flat_map(|prefix| {
                    sweep.values.iter().map(move |value| {
                        let mut next = prefix.clone();
                        next.push(Assignment {
                            node: sweep.node.clone(),
                            param: sweep.param.clone(),
                            value: value.clone(),
                        });
                        next
                    })
                })
                .collect();
        }
        combinations
    }
}

impl Workflow {
    /// Sets a parameter from the command line: the value is parsed by the parameter's kind and
    /// checked; a link that fed the parameter is replaced by the literal.
    pub fn apply<B: Backend>(
        &mut self,
        registry: &NodeRegistry<B>,
        assignment: &Assignment,
    ) -> Result<(), OverrideError> {
        let arg = assignment.to_arg();
        let Some(entry) = self.file.nodes.get_mut(&assignment.node) else {
            let ids = self.file.nodes.0.iter().map(|(id, _)| id.as_str());
            let suggestion = nearest(&assignment.node, ids).map(str::to_owned);
            return Err(OverrideError::UnknownNode {
                arg,
                node: assignment.node.clone(),
                suggestion,
            });
        };
        let Some(registered) = registry.get(&entry.node_type) else {
            return Err(OverrideError::UnknownType {
                arg,
                node: assignment.node.clone(),
                node_type: entry.node_type.clone(),
            });
        };
        let schema = &registered.schema;
        let Some(spec) = schema.param_spec(&assignment.param) else {
            let suggestion = nearest(
                &assignment.param,
                schema.params.iter().map(|p| p.name.as_str()),
            )
            .map(str::to_owned);
            return Err(OverrideError::UnknownParam {
                arg,
                node: assignment.node.clone(),
                node_type: entry.node_type.clone(),
                param: assignment.param.clone(),
                suggestion,
            });
        };
        let value =
            spec.parse_arg(&assignment.value)
                .map_err(|problem| OverrideError::BadValue {
                    arg,
                    node: assignment.node.clone(),
                    param: assignment.param.clone(),
                    problem: Box::new(problem),
                })?;
        entry.params.remove(&assignment.param);
        entry.params.set(&assignment.param, value);
        entry.inputs.remove(&assignment.param);
        Ok(())
    }
}
