//! `weft nodes [--json]`: every registered node type with its ports and parameters, and every port type.
use super::CliBackend;
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write as _;
use std::process::ExitCode;
use weft_engine::node::{NodeSchema, ParamKind, ParamSpec};
use weft_engine::registry::{NodeRegistry, Plugins, RegisteredType};

/// Arguments of `weft nodes`.
#[derive(clap::Args, Debug)]
pub(super) struct NodesArgs {
    /// Print JSON (for front ends and scripts).
    #[arg(long)]
    json: bool,
    /// Only node types whose name contains this text (case-insensitive).
    filter: Option<String>,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    plugin: &'a str,
    #[serde(flatten)]
    schema: &'a NodeSchema,
}

#[derive(Serialize)]
struct Listing<'a> {
    nodes: Vec<NodeJson<'a>>,
    types: Vec<&'a RegisteredType>,
}

pub(super) fn run(args: NodesArgs, plugins: &impl Plugins) -> anyhow::Result<ExitCode> {
    let registry =
        NodeRegistry::<CliBackend>::from_plugins(plugins).context("registering node plugins")?;
    let filter = args.filter.as_deref().map(str::to_lowercase);
    let nodes: Vec<NodeJson<'_>> = registry
        .nodes()
        .filter(|n| {
            filter
                .as_ref()
                .is_none_or(|f| n.schema.type_name.to_lowercase().contains(f))
        })
        .map(|n| NodeJson {
            plugin: &n.plugin,
            schema: &n.schema,
        })
        .collect();
    if args.json {
        let listing = Listing {
            nodes,
            types: registry.types().collect(),
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for node in &nodes {
        out.push_str(&describe(node.schema, node.plugin));
    }
    if filter.is_none() {
        out.push_str("Port types:\n");
        for t in registry.types() {
            let _ = write!(out, "  {:<14} ({})", t.port_type.name(), t.plugin);
            if !t.description.is_empty() {
                let _ = write!(out, " {}", t.description);
            }
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn describe(schema: &NodeSchema, plugin: &str) -> String {
    let mut out = String::new();
    let mut flags = Vec::new();
    if schema.output_node {
        flags.push("output node");
    }
    if schema.always_run {
        flags.push("always runs");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(", "))
    };
    let _ = writeln!(
        out,
        "{} ({}, {plugin}){flags}",
        schema.type_name, schema.category
    );
    if !schema.description.is_empty() {
        let _ = writeln!(out, "    {}", schema.description);
    }
    for input in &schema.inputs {
        let optional = if input.optional { " (optional)" } else { "" };
        let _ = writeln!(
            out,
            "    input  {}: {}{optional}",
            input.name, input.port_type
        );
    }
    for param in &schema.params {
        let _ = writeln!(out, "    param  {}", param_line(param));
    }
    for output in &schema.outputs {
        let _ = writeln!(out, "    output {}: {}", output.name, output.port_type);
    }
    out.push('\n');
    out
}

fn param_line(param: &ParamSpec) -> String {
    let kind = match &param.kind {
        ParamKind::Int { min, max } if (*min, *max) == (i64::MIN, i64::MAX) => "INT".to_owned(),
        ParamKind::Int { min, max } => format!("INT {min}..={max}"),
        ParamKind::Float { min, max } if (*min, *max) == (f64::MIN, f64::MAX) => "FLOAT".to_owned(),
        ParamKind::Float { min, max } => format!("FLOAT {min:?}..={max:?}"),
        ParamKind::String { .. } => "STRING".to_owned(),
        ParamKind::Boolean => "BOOLEAN".to_owned(),
        ParamKind::Choice { choices } => choices.join(" | "),
    };
    let default = param
        .default
        .as_ref()
        .map_or_else(|| " (required)".to_owned(), |d| format!(" = {d}"));
    let description = if param.description.is_empty() {
        String::new()
    } else {
        format!("  # {}", param.description)
    };
    format!("{}: {kind}{default}{description}", param.name)
}
