//! `SaveText`: a sink that writes a STRING to `<prefix>_<counter>_.txt` in the output folder — how
//! a node crate writes files safely (inside the output folder, whole or not at all).
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType,
};
use weft_nodes::image_io::write_atomically;

/// The node type.
pub struct SaveText;

/// Its parameters.
#[derive(Deserialize)]
pub struct SaveTextParams {
    /// File name prefix inside the output folder, possibly with subfolders.
    pub filename_prefix: String,
}

impl<B: Backend> Node<B> for SaveText {
    type Params = SaveTextParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("SaveText")
            .category("text")
            .describe("Saves text as <prefix>_00001_.txt … in the output folder.")
            .input("text", PortType::STRING)
            .param(ParamSpec::string("filename_prefix").default("text"))
            .output_node()
            .always_run()
    }

    fn run(
        &self,
        p: SaveTextParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let text = inputs.string("text")?;
        let prefix = ctx.output_path(&p.filename_prefix)?;
        let dir = prefix.parent().map(ToOwned::to_owned).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        let stem = prefix
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = (1u32..)
            .map(|n| dir.join(format!("{stem}_{n:05}_.txt")))
            .find(|path| !path.exists())
            .ok_or_else(|| NodeError::msg("no free file name"))?;
        write_atomically(&path, text.as_bytes())?;
        ctx.report_file(&path);
        Ok(Outputs::none())
    }
}
