//! One mapping per file per process, counted in /proc/self/maps: two model handles on one file
//! share it, dropping them keeps it, and the counter does see a second mapping when one exists.
use super::{cache, cpu, small_model};
use std::sync::Arc;
use weft_engine::memory::proc::file_mappings;
use weft_engine::patcher::{LoadOptions, ModelPatcher};
use weft_engine::weights::{MappedFile, WeightSource};
use weft_tests::B;

#[test]
fn two_model_handles_on_one_file_share_one_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "shared.gguf");
    let cache = cache();
    let a = ModelPatcher::<B>::new(
        Arc::new(WeightSource::open_in(&cache, &path).unwrap()),
        cpu(),
        LoadOptions::default(),
    )
    .unwrap();
    let b = ModelPatcher::<B>::new(
        Arc::new(WeightSource::open_in(&cache, &path).unwrap()),
        cpu(),
        LoadOptions::default(),
    )
    .unwrap();
    assert!(
        !a.shares_model_with(&b),
        "two loads are two models (own device copies)"
    );
    assert!(a.source().same_mapping(b.source()), "… on one mapping");
    a.load(None).unwrap();
    b.load(None).unwrap();
    let identity = a.source().mapping().identity();
    if cfg!(target_os = "linux") {
        assert_eq!(file_mappings(&identity), Some(1));
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.hits, stats.live_mappings, stats.in_use),
        (1, 1, 1, 1)
    );

    // Every model gone: the mapping stays for the next load, which is a hit.
    drop((a, b));
    assert_eq!(cache.stats().in_use, 0);
    if cfg!(target_os = "linux") {
        assert_eq!(
            file_mappings(&identity),
            Some(1),
            "dropping the models must not unmap"
        );
    }
    let again = WeightSource::open_in(&cache, &path).unwrap();
    assert_eq!(cache.stats().hits, 2);
    if cfg!(target_os = "linux") {
        // The counter is not blind: a mapping made behind the cache's back shows as a second one.
        let rogue = MappedFile::open(&path).unwrap();
        assert_eq!(file_mappings(&identity), Some(2));
        drop(rogue);
        assert_eq!(file_mappings(&identity), Some(1));
    }
    drop(again);
}

#[test]
fn the_process_cache_serves_every_opener_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_model(dir.path(), "global.gguf");
    let first = ModelPatcher::<B>::open(&path, cpu(), LoadOptions::default()).unwrap();
    let second = ModelPatcher::<B>::open(&path, cpu(), LoadOptions::default()).unwrap();
    assert!(first.source().same_mapping(second.source()));
    if cfg!(target_os = "linux") {
        assert_eq!(file_mappings(&first.source().mapping().identity()), Some(1));
    }
}
