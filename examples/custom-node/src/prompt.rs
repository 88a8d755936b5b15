//! `PromptTemplate`: fills `{subject}`, `{style}` and `{detail}` in a template and tidies the
//! separators left by empty fields, so one template serves many prompts (and sweeps).
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, Value,
};

/// The node type.
pub struct PromptTemplate;

/// Its parameters; each may also be linked from a `STRING` output (e.g. a `PrimitiveString`).
#[derive(Deserialize)]
pub struct PromptTemplateParams {
    /// Text with `{subject}`, `{style}` and `{detail}` placeholders; `{{` and `}}` are literal braces.
    pub template: String,
    /// Replaces `{subject}`.
    pub subject: String,
    /// Replaces `{style}`.
    pub style: String,
    /// Replaces `{detail}`.
    pub detail: String,
    /// Drop the empty parts of a comma-separated prompt (`"a cat, , oil"` → `"a cat, oil"`).
    pub tidy: bool,
}

impl<B: Backend> Node<B> for PromptTemplate {
    type Params = PromptTemplateParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("PromptTemplate")
            .category("text")
            .describe("Fills {subject}, {style} and {detail} in a template; {{ and }} are literal braces.")
            .param(ParamSpec::text("template").default("{subject}, {style}, {detail}"))
            .param(ParamSpec::string("subject").default(""))
            .param(ParamSpec::string("style").default(""))
            .param(ParamSpec::string("detail").default(""))
            .param(ParamSpec::boolean("tidy").default(true).describe("drop empty comma-separated parts"))
            .output("STRING", PortType::STRING)
    }

    fn run(
        &self,
        p: Self::Params,
        _: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let filled = fill(&p.template, |name| match name {
            "subject" => Some(p.subject.as_str()),
            "style" => Some(p.style.as_str()),
            "detail" => Some(p.detail.as_str()),
            _ => None,
        })
        .map_err(NodeError::msg)?;
        Ok(Outputs::one(Value::String(if p.tidy {
            tidy(&filled)
        } else {
            filled
        })))
    }
}

/// Replaces each `{name}` in `template` by `lookup(name)`. Errors name the bad placeholder and its
/// byte offset, so a typo in a workflow is found at once.
pub fn fill<'a>(
    template: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[at + 1..];
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' at byte {at} of the template"))?;
                let name = &rest[..end];
                let value = lookup(name).ok_or_else(|| {
                    format!("unknown placeholder {{{name}}} at byte {at} (known: {{subject}}, {{style}}, {{detail}})")
                })?;
                out.push_str(value);
                for _ in 0..=name.chars().count() {
                    chars.next();
                }
            }
            '}' => {
                return Err(format!(
                    "unmatched '}}' at byte {at} of the template (write '}}}}' for a brace)"
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Drops empty comma-separated parts and squeezes spaces: `" a cat, ,  oil , "` → `"a cat, oil"`.
pub fn tidy(prompt: &str) -> String {
    prompt
        .split(',')
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "subject" => Some("a lighthouse"),
            "style" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn fills_placeholders_and_keeps_escaped_braces() {
        assert_eq!(
            fill("{subject}, {{not a placeholder}}", lookup).unwrap(),
            "a lighthouse, {not a placeholder}"
        );
    }

    #[test]
    fn bad_templates_are_errors_that_say_where() {
        assert_eq!(
            fill("x {subjet}", lookup).unwrap_err(),
            "unknown placeholder {subjet} at byte 2 (known: {subject}, {style}, {detail})"
        );
        assert_eq!(
            fill("x {subject", lookup).unwrap_err(),
            "unclosed '{' at byte 2 of the template"
        );
        assert_eq!(
            fill("x } y", lookup).unwrap_err(),
            "unmatched '}' at byte 2 of the template (write '}}' for a brace)"
        );
    }

    #[test]
    fn tidy_drops_empty_parts() {
        assert_eq!(tidy(" a cat, ,  oil   painting , "), "a cat, oil painting");
        assert_eq!(tidy(""), "");
    }

    #[test]
    fn handles_multibyte_text() {
        assert_eq!(fill("é{subject}ü", lookup).unwrap(), "éa lighthouseü");
    }
}
