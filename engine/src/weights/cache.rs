//! [`MmapCache`]: one read-only mapping per file per process, shared by every model that reads it,
//! and kept after the last model drops it (under a bounded LRU policy) so that a reload is a hit.
use super::{FileIdentity, MappedFile, WeightsError};
use std::any::{Any, TypeId};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// How many idle mappings the cache keeps. Mappings in use (a model holds a handle) are never
/// unmapped: evicting one would let the next open map the file a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// At most this many mappings, counting those in use.
    pub max_files: usize,
    /// At most this many mapped bytes, counting those in use.
    pub max_bytes: u64,
}

impl Default for CachePolicy {
    /// 32 files, 256 GiB: mappings cost address space and reclaimable page cache, not RAM, so the
    /// bound is there for the address space and the file descriptors' sake.
    fn default() -> Self {
        CachePolicy {
            max_files: 32,
            max_bytes: 256 << 30,
        }
    }
}

/// What the cache has done since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Opens served by an existing mapping.
    pub hits: u64,
    /// Opens that mapped the file.
    pub misses: u64,
    /// Idle mappings dropped by the policy (or [`MmapCache::trim`]).
    pub evictions: u64,
    /// Mappings the cache holds now.
    pub live_mappings: usize,
    /// Bytes those mappings cover.
    pub bytes_mapped: u64,
    /// Of those mappings, how many a model still holds.
    pub in_use: usize,
}

struct Entry {
    identity: FileIdentity,
    // Declared before `map`: fields drop in order, so whatever is attached to a mapping (a CUDA
    // host registration) is released before the mapping can be unmapped.
    attachments: Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
    map: MappedFile,
    last_used: u64,
}

impl Entry {
    /// Only the cache holds the mapping.
    fn is_idle(&self) -> bool {
        self.map.handle_count() == 1
    }
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    tick: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

/// One mapping per file per process, keyed by [`FileIdentity`] (device, inode, size, mtime): the
/// same file reached by two paths, or opened by two models, shares one mapping; a file rewritten
/// in place gets a new one.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("m.bin");
/// # std::fs::write(&path, b"weights").unwrap();
/// use weft_engine::weights::{CachePolicy, MmapCache};
/// let cache = MmapCache::new(CachePolicy::default());
/// let a = cache.open(&path).unwrap();
/// drop(a); // the model is gone; the mapping stays
/// let b = cache.open(&path).unwrap();
/// assert_eq!((cache.stats().misses, cache.stats().hits), (1, 1));
/// # drop(b);
/// ```
pub struct MmapCache {
    policy: CachePolicy,
    inner: Mutex<Inner>,
}

impl MmapCache {
    /// An empty cache with `policy`.
    pub fn new(policy: CachePolicy) -> Self {
        MmapCache {
            policy,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The process's cache (default policy): what loaders use, so that every node of every run
    /// shares one mapping per file.
    pub fn global() -> &'static MmapCache {
        static GLOBAL: OnceLock<MmapCache> = OnceLock::new();
        GLOBAL.get_or_init(|| MmapCache::new(CachePolicy::default()))
    }

    /// The policy it was created with.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the entry list inconsistent (every update is
        // a single push or remove), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A shared handle to `path`'s mapping: the existing one if the file is unchanged, else a new one.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<MappedFile, WeightsError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|error| WeightsError::Io {
            path: path.to_owned(),
            error,
        })?;
        let identity = FileIdentity::of(&meta);
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(entry) = inner.entries.iter_mut().find(|e| e.identity == identity) {
            entry.last_used = tick;
            let users = entry.map.handle_count() - 1; // besides the cache
            let map = entry.map.clone();
            inner.hits += 1;
            tracing::info!(
                "mmap cache hit: {} ({}, {users} other users)",
                path.display(),
                human_bytes(map.len() as u64)
            );
            return Ok(map);
        }
        // Mapping under the lock keeps two threads from mapping the same file twice; mapping is a
        // system call that does not read the file, so the lock is held briefly.
        let map = MappedFile::open(path)?;
        inner.misses += 1;
        tracing::info!(
            "mmap cache miss: mapped {} ({})",
            path.display(),
            human_bytes(map.len() as u64)
        );
        // The file may have changed between the stat and the open: key by what was mapped.
        let identity = map.identity();
        if let Some(existing) = inner.entries.iter_mut().find(|e| e.identity == identity) {
            existing.last_used = tick;
            return Ok(existing.map.clone());
        }
        inner.entries.push(Entry {
            identity,
            attachments: Vec::new(),
            map: map.clone(),
            last_used: tick,
        });
        self.evict(&mut inner, Some(path));
        Ok(map)
    }

    /// Drops idle mappings, least recently used first, until the policy holds. Idle mappings of
    /// `replaced`'s path with another identity (the file was rewritten) go first: they can never
    /// be hit again.
    fn evict(&self, inner: &mut Inner, replaced: Option<&Path>) {
        if let Some(path) = replaced {
            let before = inner.entries.len();
            let newest = inner.entries.last().map(|e| e.identity);
            inner
                .entries
                .retain(|e| !(e.is_idle() && e.map.path() == path && Some(e.identity) != newest));
            inner.evictions += (before - inner.entries.len()) as u64;
        }
        loop {
            let bytes: u64 = inner.entries.iter().map(|e| e.map.len() as u64).sum();
            if inner.entries.len() <= self.policy.max_files && bytes <= self.policy.max_bytes {
                return;
            }
            let Some(victim) = inner
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_idle())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                // Everything left is in use; the policy bounds idle mappings only.
                return;
            };
            let entry = inner.entries.remove(victim);
            tracing::info!(
                "mmap cache: unmapped idle {} ({})",
                entry.map.path().display(),
                human_bytes(entry.map.len() as u64)
            );
            inner.evictions += 1;
        }
    }

    /// Unmaps every idle mapping (the memory manager calls it when asked to free everything).
    pub fn trim(&self) {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| !e.is_idle());
        inner.evictions += (before - inner.entries.len()) as u64;
    }

    /// The counters and what is mapped now.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            evictions: inner.evictions,
            live_mappings: inner.entries.len(),
            bytes_mapped: inner.entries.iter().map(|e| e.map.len() as u64).sum(),
            // The cache's own handle does not count.
            in_use: inner.entries.iter().filter(|e| !e.is_idle()).count(),
        }
    }

    /// Whether `map` is the mapping this cache holds for its file.
    pub fn contains(&self, map: &MappedFile) -> bool {
        self.lock().entries.iter().any(|e| e.map.same_mapping(map))
    }

    /// A value tied to `map`'s life in the cache (made by `make` on first use), or `None` when the
    /// mapping is not this cache's. Used for per-mapping device state such as a CUDA host
    /// registration, which is released just before the mapping is unmapped.
    ///
    /// `make` must not keep a clone of the mapping: that would keep it "in use" forever.
    pub fn attachment<T: Any + Send + Sync>(
        &self,
        map: &MappedFile,
        make: impl FnOnce(&MappedFile) -> T,
    ) -> Option<Arc<T>> {
        let mut inner = self.lock();
        let entry = inner.entries.iter_mut().find(|e| e.map.same_mapping(map))?;
        let type_id = TypeId::of::<T>();
        if let Some((_, existing)) = entry.attachments.iter().find(|(t, _)| *t == type_id) {
            return existing.clone().downcast().ok();
        }
        let value = Arc::new(make(&entry.map));
        entry.attachments.push((type_id, value.clone()));
        Some(value)
    }
}

/// `1.50 GiB`, `12.0 MiB`, `512 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        path
    }

    #[test]
    fn a_second_open_shares_the_mapping_even_by_another_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "a.bin", 4096);
        let link = dir.path().join("link.bin");
        std::fs::hard_link(&path, &link).unwrap();
        let cache = MmapCache::new(CachePolicy::default());
        let a = cache.open(&path).unwrap();
        let b = cache.open(&link).unwrap();
        assert!(a.same_mapping(&b));
        let stats = cache.stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.live_mappings, stats.in_use),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn dropping_every_handle_keeps_the_mapping_for_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "a.bin", 4096);
        let cache = MmapCache::new(CachePolicy::default());
        let first = cache.open(&path).unwrap();
        let first_ptr = first.bytes().as_ptr();
        drop(first);
        assert_eq!(cache.stats().in_use, 0);
        assert_eq!(cache.stats().live_mappings, 1);
        let again = cache.open(&path).unwrap();
        assert_eq!(
            again.bytes().as_ptr(),
            first_ptr,
            "a hit returns the same mapping"
        );
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn the_policy_evicts_idle_mappings_least_recently_used_first_and_never_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..4)
            .map(|i| file(dir.path(), &format!("{i}.bin"), 1000))
            .collect();
        let cache = MmapCache::new(CachePolicy {
            max_files: 2,
            max_bytes: u64::MAX,
        });
        let held = cache.open(&paths[0]).unwrap();
        drop(cache.open(&paths[1]).unwrap());
        drop(cache.open(&paths[2]).unwrap()); // evicts 1 (idle, oldest); 0 is held
        let s = cache.stats();
        assert_eq!((s.live_mappings, s.evictions), (2, 1));
        assert!(cache.contains(&held));
        drop(cache.open(&paths[3]).unwrap()); // evicts 2
        assert!(cache.contains(&held));
        assert_eq!(cache.stats().evictions, 2);
        // Byte bound: two 1000-byte files do not fit in 1500 bytes, the idle one goes.
        let small = MmapCache::new(CachePolicy {
            max_files: 10,
            max_bytes: 1500,
        });
        drop(small.open(&paths[0]).unwrap());
        let _b = small.open(&paths[1]).unwrap();
        assert_eq!(small.stats().live_mappings, 1);
    }

    #[test]
    fn a_rewritten_file_gets_a_new_mapping_and_the_stale_idle_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "a.bin", 100);
        let cache = MmapCache::new(CachePolicy::default());
        drop(cache.open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        file(dir.path(), "a.bin", 200);
        let b = cache.open(&path).unwrap();
        assert_eq!(b.len(), 200);
        let s = cache.stats();
        assert_eq!((s.misses, s.live_mappings, s.evictions), (2, 1, 1));
    }

    #[test]
    fn attachments_live_with_the_mapping_and_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "a.bin", 100);
        let cache = MmapCache::new(CachePolicy::default());
        let map = cache.open(&path).unwrap();
        let mut made = 0;
        let a = cache.attachment(&map, |m| {
            made += 1;
            m.len()
        });
        let b = cache.attachment::<usize>(&map, |_| unreachable!("made once"));
        assert_eq!((made, *a.unwrap(), *b.unwrap()), (1, 100, 100));
        let outsider = MappedFile::open(&path).unwrap();
        assert!(cache.attachment(&outsider, |m| m.len()).is_none());
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let cache = MmapCache::new(CachePolicy::default());
        let err = cache.open("/nonexistent/model.gguf").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }
}
