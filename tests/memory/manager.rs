//! The memory manager's policies on a device of fixed capacity: LRU eviction, partial eviction,
//! partial loads that stream the rest, `--lowvram`, `--novram`, `--gpu-only`, and that it never
//! keeps a model alive.
use super::{cache, cpu, small_model};
use std::sync::Arc;
use weft_engine::memory::{MemoryError, MemoryManager, MemoryMode, MemoryPolicy};
use weft_engine::patcher::{LoadOptions, ModelPatcher};
use weft_engine::weights::{MmapCache, WeightSource};
use weft_tests::B;

/// Three distinct model files of equal size, and their size on the device.
fn three_models(dir: &std::path::Path, cache: &MmapCache) -> (Vec<ModelPatcher<B>>, u64) {
    let models: Vec<_> = ["a.gguf", "b.gguf", "c.gguf"]
        .iter()
        .map(|name| {
            ModelPatcher::new(
                Arc::new(WeightSource::open_in(cache, small_model(dir, name)).unwrap()),
                cpu(),
                LoadOptions::default(),
            )
            .unwrap()
        })
        .collect();
    let size = models[0].full_bytes();
    (models, size)
}

fn manager(mode: MemoryMode, capacity: u64) -> MemoryManager<B> {
    MemoryManager::new(
        cpu(),
        MemoryPolicy {
            mode,
            reserve_bytes: 0,
            capacity: Some(capacity),
            ..Default::default()
        },
    )
}

#[test]
fn the_least_recently_used_model_is_offloaded_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (m, size) = three_models(dir.path(), &cache);
    let manager = manager(MemoryMode::Normal, 2 * size);
    manager.load_models(&[&m[0]]).unwrap();
    manager.load_models(&[&m[1]]).unwrap();
    assert_eq!((m[0].device_bytes(), m[1].device_bytes()), (size, size));
    manager.load_models(&[&m[2]]).unwrap();
    assert_eq!(
        [
            m[0].device_bytes(),
            m[1].device_bytes(),
            m[2].device_bytes()
        ],
        [0, size, size],
        "a (LRU) goes"
    );
    manager.load_models(&[&m[1]]).unwrap(); // b is now the most recent
    manager.load_models(&[&m[0]]).unwrap();
    assert_eq!(
        [
            m[0].device_bytes(),
            m[1].device_bytes(),
            m[2].device_bytes()
        ],
        [size, size, 0],
        "c (LRU) goes"
    );
    let loaded: Vec<_> = manager
        .loaded()
        .into_iter()
        .map(|l| l.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        loaded,
        ["c.gguf", "b.gguf", "a.gguf"],
        "least recently used first"
    );
}

#[test]
fn eviction_is_partial_when_part_is_enough_and_a_model_that_cannot_fit_loads_partly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (m, size) = three_models(dir.path(), &cache);
    let manager = manager(MemoryMode::Normal, size + size / 2);
    manager.load_models(&[&m[0]]).unwrap();
    manager.load_models(&[&m[1]]).unwrap();
    assert_eq!(m[1].device_bytes(), size);
    let kept = m[0].device_bytes();
    assert!(
        kept > 0 && kept <= size / 2,
        "a is offloaded only partly: keeps {kept} of {size}"
    );
    assert!(m[0].stats().mmap.tensors > 0);

    // Nothing else to evict and still too small: a partial load, the rest streams.
    let small = manager_with_one(&m[2], size / 3);
    assert!(m[2].device_bytes() <= size / 3);
    let streamed = m[2].stats().mmap.tensors;
    assert!(streamed > 0);
    let last = m[2].source().tensors().last().unwrap().clone();
    assert!(m[2].weight(&last.name).unwrap().read_back().unwrap() == m[2].source().bytes(&last));
    drop(small);
}

fn manager_with_one(model: &ModelPatcher<B>, capacity: u64) -> MemoryManager<B> {
    let manager = manager(MemoryMode::Normal, capacity);
    manager.load_models(&[model]).unwrap();
    manager
}

#[test]
fn lowvram_keeps_only_the_running_models_and_novram_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (m, size) = three_models(dir.path(), &cache);
    let low = manager(MemoryMode::LowVram, 10 * size);
    low.load_models(&[&m[0]]).unwrap();
    low.load_models(&[&m[1], &m[2]]).unwrap();
    assert_eq!(
        [
            m[0].device_bytes(),
            m[1].device_bytes(),
            m[2].device_bytes()
        ],
        [0, size, size]
    );

    let none = manager(MemoryMode::NoVram, 10 * size);
    none.load_models(&[&m[1]]).unwrap();
    assert_eq!(m[1].device_bytes(), 0);
    assert_eq!(m[1].stats().device.tensors, 0);
    let first = m[1].source().tensors()[0].clone();
    assert!(
        m[1].weight(&first.name).unwrap().read_back().unwrap() == m[1].source().bytes(&first),
        "streams from the mapping"
    );
}

#[test]
fn gpu_only_never_offloads_and_refuses_a_model_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (m, size) = three_models(dir.path(), &cache);
    let manager = manager(MemoryMode::GpuOnly, 2 * size);
    manager.load_models(&[&m[0], &m[1]]).unwrap();
    let err = manager.load_models(&[&m[2]]).unwrap_err();
    assert!(matches!(err, MemoryError::DoesNotFit { .. }));
    assert!(
        err.to_string().contains("c.gguf") && err.to_string().contains("--gpu-only"),
        "{err}"
    );
    assert_eq!(
        [
            m[0].device_bytes(),
            m[1].device_bytes(),
            m[2].device_bytes()
        ],
        [size, size, 0]
    );
}

#[test]
fn the_reserve_counts_against_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (m, size) = three_models(dir.path(), &cache);
    let manager = MemoryManager::<B>::new(
        cpu(),
        MemoryPolicy {
            mode: MemoryMode::Normal,
            reserve_bytes: size,
            capacity: Some(2 * size),
            ..Default::default()
        },
    );
    manager.load_models(&[&m[0]]).unwrap();
    manager.load_models(&[&m[1]]).unwrap();
    assert_eq!(
        (m[0].device_bytes(), m[1].device_bytes()),
        (0, size),
        "room for one model after the reserve"
    );
}

#[test]
fn the_manager_never_keeps_a_model_alive_and_release_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache();
    let (mut m, size) = three_models(dir.path(), &cache);
    let manager = manager(MemoryMode::Normal, 10 * size);
    manager.load_models(&[&m[0], &m[1]]).unwrap();
    assert_eq!(manager.loaded().len(), 2);
    let released = manager.release(&m[1]);
    assert_eq!(released.bytes, size);
    assert_eq!(manager.loaded().len(), 1);
    drop(m.remove(0));
    assert!(
        manager.loaded().is_empty(),
        "a dropped model is gone, device copy and all"
    );
    assert_eq!(
        cache.stats().in_use,
        2,
        "b and c still hold their mappings, a does not"
    );
}
