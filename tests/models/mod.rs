//! The models against diffusers: the Flux DiT and the AutoencoderKL, built from the original
//! checkpoint names, compared with what diffusers computes from the same (dequantized) weights.
//! Fixtures come from tools/gen_flux_fixtures.py.
//!
//! Tolerance: everything is f32 on both sides, but the summation orders differ (gemm blocking,
//! softmax, group-norm reductions), so we allow |got - want| <= 1e-4 · max|want| elementwise and
//! record the measured errors in each test's comment.
mod bench;
mod flux;
mod linear_gelu;
mod mixed_dtype;
mod quant_linear;
mod synth_bench;
mod vae;

use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};
use weft_engine::formats::ModelFile;
use weft_models::{ModelError, TensorSource};
use weft_tests::B;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

pub fn open(rel: &str) -> ModelFile {
    ModelFile::open(fixture(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// A reference tensor as a burn tensor.
pub fn reference<const D: usize>(file: &ModelFile, name: &str) -> Tensor<B, D> {
    let info = file.require(name).unwrap();
    let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
    Tensor::from_data(
        TensorData::new(file.dequantize(info).unwrap(), shape),
        &Default::default(),
    )
}

/// A reference tensor's values.
pub fn values(file: &ModelFile, name: &str) -> Vec<f32> {
    file.dequantize(file.require(name).unwrap()).unwrap()
}

/// Asserts `got` ≈ `want` elementwise within `rel` of the reference's largest magnitude;
/// returns the measured max |difference| / max |want| (printed with --nocapture).
pub fn assert_close<const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    want: Tensor<B, D>,
    rel: f32,
) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.into_data().to_vec::<f32>().unwrap();
    let want = want.into_data().to_vec::<f32>().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (worst, at) = got
        .iter()
        .zip(&want)
        .enumerate()
        .fold((0f32, 0), |(m, at), (i, (g, w))| {
            let d = (g - w).abs();
            if d > m || d.is_nan() { (d, i) } else { (m, at) }
        });
    let measured = worst / scale;
    println!(
        "{what}: max |diff| {worst:.3e} (at {at}), max |want| {scale:.3}, relative {measured:.3e}"
    );
    assert!(
        measured <= rel,
        "{what}: element {at}: got {}, want {} (relative error {measured:.3e} > {rel:.0e})",
        got[at],
        want[at]
    );
    measured
}

/// A [`ModelFile`] with one thing wrong: a hidden tensor, a lying shape, or another declared
/// architecture. Models must answer each with an error naming the file and the tensor.
pub struct Doctored<'a> {
    pub file: &'a ModelFile,
    pub hide: Option<&'a str>,
    pub reshape: Option<(&'a str, Vec<usize>)>,
    /// `Some(None)`: declare no architecture (as safetensors files), so the key set decides.
    pub architecture: Option<Option<&'a str>>,
}

impl<'a> Doctored<'a> {
    pub fn new(file: &'a ModelFile) -> Self {
        Doctored {
            file,
            hide: None,
            reshape: None,
            architecture: None,
        }
    }
}

impl TensorSource<B> for Doctored<'_> {
    fn origin(&self) -> String {
        <ModelFile as TensorSource<B>>::origin(self.file)
    }

    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(
            <ModelFile as TensorSource<B>>::names(self.file).filter(move |n| Some(*n) != self.hide),
        )
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if Some(name) == self.hide {
            return None;
        }
        match &self.reshape {
            Some((n, shape)) if *n == name => Some(shape.clone()),
            _ => <ModelFile as TensorSource<B>>::shape(self.file, name),
        }
    }

    fn load(
        &self,
        name: &str,
        device: &burn::tensor::Device<B>,
    ) -> Result<Tensor<B, 1>, ModelError> {
        <ModelFile as TensorSource<B>>::load(self.file, name, device)
    }

    fn architecture(&self) -> Option<String> {
        match self.architecture {
            Some(a) => a.map(str::to_owned),
            None => <ModelFile as TensorSource<B>>::architecture(self.file),
        }
    }
}
