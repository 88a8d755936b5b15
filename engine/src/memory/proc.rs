//! What the process holds, read from /proc (Linux): resident memory by kind, the mappings of a
//! file, and the host's available memory. Elsewhere these read as unknown (`None`).
#![forbid(unsafe_code)]

use crate::weights::FileIdentity;

/// Resident memory of this process, from /proc/self/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ResidentMemory {
    /// `RssAnon`: heap, stacks, anonymous mappings (what a host copy of weights would show in).
    pub anon: u64,
    /// `RssFile`: resident pages of mapped files (the model mappings' pages in the page cache).
    pub file: u64,
}

/// This process's resident memory, or `None` where /proc is not available.
pub fn resident_memory() -> Option<ResidentMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status(&status)
}

/// This process's peak resident memory (`VmHWM`: anonymous and file pages), or `None` where
/// /proc is not available.
pub fn peak_resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field(&status, "VmHWM:")
}

/// The largest anonymous resident memory (`RssAnon`) seen while it lives: a thread reads
/// /proc/self/status every millisecond (Linux has no peak of its own for anonymous memory), so
/// a peak shorter than that may be missed; buffers that live across a layer's product are not.
pub struct AnonPeak {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AnonPeak {
    /// Starts sampling; `None` where /proc is not available.
    pub fn start() -> Option<Self> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let first = resident_memory()?.anon;
        let peak = std::sync::Arc::new(AtomicU64::new(first));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("anon-peak".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(m) = resident_memory() {
                        p.fetch_max(m.anon, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
            .ok()?;
        Some(AnonPeak {
            peak,
            stop,
            thread: Some(thread),
        })
    }

    /// The peak so far (bytes), including a reading taken now.
    pub fn peak(&self) -> u64 {
        use std::sync::atomic::Ordering;
        if let Some(m) = resident_memory() {
            self.peak.fetch_max(m.anon, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for AnonPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn parse_status(status: &str) -> Option<ResidentMemory> {
    let field = |name: &str| status_field(status, name);
    Some(ResidentMemory {
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// How many separate mappings of the file `identity` this process has (from /proc/self/maps).
/// Adjacent lines that continue one mapping (the kernel splits a mapping into several areas when
/// parts of it change protection or locking) count once.
pub fn file_mappings(identity: &FileIdentity) -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(count_mappings(&maps, identity))
}

fn count_mappings(maps: &str, identity: &FileIdentity) -> usize {
    let (major, minor) = dev_major_minor(identity.dev);
    let mut count = 0;
    // (end address, file offset at end) of the previous matching area.
    let mut previous: Option<(u64, u64)> = None;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let parsed = (|| {
            let (start, end) = range.split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            let offset = u64::from_str_radix(offset, 16).ok()?;
            let (maj, min) = dev.split_once(':')?;
            let dev = (
                u64::from_str_radix(maj, 16).ok()?,
                u64::from_str_radix(min, 16).ok()?,
            );
            let inode: u64 = inode.parse().ok()?;
            Some((start, end, offset, dev, inode))
        })();
        let Some((start, end, offset, dev, inode)) = parsed else {
            continue;
        };
        if inode != identity.ino || dev != (major, minor) {
            previous = None;
            continue;
        }
        let continues = previous.is_some_and(|(prev_end, prev_offset_end)| {
            prev_end == start && prev_offset_end == offset
        });
        if !continues {
            count += 1;
        }
        previous = Some((end, offset + (end - start)));
    }
    count
}

/// Linux's encoding of a device number (`major`/`minor` in glibc's sys/sysmacros.h).
fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The host's memory, from /proc/meminfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// `MemAvailable`.
    pub available: u64,
    /// `MemTotal`.
    pub total: u64,
}

/// The host's available and total memory (MemAvailable, MemTotal from /proc/meminfo).
pub fn host_memory() -> Option<HostMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        Some(
            line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024,
        )
    };
    Some(HostMemory {
        available: field("MemAvailable:")?,
        total: field("MemTotal:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tweft\nRssAnon:\t    1024 kB\nRssFile:\t      16 kB\nRssShmem:\t0 kB\n";
        assert_eq!(
            parse_status(status),
            Some(ResidentMemory {
                anon: 1 << 20,
                file: 16 << 10
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn split_areas_of_one_mapping_count_once_and_other_files_not_at_all() {
        let identity = FileIdentity {
            dev: (8 << 8) | 1,
            ino: 42,
            size: 0,
            mtime_ns: 0,
        };
        let maps = "\
7f0000000000-7f0000100000 r--s 00000000 08:01 42   /m.gguf
7f0000100000-7f0000200000 r--s 00100000 08:01 42   /m.gguf
7f0000300000-7f0000400000 r--s 00000000 08:01 42   /m.gguf
7f0000400000-7f0000500000 r--s 00000000 08:01 43   /other.gguf
7f0000500000-7f0000600000 r--s 00100000 08:01 42   /m.gguf
7f0000600000-7f0000700000 r--s 00000000 08:02 42   /elsewhere.gguf
";
        // Lines 1+2 are one mapping split in two; line 3 is a second mapping; line 5 is a third
        // (it does not continue line 3's addresses).
        assert_eq!(count_mappings(maps, &identity), 3);
    }

    #[test]
    fn this_process_reports_its_memory() {
        if cfg!(target_os = "linux") {
            let rss = resident_memory().expect("/proc/self/status");
            assert!(rss.anon > 0);
            assert!(host_memory().is_some_and(|m| m.total >= m.available && m.total > 0));
        }
    }
}
