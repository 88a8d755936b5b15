//! The output cache: node outputs kept across runs of one process, keyed by a Merkle signature of
//! (node type, parameters, upstream signatures, fingerprint).
use crate::node::{Fingerprint, ParamMap, ParamValue, Value};
use burn::tensor::backend::Backend;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// A node's cache key: equal signatures mean equal outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signature(u128);

/// What goes into a signature.
pub(crate) struct SignatureInput<'a> {
    pub node_type: &'a str,
    pub params: &'a ParamMap,
    /// (input name, upstream signature, upstream output index), in a stable order.
    pub upstream: &'a [(String, Signature, usize)],
    pub fingerprint: &'a Fingerprint,
    /// Set for nodes that always run: makes their signature, and all downstream, unique to the run.
    pub nonce: Option<u64>,
}

impl Signature {
    pub(crate) fn of(input: &SignatureInput<'_>) -> Signature {
        // Two independently salted 64-bit hashes: collisions within one process's cache are not a concern.
        let half = |salt: u64| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            input.node_type.hash(&mut h);
            input.params.len().hash(&mut h);
            for (name, value) in input.params {
                name.hash(&mut h);
                hash_param(value, &mut h);
            }
            input.upstream.hash(&mut h);
            input.fingerprint.hash(&mut h);
            input.nonce.hash(&mut h);
            h.finish()
        };
        Signature((u128::from(half(0x5157_4546_7431)) << 64) | u128::from(half(0x7765_6674_3232)))
    }
}

fn hash_param(value: &ParamValue, h: &mut DefaultHasher) {
    match value {
        ParamValue::Int(v) => (0u8, v).hash(h),
        ParamValue::Float(v) => (1u8, v.to_bits()).hash(h),
        ParamValue::String(v) => (2u8, v).hash(h),
        ParamValue::Boolean(v) => (3u8, v).hash(h),
    }
}

struct Entry<B: Backend> {
    outputs: Arc<[Value<B>]>,
    last_run: u64,
}

/// Outputs by signature. After each successful run, only the entries that run used are kept
/// (ComfyUI's policy): a sweep reuses its loaders and prompts, and memory stays bounded by one run.
pub(crate) struct OutputCache<B: Backend> {
    entries: HashMap<Signature, Entry<B>>,
}

impl<B: Backend> OutputCache<B> {
    pub(crate) fn new() -> Self {
        OutputCache {
            entries: HashMap::new(),
        }
    }

    /// The outputs under `signature`, marking them used by `run`.
    pub(crate) fn get(&mut self, signature: Signature, run: u64) -> Option<Arc<[Value<B>]>> {
        let entry = self.entries.get_mut(&signature)?;
        entry.last_run = run;
        Some(entry.outputs.clone())
    }

    pub(crate) fn peek(&self, signature: Signature) -> Option<Arc<[Value<B>]>> {
        self.entries.get(&signature).map(|e| e.outputs.clone())
    }

    pub(crate) fn insert(&mut self, signature: Signature, outputs: Arc<[Value<B>]>, run: u64) {
        self.entries.insert(
            signature,
            Entry {
                outputs,
                last_run: run,
            },
        );
    }

    /// Drops every entry that `run` did not use.
    pub(crate) fn retain_run(&mut self, run: u64) {
        self.entries.retain(|_, e| e.last_run == run);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}
