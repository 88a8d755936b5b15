//! The Brownian-tree noise of `dpmpp_2m_sde`: a port of torchsde 0.2.6's `BrownianTree`
//! (a `BrownianInterval` with `halfway_tree=True`, `tol=1e-6`, `pool_size=24`, no Lévy area), as
//! ComfyUI's `BrownianTreeNoiseSampler(..., cpu=True)` uses it.
//!
//! The tree is deterministic: every interval that is split draws its seeds from numpy's
//! `SeedSequence(entropy=seed, spawn_key=(key, depth), pool_size=24)` ([`SeedSequence`]), and the
//! Brownian bridge between a parent's endpoints uses `torch.randn` from a torch CPU generator
//! seeded with those seeds ([`TorchGenerator`]). Times are Python floats (f64) rounded to six
//! decimals; increments are float32 tensors combined in torchsde's order. The result matches
//! ComfyUI's noise on the CPU (`tests/sampling/samplers.rs` checks `dpmpp_2m_sde` against torchsde).
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::SamplingError;
use super::noise::NoiseSampler;
use super::torch_rng::TorchGenerator;

/// numpy's `SeedSequence` (the entropy mixer of `numpy.random`), for integer entropy and spawn keys.
pub struct SeedSequence {
    pool: Vec<u32>,
}

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// A non-negative Python int as numpy's little-endian uint32 words (0 is one word).
fn int_words(mut n: u64) -> Vec<u32> {
    if n == 0 {
        return vec![0];
    }
    let mut words = Vec::new();
    while n > 0 {
        words.push(n as u32);
        n >>= 32;
    }
    words
}

impl SeedSequence {
    /// `SeedSequence(entropy, spawn_key, pool_size)`.
    pub fn new(entropy: u64, spawn_key: &[u64], pool_size: usize) -> Self {
        let mut run_entropy = int_words(entropy);
        let spawn_entropy: Vec<u32> = spawn_key.iter().flat_map(|&k| int_words(k)).collect();
        if !spawn_entropy.is_empty() && run_entropy.len() < pool_size {
            run_entropy.resize(pool_size, 0);
        }
        let entropy_array: Vec<u32> = run_entropy.into_iter().chain(spawn_entropy).collect();

        let mut hash_const = INIT_A;
        let mut hashmix = |value: u32| {
            let mut value = value ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_A);
            value = value.wrapping_mul(hash_const);
            value ^ (value >> XSHIFT)
        };
        let mix = |x: u32, y: u32| {
            let result = MIX_MULT_L
                .wrapping_mul(x)
                .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
            result ^ (result >> XSHIFT)
        };
        let mut pool: Vec<u32> = (0..pool_size)
            .map(|i| hashmix(entropy_array.get(i).copied().unwrap_or(0)))
            .collect();
        for src in 0..pool_size {
            for dst in 0..pool_size {
                if src != dst {
                    pool[dst] = mix(pool[dst], hashmix(pool[src]));
                }
            }
        }
        for &extra in entropy_array.iter().skip(pool_size) {
            for word in pool.iter_mut() {
                *word = mix(*word, hashmix(extra));
            }
        }
        Self { pool }
    }

    /// `generate_state(n_words)` as uint32.
    pub fn generate_state(&self, n_words: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        (0..n_words)
            .map(|i| {
                let mut value = self.pool[i % self.pool.len()] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                value = value.wrapping_mul(hash_const);
                value ^ (value >> XSHIFT)
            })
            .collect()
    }
}

/// Python's `round(x, 6)`: the nearest double to the correctly rounded six-decimal value.
fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

const POOL_SIZE: usize = 24;
const CACHE_SIZE: usize = 45;
/// Far deeper than any tree over f32 sigmas at 1e-6 resolution gets; a guard against loops.
const MAX_DEPTH: u64 = 200;

struct Interval {
    start: f64,
    end: f64,
    parent: usize,
    is_left: bool,
    /// Set when split: the midpoint, the seed of the bridge noise, the children.
    split: Option<Split>,
}

struct Split {
    midway: f64,
    spawn_key: u64,
    depth: u64,
    w_seed: u32,
    left: usize,
    right: usize,
}

/// torchsde's `BrownianTree` over `[t0, t1]` for a float32 tensor of `numel` values.
pub struct BrownianTree {
    entropy: u64,
    numel: usize,
    intervals: Vec<Interval>,
    top_w: Arc<Vec<f32>>,
    last_interval: usize,
    /// Increments of recently computed intervals. Values do not depend on what is cached;
    /// torchsde keeps 45, first in first out, and so does this.
    cache: HashMap<usize, Arc<Vec<f32>>>,
    cache_order: VecDeque<usize>,
}

const TOP: usize = 0;

impl BrownianTree {
    /// A tree over `[t0, t1]` (`t0 < t1`) with entropy `seed`.
    pub fn new(t0: f64, t1: f64, seed: u64, numel: usize) -> Self {
        let states = SeedSequence::new(seed, &[], POOL_SIZE).generate_state(3);
        let mut top_w = TorchGenerator::manual_seed(u64::from(states[0])).randn(&[numel]);
        let scale = (t1 - t0).sqrt() as f32;
        top_w.iter_mut().for_each(|w| *w *= scale);
        let top = Interval {
            start: round6(t0),
            end: round6(t1),
            parent: TOP,
            is_left: false,
            split: None,
        };
        Self {
            entropy: seed,
            numel,
            intervals: vec![top],
            top_w: Arc::new(top_w),
            last_interval: TOP,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
        }
    }

    /// The increment `W(tb) - W(ta)`, `ta <= tb` (`BrownianInterval.__call__(ta, tb)`).
    pub fn increment(&mut self, ta: f64, tb: f64) -> Result<Vec<f32>, SamplingError> {
        let (start, end) = (self.intervals[TOP].start, self.intervals[TOP].end);
        // torchsde warns and clamps queries outside [t0, t1].
        let clamp = |t: f64| {
            if t < start {
                start
            } else if t > end {
                end
            } else {
                t
            }
        };
        let (ta, tb) = (clamp(ta), clamp(tb));
        if ta > tb {
            return Err(SamplingError::invalid(
                "brownian tree",
                format!("query times {ta} > {tb}"),
            ));
        }
        if ta == tb {
            return Ok(vec![0.0; self.numel]);
        }
        let mut found = Vec::new();
        self.locate(self.last_interval, round6(ta), round6(tb), &mut found, 0)?;
        let Some(&last) = found.last() else {
            return Err(SamplingError::invalid(
                "brownian tree",
                format!("no interval for [{ta}, {tb}]"),
            ));
        };
        self.last_interval = last;
        let mut w = self.w(found[0]).as_ref().clone();
        for &interval in &found[1..] {
            let wi = self.w(interval);
            w.iter_mut().zip(wi.iter()).for_each(|(a, b)| *a += b);
        }
        Ok(w)
    }

    /// `_loc_inner`: appends the intervals that tile `[ta, tb]`, splitting as needed.
    fn locate(
        &mut self,
        mut node: usize,
        mut ta: f64,
        tb: f64,
        out: &mut Vec<usize>,
        depth: u64,
    ) -> Result<(), SamplingError> {
        for _ in 0..MAX_DEPTH * 4 {
            let interval = &self.intervals[node];
            if ta < interval.start || tb > interval.end {
                node = interval.parent;
                continue;
            }
            if ta == interval.start && tb == interval.end {
                out.push(node);
                return Ok(());
            }
            let Some(split) = &interval.split else {
                if ta == interval.start {
                    self.split(node, tb)?;
                    node = self.children(node).0;
                } else {
                    self.split(node, ta)?;
                    node = self.children(node).1;
                }
                continue;
            };
            let (midway, left, right) = (split.midway, split.left, split.right);
            if tb <= midway {
                node = left;
            } else if ta >= midway {
                node = right;
            } else {
                if depth > MAX_DEPTH {
                    break;
                }
                self.locate(left, ta, midway, out, depth + 1)?;
                node = right;
                ta = midway;
            }
        }
        Err(SamplingError::invalid(
            "brownian tree",
            format!("could not locate [{ta}, {tb}]"),
        ))
    }

    fn children(&self, node: usize) -> (usize, usize) {
        self.intervals[node]
            .split
            .as_ref()
            .map_or((node, node), |s| (s.left, s.right))
    }

    /// `_split` of a halfway tree: split at the (rounded) middle, then keep splitting the child
    /// that holds `midway` until a midpoint lands on it.
    fn split(&mut self, mut node: usize, midway: f64) -> Result<(), SamplingError> {
        for _ in 0..MAX_DEPTH {
            let middle = 0.5 * (self.intervals[node].end + self.intervals[node].start);
            self.split_exact(node, middle)?;
            let (at, (left, right)) = (
                self.intervals[node]
                    .split
                    .as_ref()
                    .map_or(midway, |s| s.midway),
                self.children(node),
            );
            if midway > at {
                node = right;
            } else if midway < at {
                node = left;
            } else {
                return Ok(());
            }
        }
        Err(SamplingError::invalid(
            "brownian tree",
            format!("splitting toward {midway} does not converge"),
        ))
    }

    fn split_exact(&mut self, node: usize, midway: f64) -> Result<(), SamplingError> {
        let (spawn_key, depth) = if node == TOP {
            (0, 0)
        } else {
            let interval = &self.intervals[node];
            let parent = self.intervals[interval.parent]
                .split
                .as_ref()
                .map_or((0, 0), |s| (s.spawn_key, s.depth));
            // Python's keys are unbounded; 63 levels are 1e-6 steps over a range of 9e12.
            let key = parent
                .0
                .checked_mul(2)
                .and_then(|k| k.checked_add(u64::from(!interval.is_left)));
            let Some(key) = key else {
                return Err(SamplingError::invalid(
                    "brownian tree",
                    "deeper than 63 levels (sigmas too far apart)",
                ));
            };
            (key, parent.1 + 1)
        };
        let w_seed =
            SeedSequence::new(self.entropy, &[spawn_key, depth], POOL_SIZE).generate_state(4)[0];
        let (start, end) = (self.intervals[node].start, self.intervals[node].end);
        let left = self.intervals.len();
        self.intervals.push(Interval {
            start: round6(start),
            end: round6(midway),
            parent: node,
            is_left: true,
            split: None,
        });
        self.intervals.push(Interval {
            start: round6(midway),
            end: round6(end),
            parent: node,
            is_left: false,
            split: None,
        });
        self.intervals[node].split = Some(Split {
            midway: round6(midway),
            spawn_key,
            depth,
            w_seed,
            left,
            right: left + 1,
        });
        Ok(())
    }

    /// The increment over one interval: from the nearest known ancestor down, each child from its
    /// parent's by the Brownian bridge.
    fn w(&mut self, node: usize) -> Arc<Vec<f32>> {
        let mut chain = Vec::new();
        let mut current = node;
        let mut known = loop {
            if current == TOP {
                break self.top_w.clone();
            }
            if let Some(w) = self.cache.get(&current) {
                break w.clone();
            }
            chain.push(current);
            current = self.intervals[current].parent;
        };
        for &child in chain.iter().rev() {
            known = Arc::new(self.bridge(child, &known));
            if self.cache.len() >= CACHE_SIZE
                && let Some(oldest) = self.cache_order.pop_front()
            {
                self.cache.remove(&oldest);
            }
            self.cache.insert(child, known.clone());
            self.cache_order.push_back(child);
        }
        known
    }

    /// A child's increment given its parent's: the bridge mean plus noise from the parent's seed,
    /// `left = left_diff·W·(1/h) + sqrt(left_diff·right_diff/h)·noise`, `right = W - left`.
    fn bridge(&self, node: usize, parent_w: &[f32]) -> Vec<f32> {
        let interval = &self.intervals[node];
        let parent = &self.intervals[interval.parent];
        let Some(split) = &parent.split else {
            return parent_w.to_vec();
        };
        let h_reciprocal = 1.0 / (parent.end - parent.start);
        let left_diff = split.midway - parent.start;
        let right_diff = parent.end - split.midway;
        let std = (left_diff * right_diff * h_reciprocal).sqrt() as f32;
        let mut w = TorchGenerator::manual_seed(u64::from(split.w_seed)).randn(&[self.numel]);
        let (left_diff, h_reciprocal) = (left_diff as f32, h_reciprocal as f32);
        for (value, &wp) in w.iter_mut().zip(parent_w) {
            let left_w = left_diff * wp * h_reciprocal + std * *value;
            *value = if interval.is_left {
                left_w
            } else {
                wp - left_w
            };
        }
        w
    }
}

/// ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)`: unit-variance
/// noise `(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)` from one Brownian tree.
pub struct BrownianTreeNoiseSampler<B: Backend> {
    tree: BrownianTree,
    sign: f32,
    shape: [usize; 4],
    device: B::Device,
}

impl<B: Backend> BrownianTreeNoiseSampler<B> {
    /// A tree over `[sigma_min, sigma_max]` seeded with the KSampler seed.
    pub fn new(
        sigma_min: f32,
        sigma_max: f32,
        seed: u64,
        shape: [usize; 4],
        device: &B::Device,
    ) -> Self {
        let (t0, t1, sign) = if sigma_min < sigma_max {
            (sigma_min, sigma_max, 1.0)
        } else {
            (sigma_max, sigma_min, -1.0)
        };
        let numel = shape.iter().product();
        Self {
            tree: BrownianTree::new(f64::from(t0), f64::from(t1), seed, numel),
            sign,
            shape,
            device: device.clone(),
        }
    }
}

impl<B: Backend> NoiseSampler<B> for BrownianTreeNoiseSampler<B> {
    fn sample(&mut self, sigma: f32, sigma_next: f32) -> Result<Tensor<B, 4>, SamplingError> {
        let (t0, t1, sign) = if sigma < sigma_next {
            (sigma, sigma_next, 1.0)
        } else {
            (sigma_next, sigma, -1.0)
        };
        let mut w = self.tree.increment(f64::from(t0), f64::from(t1))?;
        let scale = (sigma_next - sigma).abs().sqrt();
        let flip = self.sign * sign;
        w.iter_mut().for_each(|v| *v = (*v * flip) / scale);
        Ok(Tensor::from_data(
            TensorData::new(w, self.shape),
            &self.device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_sequence_matches_numpy() {
        // np.random.SeedSequence(entropy, spawn_key=..., pool_size=24).generate_state(n)
        assert_eq!(
            SeedSequence::new(42, &[], 24).generate_state(3),
            [387_750_627, 2_536_650_517, 4_078_839_648]
        );
        assert_eq!(
            SeedSequence::new(0, &[0, 0], 24).generate_state(4),
            [245_430_115, 3_436_620_678, 4_120_055_464, 1_627_243_804]
        );
        assert_eq!(
            SeedSequence::new(123_456_789_012_345, &[5, 3], 24).generate_state(4),
            [184_000_377, 2_593_205_368, 3_726_529_454, 1_433_651_157]
        );
    }

    #[test]
    fn round6_is_pythons_round() {
        assert_eq!(
            round6(0.0078125),
            0.007812,
            "ties go to even, on the exact binary value"
        );
        assert_eq!(round6(14.614640235900879), 14.61464);
        assert_eq!(round6(2.5e-7), 0.0);
    }

    #[test]
    fn increments_add_up_over_adjacent_intervals() {
        let mut tree = BrownianTree::new(0.03, 14.6, 7, 64);
        let whole = tree.increment(0.5, 9.0).unwrap();
        let left = tree.increment(0.5, 3.0).unwrap();
        let right = tree.increment(3.0, 9.0).unwrap();
        for ((w, l), r) in whole.iter().zip(&left).zip(&right) {
            assert!((w - (l + r)).abs() < 1e-5, "{w} vs {l} + {r}");
        }
        assert_eq!(tree.increment(2.0, 2.0).unwrap(), vec![0.0; 64]);
        assert!(tree.increment(3.0, 2.0).is_err());
    }

    #[test]
    fn absurd_sigma_ranges_do_not_panic() {
        // 100 levels of left turns: spawn key 0 at depth 100, as in Python.
        let mut tree = BrownianTree::new(1e-3, 1e30, 1, 16);
        assert_eq!(tree.increment(1.0, 2.0).unwrap().len(), 16);
        assert_eq!(tree.increment(6e29, 9e29).unwrap().len(), 16);
    }
}
