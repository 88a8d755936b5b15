//! LoRA patches: finding the `(up, down, alpha)` triples in a LoRA file (kohya/Flux
//! `lora_up`/`lora_down`/`alpha` and diffusers/PEFT `lora_B`/`lora_A` naming), matching them to a
//! model's weights, and adding `strength · alpha/rank · up·down` to a weight's values.
//!
//! The factors stay in the LoRA file's mapping; a patch is a description (file, tensor names,
//! strength), so a clone's patch list costs nothing and patching never touches the base weights.
#![forbid(unsafe_code)]

use super::PatchError;
use crate::weights::WeightSource;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

/// A change to one weight, applied to its device copy when a patcher loads it.
#[derive(Clone, Debug)]
pub struct WeightPatch {
    /// The model weight it changes (a tensor name of the model file).
    pub target: String,
    /// How strongly (ComfyUI's `strength_model`); may be negative.
    pub strength: f32,
    /// What it adds.
    pub kind: PatchKind,
}

/// The kinds of patches.
#[derive(Clone, Debug)]
pub enum PatchKind {
    /// A low-rank update `alpha/rank · up·down`.
    Lora(LoraFactors),
}

/// Where a LoRA's two factors live.
#[derive(Clone, Debug)]
pub struct LoraFactors {
    /// The LoRA file.
    pub source: Arc<WeightSource>,
    /// `[out, rank]` (or `[out, rank, 1, 1]`): `lora_up` / `lora_B`.
    pub up: String,
    /// `[rank, in…]`: `lora_down` / `lora_A`.
    pub down: String,
    /// The trained alpha; the update is scaled by `alpha / rank` (1 when absent).
    pub alpha: Option<f32>,
    /// The rows of the target the update covers (a fused qkv weight patched per projection);
    /// `None`: all of them.
    pub rows: Option<Range<usize>>,
}

impl WeightPatch {
    /// What the patch does, as a number: equal keys mean equal updates. Device copies remember
    /// the key of the patches baked into them.
    pub(crate) fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.target.hash(&mut h);
        self.strength.to_bits().hash(&mut h);
        match &self.kind {
            PatchKind::Lora(f) => {
                f.source.mapping().identity().hash(&mut h);
                f.up.hash(&mut h);
                f.down.hash(&mut h);
                f.alpha.map(f32::to_bits).hash(&mut h);
                f.rows.clone().map(|r| (r.start, r.end)).hash(&mut h);
            }
        }
        h.finish()
    }

    /// Adds the update to `values`, the target's values in row-major order with PyTorch-order
    /// `shape`.
    pub(crate) fn apply(&self, values: &mut [f32], shape: &[u64]) -> Result<(), PatchError> {
        match &self.kind {
            PatchKind::Lora(f) => apply_lora(f, self.strength, &self.target, values, shape),
        }
    }
}

/// A LoRA update read from its file, checked against its target: `scale · up·down` added to
/// `rows` of the target (what merging adds, and what a side product computes).
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankUpdate {
    /// `[rows.len(), rank]`, row-major, f32.
    pub up: Vec<f32>,
    /// `[rank, cols]`, row-major, f32.
    pub down: Vec<f32>,
    /// The rank.
    pub rank: usize,
    /// The target's columns (its input width).
    pub cols: usize,
    /// `strength · alpha / rank` (`strength` when the file has no alpha).
    pub scale: f32,
    /// The target's rows it covers.
    pub rows: Range<usize>,
}

impl WeightPatch {
    /// The low-rank update this patch adds to its target of PyTorch-order `shape`, read from the
    /// LoRA file and checked against the shape.
    pub fn low_rank(&self, shape: &[u64]) -> Result<LowRankUpdate, PatchError> {
        match &self.kind {
            PatchKind::Lora(f) => read_lora(f, self.strength, &self.target, shape),
        }
    }
}

fn read_lora(
    f: &LoraFactors,
    strength: f32,
    target: &str,
    shape: &[u64],
) -> Result<LowRankUpdate, PatchError> {
    let lora = &f.source;
    let shape_error = |why: String| PatchError::Shape {
        lora: lora.path().to_owned(),
        target: target.to_owned(),
        why,
    };
    let up_info = lora.require(&f.up)?;
    let down_info = lora.require(&f.down)?;
    let (up_shape, down_shape) = (&up_info.shape, &down_info.shape);
    let rank = *down_shape
        .first()
        .ok_or_else(|| shape_error(format!("{} is a scalar", f.down)))? as usize;
    let out = *up_shape
        .first()
        .ok_or_else(|| shape_error(format!("{} is a scalar", f.up)))? as usize;
    let up_rank: u64 = up_shape[1..].iter().product();
    if up_shape.len() < 2 || up_rank != rank as u64 {
        return Err(shape_error(format!(
            "up {up_shape:?} and down {down_shape:?} disagree on the rank"
        )));
    }
    let cols: usize = down_shape[1..].iter().product::<u64>() as usize;
    let target_rows = *shape.first().unwrap_or(&1) as usize;
    let target_cols = if shape.len() > 1 {
        shape[1..].iter().product::<u64>() as usize
    } else {
        1
    };
    let rows = f.rows.clone().unwrap_or(0..target_rows);
    if rows.end > target_rows || rows.len() != out || cols != target_cols {
        return Err(shape_error(format!(
            "up {up_shape:?} · down {down_shape:?} gives [{out}, {cols}], the weight is {shape:?}{}",
            f.rows
                .as_ref()
                .map(|r| format!(" (rows {}..{})", r.start, r.end))
                .unwrap_or_default()
        )));
    }
    let (up, down) = if cols == 0 || rows.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (lora.dequantize(up_info)?, lora.dequantize(down_info)?)
    };
    Ok(LowRankUpdate {
        up,
        down,
        rank,
        cols,
        scale: strength * f.alpha.map_or(1.0, |a| a / rank as f32),
        rows,
    })
}

fn apply_lora(
    f: &LoraFactors,
    strength: f32,
    target: &str,
    values: &mut [f32],
    shape: &[u64],
) -> Result<(), PatchError> {
    let update = read_lora(f, strength, target, shape)?;
    let (cols, rank, scale) = (update.cols, update.rank, update.scale);
    let target_rows = *shape.first().unwrap_or(&1) as usize;
    if values.len() != target_rows * cols {
        return Err(PatchError::Shape {
            lora: f.source.path().to_owned(),
            target: target.to_owned(),
            why: format!("{} values do not hold the weight {shape:?}", values.len()),
        });
    }
    if cols == 0 || update.rows.is_empty() {
        return Ok(());
    }
    let (up, down) = (&update.up, &update.down);
    values[update.rows.start * cols..update.rows.end * cols]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(o, row)| {
            for k in 0..rank {
                let a = scale * up[o * rank + k];
                if a == 0.0 {
                    continue;
                }
                let down_row = &down[k * cols..(k + 1) * cols];
                row.iter_mut().zip(down_row).for_each(|(w, &d)| *w += a * d);
            }
        });
    Ok(())
}

/// Maps LoRA base names to model weights beyond what [`lora_patches`] finds by itself: the
/// architecture-specific renames (diffusers' `to_q`/`to_k`/`to_v` onto a fused `qkv` slice) that
/// the model's node crate knows and the engine does not.
#[derive(Clone, Debug, Default)]
pub struct LoraKeyMap {
    entries: HashMap<String, (String, Option<Range<usize>>)>,
}

impl LoraKeyMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// LoRA base name `lora` (without `.lora_up.weight` …) patches `rows` of model weight `target`.
    pub fn insert(
        &mut self,
        lora: impl Into<String>,
        target: impl Into<String>,
        rows: Option<Range<usize>>,
    ) -> &mut Self {
        self.entries.insert(lora.into(), (target.into(), rows));
        self
    }
}

/// What [`lora_patches`] found.
#[derive(Debug, Default)]
pub struct LoraMatch {
    /// One patch per matched LoRA module.
    pub patches: Vec<WeightPatch>,
    /// LoRA modules that patch nothing in this model, with the reason (a text-encoder LoRA
    /// applied to a diffusion model lands here).
    pub unmatched: Vec<(String, String)>,
}

#[derive(Default)]
struct Group {
    up: Option<String>,
    down: Option<String>,
    alpha: Option<String>,
    other: Vec<String>,
}

/// Prefixes trainers put before the model's own key (kohya, diffusers/PEFT, ComfyUI's own save).
const LORA_PREFIXES: [&str; 7] = [
    "lora_unet_",
    "lora_transformer_",
    "model.diffusion_model.",
    "diffusion_model.",
    "base_model.model.",
    "transformer.",
    "unet.",
];
/// Prefixes model files put before their keys (city96 GGUFs sometimes keep ComfyUI's).
const MODEL_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// The LoRA modules of `lora` that patch weights of `model`, at `strength`.
///
/// A module is found by its base name: with the trainer's prefix removed, it must equal a model
/// weight's name without `.weight` (and without `model.diffusion_model.`), either as is
/// (`double_blocks.0.img_attn.qkv`) or with dots as underscores (kohya's
/// `lora_unet_double_blocks_0_img_attn_qkv`). `extra` is consulted first.
pub fn lora_patches(
    model: &WeightSource,
    lora: &Arc<WeightSource>,
    strength: f32,
    extra: &LoraKeyMap,
) -> Result<LoraMatch, PatchError> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for t in lora.tensors() {
        let name = t.name.as_str();
        let suffixes: [(&str, u8); 7] = [
            (".lora_up.weight", 0),
            (".lora_B.weight", 0),
            (".lora.up.weight", 0),
            (".lora_down.weight", 1),
            (".lora_A.weight", 1),
            (".lora.down.weight", 1),
            (".alpha", 2),
        ];
        match suffixes.iter().find(|(s, _)| name.ends_with(s)) {
            Some((suffix, role)) => {
                let group = groups
                    .entry(name[..name.len() - suffix.len()].to_owned())
                    .or_default();
                let slot = match role {
                    0 => &mut group.up,
                    1 => &mut group.down,
                    _ => &mut group.alpha,
                };
                *slot = Some(name.to_owned());
            }
            None => {
                let base = name.rsplit_once('.').map_or(name, |(b, _)| b);
                groups
                    .entry(base.to_owned())
                    .or_default()
                    .other
                    .push(name.to_owned());
            }
        }
    }

    let targets = ModelKeys::new(model);
    let mut found = LoraMatch::default();
    for (base, group) in groups {
        let (Some(up), Some(down)) = (group.up, group.down) else {
            let what = if group.other.is_empty() {
                "has only one of up/down".to_owned()
            } else {
                format!("unsupported tensors {:?}", group.other)
            };
            found.unmatched.push((base, what));
            continue;
        };
        let resolved = match extra.entries.get(&base) {
            Some((target, rows)) => Ok((target.clone(), rows.clone())),
            None => targets.resolve(&base).map(|t| (t, None)),
        };
        let (target, rows) = match resolved {
            Ok(found) => found,
            Err(why) => {
                found.unmatched.push((base, why));
                continue;
            }
        };
        if model.get(&target).is_none() {
            return Err(PatchError::UnknownTarget {
                model: model.path().to_owned(),
                target,
            });
        }
        let alpha = match &group.alpha {
            Some(name) => {
                let info = lora.require(name)?;
                let values = lora.dequantize(info)?;
                match values.as_slice() {
                    [a] => Some(*a),
                    _ => {
                        return Err(PatchError::Shape {
                            lora: lora.path().to_owned(),
                            target,
                            why: format!("{name} has {} values, not 1", values.len()),
                        });
                    }
                }
            }
            None => None,
        };
        found.patches.push(WeightPatch {
            target,
            strength,
            kind: PatchKind::Lora(LoraFactors {
                source: lora.clone(),
                up,
                down,
                alpha,
                rows,
            }),
        });
    }
    if !found.unmatched.is_empty() {
        tracing::warn!(
            "{}: {} LoRA modules patch nothing in {}",
            lora.path().display(),
            found.unmatched.len(),
            model.path().display()
        );
    }
    Ok(found)
}

/// A model's weight names by base name, dotted and underscored.
struct ModelKeys {
    by_base: HashMap<String, Option<String>>,
}

impl ModelKeys {
    fn new(model: &WeightSource) -> Self {
        let mut by_base: HashMap<String, Option<String>> = HashMap::new();
        let mut add = |key: String, name: &str| {
            by_base
                .entry(key)
                .and_modify(|existing| {
                    if existing.as_deref() != Some(name) {
                        *existing = None; // two weights share this spelling: ambiguous
                    }
                })
                .or_insert_with(|| Some(name.to_owned()));
        };
        for t in model.tensors() {
            let Some(base) = t.name.strip_suffix(".weight") else {
                continue;
            };
            let base = MODEL_PREFIXES
                .iter()
                .find_map(|p| base.strip_prefix(p))
                .unwrap_or(base);
            add(base.to_owned(), &t.name);
            add(base.replace('.', "_"), &t.name);
        }
        ModelKeys { by_base }
    }

    fn resolve(&self, lora_base: &str) -> Result<String, String> {
        let stripped = LORA_PREFIXES
            .iter()
            .find_map(|p| lora_base.strip_prefix(p))
            .unwrap_or(lora_base);
        for candidate in [stripped.to_owned(), stripped.replace('.', "_")] {
            match self.by_base.get(&candidate) {
                Some(Some(name)) => return Ok(name.clone()),
                Some(None) => {
                    return Err(format!("{candidate:?} names more than one model weight"));
                }
                None => {}
            }
        }
        Err("no model weight of that name".to_owned())
    }
}
