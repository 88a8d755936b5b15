//! An example third-party node crate for weft: prompt templating, a colour grade as a plugin-defined
//! port type, and a text sink. Read README.md first; every node here is a complete, tested example.
//!
//! A plugin is a unit struct that registers its node types (and its own port types) with the
//! registry. A binary lists the plugins it wants:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     weft::main_with((weft_nodes::Builtin, weft_example_custom_node::CustomNodes))
//! }
//! ```
use burn::tensor::backend::Backend;
use weft_engine::registry::{NodeRegistry, Plugin};

pub mod grade;
pub mod prompt;
pub mod text;

/// This crate's plugin: `PromptTemplate`, `ColorGrade`, `ApplyColorGrade`, `SaveText`, and the
/// `COLOR_GRADE` port type.
pub struct CustomNodes;

impl Plugin for CustomNodes {
    fn name(&self) -> &str {
        "custom-node-example"
    }

    fn build<B: Backend>(&self, registry: &mut NodeRegistry<B>) {
        registry.register_type(
            grade::COLOR_GRADE,
            "brightness, contrast, saturation and gamma, applied by ApplyColorGrade",
        );
        registry
            .register(prompt::PromptTemplate)
            .register(grade::ColorGrade)
            .register(grade::ApplyColorGrade)
            .register(text::SaveText);
    }
}
