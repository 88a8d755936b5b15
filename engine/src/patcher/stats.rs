//! [`ParamStats`]: where a model's weights are (device, the mapping, other host memory), in
//! counts and bytes, logged after every load and offload.
#![forbid(unsafe_code)]

use crate::weights::cache::human_bytes;
use std::fmt;

/// Weights in one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocationStats {
    /// How many.
    pub tensors: usize,
    /// Their bytes there.
    pub bytes: u64,
}

impl LocationStats {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.tensors += 1;
        self.bytes += bytes;
    }
}

/// Where a model's weights are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParamStats {
    /// With a device copy.
    pub device: LocationStats,
    /// Only in the file mapping (streamed when used).
    pub mmap: LocationStats,
    /// In other host memory. The patcher keeps no host copies, so this stays 0; it is counted so
    /// that a change that starts keeping some shows up in every log line.
    pub host: LocationStats,
}

impl ParamStats {
    /// Every weight, wherever it is.
    pub fn total(&self) -> usize {
        self.device.tensors + self.mmap.tensors + self.host.tensors
    }
}

impl fmt::Display for ParamStats {
    /// `param stats: device=0 mmap=3510 host=0 (total 3510); bytes device=0 B mmap=12.70 GiB host=0 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "param stats: device={} mmap={} host={} (total {}); bytes device={} mmap={} host={}",
            self.device.tensors,
            self.mmap.tensors,
            self.host.tensors,
            self.total(),
            human_bytes(self.device.bytes),
            human_bytes(self.mmap.bytes),
            human_bytes(self.host.bytes)
        )
    }
}
