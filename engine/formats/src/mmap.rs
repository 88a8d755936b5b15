//! Read-only file mappings: the one host copy of model weights.
//!
//! Architecture Invariant: a [`MappedFile`] only ever hands out `&[u8]`; nothing in weft can
//! write through it (the mapping is `PROT_READ`, the type has no mutable accessor).
use crate::FormatError;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What identifies a file's contents for caching: same device, inode, size and mtime means
/// the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        FileIdentity {
            dev,
            ino,
            size: meta.len(),
            mtime_ns,
        }
    }
}

struct Inner {
    path: PathBuf,
    identity: FileIdentity,
    /// `None` for an empty file (which cannot be mapped).
    map: Option<Mmap>,
}

/// A shared, read-only mapping of a whole file. Cloning shares the mapping.
#[derive(Clone)]
pub struct MappedFile {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.inner.path)
            .field("len", &self.len())
            .finish()
    }
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            return Err(FormatError::io(
                path,
                std::io::Error::other("is a directory"),
            ));
        }
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only. Another process truncating the file while it is
            // mapped would fault on access; that is the accepted contract of mapping model files
            // (llama.cpp, safetensors and ComfyUI make the same one).
            Some(unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?)
        };
        Ok(MappedFile {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                identity: FileIdentity::of(&meta),
                map,
            }),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.inner.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn identity(&self) -> FileIdentity {
        self.inner.identity
    }

    /// True when both handles share one mapping.
    pub fn same_mapping(&self, other: &MappedFile) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Number of live handles to this mapping.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}
