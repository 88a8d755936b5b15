//! Text-encoder nodes: the CLIP loaders (`CLIPLoader`, `DualCLIPLoader` and their GGUF twins,
//! which accept the same files: the format is read from the file's magic) and the encoders
//! (`CLIPTextEncode`, `CLIPTextEncodeFlux`), with ComfyUI's Flux framing.
//!
//! A CLIP value is a [`TextEncoders`]: a [`ModelHandle`] per encoder file (so encoders load,
//! offload and reload like every model) and the tokenizers, built once at load time. Encoders
//! are built from the patchers' weights when a prompt is encoded, and stay loaded afterwards
//! (the memory manager offloads them when the diffusion model needs the room, as ComfyUI does).
use crate::conditioning::{DEFAULT_FLUX_GUIDANCE, GUIDANCE, single};
use crate::loaders::{model_error, open_patcher};
use crate::offload::with_model_loaded;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use weft_engine::formats::ModelFile;
use weft_engine::node::{
    Fingerprint, Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType,
    Value,
};
use weft_engine::patcher::{ModelHandle, ModelPatcher};
use weft_engine::registry::NodeRegistry;
use weft_models::TensorSource;
use weft_models::patcher_source::PatcherSource;
use weft_models::text::{
    ChunkLayout, ClipOutputLayer, ClipTextModel, ClipTokenizer, T5Encoder, T5Tokenizer, TextError,
    TokenChunk, encode_clip, encode_t5,
};

/// Where the CLIP loaders look (ComfyUI: `models/text_encoders`, formerly `models/clip`).
pub const TEXT_ENCODER_FOLDERS: &[&str] = &["text_encoders", "clip"];
/// ComfyUI's Flux T5-XXL padding: at least 256 tokens.
pub const FLUX_T5_MIN_LENGTH: usize = 256;

/// The tokenizers of a Flux CLIP value.
pub struct FluxTokenizers {
    pub clip: ClipTokenizer,
    pub t5: T5Tokenizer,
}

/// What a CLIP value holds: the encoders' handles and their tokenizers.
pub enum TextEncoders<B: Backend> {
    /// ComfyUI's `FluxClipModel`: T5-XXL's hidden states as context, CLIP-L's pooled output.
    Flux {
        clip_l: ModelHandle<B>,
        t5: ModelHandle<B>,
        tokenizers: Arc<FluxTokenizers>,
    },
    /// CLIP-L alone (`stable_diffusion`): its last hidden state as context, its pooled output.
    ClipL {
        clip_l: ModelHandle<B>,
        tokenizer: Arc<ClipTokenizer>,
    },
}

/// Which encoder a text-encoder file holds, by its tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncoderKind {
    ClipL,
    T5,
}

fn kind_of<B: Backend>(patcher: &ModelPatcher<B>) -> Result<EncoderKind, NodeError> {
    let source = PatcherSource::new(patcher);
    let mut names = TensorSource::<B>::names(&source);
    let found = names.find_map(|n| {
        if n.ends_with("embeddings.token_embedding.weight") {
            Some(EncoderKind::ClipL)
        } else if n.starts_with("enc.blk.") || n.contains("encoder.block.0.layer.0.SelfAttention") {
            Some(EncoderKind::T5)
        } else {
            None
        }
    });
    found.ok_or_else(|| {
        NodeError::msg(format!(
            "{}: neither a CLIP nor a T5 text encoder (no token embedding or T5 blocks)",
            source.origin()
        ))
    })
}

/// CLIP's head count: not stored; CLIP heads are 64 wide, and narrower models get one head.
fn clip_heads<B: Backend>(source: &dyn TensorSource<B>) -> Option<usize> {
    let name = source
        .names()
        .find(|n| n.ends_with("embeddings.token_embedding.weight"))?
        .to_owned();
    let hidden = *source.shape(&name)?.get(1)?;
    Some((hidden / 64).max(1))
}

/// The T5 tokenizer of a T5 file: its GGUF vocabulary when it has one, else google/t5-v1_1-xxl's.
fn t5_tokenizer<B: Backend>(patcher: &ModelPatcher<B>) -> Result<T5Tokenizer, NodeError> {
    match patcher.source().file() {
        ModelFile::Gguf(file) if file.header().get("tokenizer.ggml.tokens").is_some() => {
            T5Tokenizer::from_gguf(file)
        }
        _ => T5Tokenizer::builtin(),
    }
    .map_err(NodeError::other)
}

fn text_error(error: TextError) -> NodeError {
    NodeError::other(error)
}

impl<B: Backend> TextEncoders<B> {
    /// A Flux pair from two files in either order.
    fn flux(a: ModelPatcher<B>, b: ModelPatcher<B>) -> Result<Self, NodeError> {
        let (clip_l, t5) = match (kind_of(&a)?, kind_of(&b)?) {
            (EncoderKind::ClipL, EncoderKind::T5) => (a, b),
            (EncoderKind::T5, EncoderKind::ClipL) => (b, a),
            (kind, _) => {
                return Err(NodeError::msg(format!(
                    "type flux needs a CLIP-L and a T5-XXL file; {} and {} both hold {kind:?}",
                    a.source().path().display(),
                    b.source().path().display()
                )));
            }
        };
        let tokenizers = FluxTokenizers {
            clip: ClipTokenizer::builtin().map_err(text_error)?,
            t5: t5_tokenizer(&t5)?,
        };
        Ok(TextEncoders::Flux {
            clip_l: ModelHandle::new(clip_l),
            t5: ModelHandle::new(t5),
            tokenizers: Arc::new(tokenizers),
        })
    }

    fn clip_l(patcher: ModelPatcher<B>) -> Result<Self, NodeError> {
        if kind_of(&patcher)? != EncoderKind::ClipL {
            return Err(NodeError::msg(format!(
                "{}: type stable_diffusion needs a CLIP-L file; for a T5-XXL use DualCLIPLoader with type flux",
                patcher.source().path().display()
            )));
        }
        Ok(TextEncoders::ClipL {
            clip_l: ModelHandle::new(patcher),
            tokenizer: Arc::new(ClipTokenizer::builtin().map_err(text_error)?),
        })
    }

    /// Encodes a prompt (`clip_prompt` for CLIP-L, `t5_prompt` for T5) as ComfyUI's
    /// `CLIPTextEncode` / `CLIPTextEncodeFlux`: (context [1, L, D], pooled [1, D]).
    pub fn encode(
        &self,
        ctx: &NodeContext<'_, B>,
        clip_prompt: &str,
        t5_prompt: &str,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), NodeError> {
        match self {
            TextEncoders::Flux {
                clip_l,
                t5,
                tokenizers,
            } => {
                // FluxTextEncoders::encode_pair, with each encoder loaded through its patcher.
                let clip_chunks = tokenizers
                    .clip
                    .tokenize_with_weights(clip_prompt)
                    .map_err(text_error)?;
                let (_, pooled) = run_clip(ctx, clip_l, &clip_chunks)?;
                let t5_chunks = tokenizers
                    .t5
                    .tokenize_with_weights(t5_prompt, FLUX_T5_MIN_LENGTH)
                    .map_err(text_error)?;
                let layout = ChunkLayout {
                    end: tokenizers.t5.end_token(),
                    pad: tokenizers.t5.pad_token(),
                    ..ChunkLayout::flux_t5(FLUX_T5_MIN_LENGTH)
                };
                let context = with_model_loaded(ctx, t5, false, |patcher| {
                    let model = T5Encoder::load(&PatcherSource::new(patcher), ctx.device())
                        .map_err(model_error)?;
                    encode_t5(&model, &t5_chunks, &layout).map_err(model_error)
                })?;
                Ok((context, pooled))
            }
            TextEncoders::ClipL { clip_l, tokenizer } => {
                let chunks = tokenizer
                    .tokenize_with_weights(clip_prompt)
                    .map_err(text_error)?;
                run_clip(ctx, clip_l, &chunks)
            }
        }
    }

    fn handles(&self) -> Vec<&ModelHandle<B>> {
        match self {
            TextEncoders::Flux { clip_l, t5, .. } => vec![clip_l, t5],
            TextEncoders::ClipL { clip_l, .. } => vec![clip_l],
        }
    }

    /// Every encoder's patcher (for tests and memory reports).
    pub fn patchers(&self) -> Vec<&ModelPatcher<B>> {
        self.handles()
            .into_iter()
            .map(ModelHandle::patcher)
            .collect()
    }
}

fn run_clip<B: Backend>(
    ctx: &NodeContext<'_, B>,
    clip_l: &ModelHandle<B>,
    chunks: &[TokenChunk],
) -> Result<(Tensor<B, 3>, Tensor<B, 2>), NodeError> {
    with_model_loaded(ctx, clip_l, false, |patcher| {
        let source = PatcherSource::new(patcher);
        let model =
            ClipTextModel::load(&source, clip_heads(&source), ctx.device()).map_err(model_error)?;
        encode_clip(&model, chunks, &ChunkLayout::CLIP_L, ClipOutputLayer::Last)
            .map_err(model_error)
    })
}

/// The four CLIP loaders: one file or two, under ComfyUI's and ComfyUI-GGUF's names.
pub struct ClipLoader {
    name: &'static str,
    dual: bool,
}

/// Parameters of the single-file loaders.
#[derive(Deserialize)]
pub struct ClipLoaderParams {
    pub clip_name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Parameters of the two-file loaders.
#[derive(Deserialize)]
pub struct DualClipLoaderParams {
    pub clip_name1: String,
    pub clip_name2: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The loaders' parameters, single or dual.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum AnyClipLoaderParams {
    Dual(DualClipLoaderParams),
    Single(ClipLoaderParams),
}

impl AnyClipLoaderParams {
    fn names(&self) -> Vec<&str> {
        match self {
            AnyClipLoaderParams::Dual(p) => vec![&p.clip_name1, &p.clip_name2],
            AnyClipLoaderParams::Single(p) => vec![&p.clip_name],
        }
    }
}

impl<B: Backend> Node<B> for ClipLoader {
    type Params = AnyClipLoaderParams;

    fn schema(&self) -> NodeSchema {
        let schema = NodeSchema::new(self.name).category("advanced/loaders");
        let file = |name: &str| {
            ParamSpec::string(name).describe(
                "file under models/text_encoders or models/clip (safetensors or GGUF), or a path",
            )
        };
        let schema = if self.dual {
            schema
                .describe("Loads Flux's text encoders: a CLIP-L and a T5-XXL file, in either order (safetensors or GGUF).")
                .param(file("clip_name1"))
                .param(file("clip_name2"))
                .param(ParamSpec::choice("type", &["flux"]).default("flux"))
        } else {
            schema
                .describe("Loads one text encoder: a CLIP-L (type stable_diffusion), safetensors or GGUF.")
                .param(file("clip_name"))
                .param(ParamSpec::choice("type", &["stable_diffusion"]).default("stable_diffusion"))
        };
        schema.output("CLIP", PortType::CLIP)
    }

    fn fingerprint(
        &self,
        params: &AnyClipLoaderParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        let mut fingerprint = Fingerprint::none();
        for name in params.names() {
            fingerprint = fingerprint.file(&ctx.find_model(TEXT_ENCODER_FOLDERS, name)?)?;
        }
        Ok(fingerprint)
    }

    fn run(
        &self,
        params: AnyClipLoaderParams,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let open = |name: &str| open_patcher(ctx, TEXT_ENCODER_FOLDERS, name);
        let encoders = match (&params, self.dual) {
            (AnyClipLoaderParams::Dual(p), true) => {
                TextEncoders::flux(open(&p.clip_name1)?, open(&p.clip_name2)?)?
            }
            (AnyClipLoaderParams::Single(p), false) => TextEncoders::clip_l(open(&p.clip_name)?)?,
            _ => {
                return Err(NodeError::Params(format!(
                    "{}: clip_name or clip_name1/clip_name2 missing",
                    self.name
                )));
            }
        };
        // Text encoders leave the device once the run's last encode node has finished
        // (through the memory manager when there is one, so its LRU stays true).
        let encoders = Arc::new(encoders);
        let manager = weft_engine::memory::MemoryManager::<B>::from_services(&ctx.env().services);
        let held = encoders.clone();
        let object = weft_engine::node::Object::from_arc(PortType::CLIP, encoders)
            .release_after_last_use(move || {
                for patcher in held.patchers() {
                    match &manager {
                        Some(manager) => drop(manager.release(patcher)),
                        None => drop(patcher.offload()),
                    }
                }
            });
        Ok(Outputs::one(Value::Object(object)))
    }
}

fn text_encoders<B: Backend>(inputs: &Inputs<B>) -> Result<Arc<TextEncoders<B>>, NodeError> {
    inputs.object::<TextEncoders<B>>("clip")
}

/// `CLIPTextEncode`: a prompt (with ComfyUI's `(word:1.2)` weights) to a conditioning.
pub struct ClipTextEncode;

/// Parameters of [`ClipTextEncode`].
#[derive(Deserialize)]
pub struct ClipTextEncodeParams {
    pub text: String,
}

impl<B: Backend> Node<B> for ClipTextEncode {
    type Params = ClipTextEncodeParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("CLIPTextEncode")
            .category("conditioning")
            .describe("Encodes a prompt with the CLIP value's encoders (Flux: T5-XXL context, CLIP-L pooled); (word:1.2) weights as ComfyUI.")
            .input("clip", PortType::CLIP)
            .param(ParamSpec::text("text"))
            .output("CONDITIONING", PortType::CONDITIONING)
    }

    fn run(
        &self,
        params: ClipTextEncodeParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (context, pooled) = text_encoders(&inputs)?.encode(ctx, &params.text, &params.text)?;
        Ok(Outputs::one(Value::Conditioning(single(
            context,
            Some(pooled),
            BTreeMap::new(),
        ))))
    }
}

/// `CLIPTextEncodeFlux`: separate prompts for CLIP-L and T5-XXL, and Flux's guidance.
pub struct ClipTextEncodeFlux;

/// Parameters of [`ClipTextEncodeFlux`].
#[derive(Deserialize)]
pub struct ClipTextEncodeFluxParams {
    pub clip_l: String,
    pub t5xxl: String,
    pub guidance: f64,
}

impl<B: Backend> Node<B> for ClipTextEncodeFlux {
    type Params = ClipTextEncodeFluxParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("CLIPTextEncodeFlux")
            .category("advanced/conditioning/flux")
            .describe("Encodes clip_l with CLIP-L (pooled) and t5xxl with T5-XXL (context), and sets Flux's guidance.")
            .input("clip", PortType::CLIP)
            .param(ParamSpec::text("clip_l"))
            .param(ParamSpec::text("t5xxl"))
            .param(ParamSpec::float("guidance").default(DEFAULT_FLUX_GUIDANCE).range_f(0.0, 100.0))
            .output("CONDITIONING", PortType::CONDITIONING)
    }

    fn run(
        &self,
        params: ClipTextEncodeFluxParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let encoders = text_encoders(&inputs)?;
        if matches!(*encoders, TextEncoders::ClipL { .. }) {
            return Err(NodeError::Input {
                port: "clip".into(),
                reason: "CLIPTextEncodeFlux needs Flux's encoders (DualCLIPLoader, type flux)"
                    .into(),
            });
        }
        let (context, pooled) = encoders.encode(ctx, &params.clip_l, &params.t5xxl)?;
        let options = BTreeMap::from([(GUIDANCE.to_owned(), params.guidance)]);
        Ok(Outputs::one(Value::Conditioning(single(
            context,
            Some(pooled),
            options,
        ))))
    }
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(ClipLoader {
            name: "CLIPLoader",
            dual: false,
        })
        .register(ClipLoader {
            name: "DualCLIPLoader",
            dual: true,
        })
        .register(ClipLoader {
            name: "CLIPLoaderGGUF",
            dual: false,
        })
        .register(ClipLoader {
            name: "DualCLIPLoaderGGUF",
            dual: true,
        })
        .register(ClipTextEncode)
        .register(ClipTextEncodeFlux);
}
