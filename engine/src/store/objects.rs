//! A chunk store over an object store (S3 and the stores that speak it): each chunk is
//! one object named by its hash and laid out as [`super::FsStore`] lays out its files.
//! The engine knows no network: the server hands it an [`Objects`] backend.
//!
//! An object store never shows half an object, so a put needs no temp file; it is
//! create-only, so two writers of one chunk cannot overwrite each other, and a chunk
//! counts as held only once read back whole and verified ([`ChunkStore::holds`]).

use bytes::Bytes;

use super::layout::{self, Layout};
use super::{ChunkStore, Paged, StoreError, Stored};
use crate::hash::Hash;

/// Why an object call failed: what was asked, and the backend's own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ObjectError(pub String);

/// A flat store of named objects. Calls block; every write is whole or absent.
pub trait Objects: Send + Sync + std::fmt::Debug + 'static {
    /// An object's bytes; `None` when absent.
    fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError>;
    /// An object's size; `None` when absent.
    fn size(&self, key: &str) -> Result<Option<u64>, ObjectError>;
    /// Creates an object unless one of that name exists; false when it existed.
    fn create(&self, key: &str, bytes: Bytes) -> Result<bool, ObjectError>;
    /// Creates several objects (as `create`, each), at once where the backend can; how
    /// many were new.
    fn create_many(&self, objects: Vec<(String, Bytes)>) -> Result<usize, ObjectError> {
        let mut new = 0;
        for (key, bytes) in objects {
            new += usize::from(self.create(&key, bytes)?);
        }
        Ok(new)
    }
    /// Deletes an object (nothing when absent).
    fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// Every object whose name starts with `prefix`, with its size.
    fn list(&self, prefix: &str, each: &mut dyn FnMut(&str, u64)) -> Result<(), ObjectError>;
}

impl<O: Objects + ?Sized> Objects for std::sync::Arc<O> {
    fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        (**self).get(key)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        (**self).size(key)
    }

    fn create(&self, key: &str, bytes: Bytes) -> Result<bool, ObjectError> {
        (**self).create(key, bytes)
    }

    fn create_many(&self, objects: Vec<(String, Bytes)>) -> Result<usize, ObjectError> {
        (**self).create_many(objects)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        (**self).delete(key)
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(&str, u64)) -> Result<(), ObjectError> {
        (**self).list(prefix, each)
    }
}

/// Chunks as objects `chunks/ab/cd/HASH` of an [`Objects`] backend; damaged ones move to
/// `quarantine/HASH.STAMP`.
#[derive(Debug)]
pub struct ObjectStore<O> {
    objects: O,
}

impl<O: Objects> ObjectStore<O> {
    pub fn new(objects: O) -> Self {
        Self { objects }
    }

    /// The backend, for what is not a chunk (manifests, locks).
    pub fn objects(&self) -> &O {
        &self.objects
    }

    /// The object name of a chunk.
    pub fn key_of(hash: &Hash) -> String {
        let hex = hash.to_string();
        format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4])
    }

    fn failed(&self, key: &str, e: ObjectError) -> StoreError {
        StoreError::Io {
            path: key.into(),
            source: std::io::Error::other(e.0),
        }
    }

    fn read(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        let key = Self::key_of(hash);
        self.objects.get(&key).map_err(|e| self.failed(&key, e))
    }
}

impl<O: Objects> ChunkStore for ObjectStore<O> {
    fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        let key = Self::key_of(hash);
        Ok(self
            .objects
            .size(&key)
            .map_err(|e| self.failed(&key, e))?
            .is_some())
    }

    fn get(&self, hash: &Hash, max_len: usize) -> Result<Bytes, StoreError> {
        layout::content(hash, max_len, |hash| self.read(hash))
    }

    fn get_with_pages(&self, hash: &Hash, max_len: usize) -> Result<Paged, StoreError> {
        layout::content_with_pages(hash, max_len, |hash| self.read(hash))
    }

    fn layout(&self, hash: &Hash) -> Result<Layout, StoreError> {
        let bytes = self.read(hash)?.ok_or(StoreError::NotFound(*hash))?;
        layout::layout(&bytes).map_err(|cause| StoreError::Corrupt {
            hash: *hash,
            at: *hash,
            cause: Box::new(cause),
        })
    }

    fn quarantine(&self, hash: &Hash) -> Result<(), StoreError> {
        let key = Self::key_of(hash);
        let Some(bytes) = self.objects.get(&key).map_err(|e| self.failed(&key, e))? else {
            return Ok(()); // Another server moved it first.
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let to = format!("quarantine/{hash}.{stamp}");
        self.objects
            .create(&to, bytes)
            .map_err(|e| self.failed(&to, e))?;
        self.objects.delete(&key).map_err(|e| self.failed(&key, e))
    }

    /// Puts the chunks at once; a patch's base is put before it (or was already).
    fn put_many(&self, chunks: &[Stored]) -> Result<usize, StoreError> {
        let encoded = |chunk: &Stored| {
            let (head, payload) = layout::encode(chunk);
            (
                Self::key_of(&chunk.hash()),
                Bytes::from([head.as_slice(), &payload].concat()),
            )
        };
        // In waves: a patch goes only once its base is out of the group's remainder,
        // so no reader ever finds a patch without its base.
        let mut remaining: Vec<&Stored> = chunks.iter().collect();
        let mut new = 0;
        while !remaining.is_empty() {
            let pending: std::collections::HashSet<Hash> =
                remaining.iter().map(|c| c.hash()).collect();
            let (wave, rest): (Vec<&Stored>, Vec<&Stored>) = remaining.into_iter().partition(|c| {
                // A patch naming itself is put as it is (reading it is refused).
                !matches!(c, Stored::Patch(p)
                        if p.delta().base != p.hash() && pending.contains(&p.delta().base))
            });
            if wave.is_empty() {
                return Err(StoreError::Io {
                    path: "chunks/".into(),
                    source: std::io::Error::other("patches in a group name each other"),
                });
            }
            new += self
                .objects
                .create_many(wave.into_iter().map(encoded).collect())
                .map_err(|e| self.failed("chunks/", e))?;
            remaining = rest;
        }
        Ok(new)
    }

    fn list(&self, each: &mut dyn FnMut(Hash, u64)) -> Result<(), StoreError> {
        self.objects
            .list("chunks/", &mut |key, size| {
                if let Some(hash) = key.rsplit('/').next().and_then(|n| n.parse().ok()) {
                    each(hash, size);
                }
            })
            .map_err(|e| self.failed("chunks/", e))
    }

    fn remove(&self, hash: &Hash) -> Result<u64, StoreError> {
        let key = Self::key_of(hash);
        let Some(size) = self.objects.size(&key).map_err(|e| self.failed(&key, e))? else {
            return Ok(0);
        };
        self.objects
            .delete(&key)
            .map_err(|e| self.failed(&key, e))?;
        Ok(size)
    }
}

/// Objects kept in memory: the backend of tests.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: std::sync::Mutex<std::collections::BTreeMap<String, Bytes>>,
}

impl MemoryObjects {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Objects for MemoryObjects {
    fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        Ok(self.lock().get(key).cloned())
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        Ok(self.lock().get(key).map(|b| b.len() as u64))
    }

    fn create(&self, key: &str, bytes: Bytes) -> Result<bool, ObjectError> {
        let mut objects = self.lock();
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_owned(), bytes);
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.lock().remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(&str, u64)) -> Result<(), ObjectError> {
        for (key, bytes) in self.lock().range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            each(key, bytes.len() as u64);
        }
        Ok(())
    }
}

/// The checks every [`Objects`] backend passes, and the chunk store contract over it.
#[cfg(any(test, feature = "contract"))]
#[allow(clippy::unwrap_used, clippy::missing_panics_doc)]
pub mod contract {
    use super::*;

    /// Runs the object checks, then the chunk store contract, on `open()`'s fresh,
    /// empty backends.
    ///
    /// # Panics
    /// When a check fails.
    pub fn check<O: Objects>(open: &dyn Fn() -> O) {
        let objects = open();
        assert_eq!(objects.get("a/1").unwrap(), None);
        assert_eq!(objects.size("a/1").unwrap(), None);
        assert!(objects.create("a/1", Bytes::from_static(b"one")).unwrap());
        assert!(
            !objects.create("a/1", Bytes::from_static(b"two")).unwrap(),
            "create-only"
        );
        assert_eq!(objects.get("a/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(objects.size("a/1").unwrap(), Some(3));
        assert!(objects.create("a/2", Bytes::new()).unwrap());
        assert!(objects.create("b/1", Bytes::from_static(b"x")).unwrap());
        let mut listed = Vec::new();
        objects
            .list("a/", &mut |key, size| listed.push((key.to_owned(), size)))
            .unwrap();
        listed.sort();
        assert_eq!(listed, [("a/1".to_owned(), 3), ("a/2".to_owned(), 0)]);
        objects.delete("a/1").unwrap();
        objects.delete("a/1").unwrap();
        assert_eq!(objects.get("a/1").unwrap(), None);

        super::super::contract::round_trips_interesting_sizes(&ObjectStore::new(open()));
        super::super::contract::keeps_patches_over_their_bases(&ObjectStore::new(open()));
        let store = ObjectStore::new(open());
        let chunk = crate::block::VerifiedChunk::from_hashed(
            Hash::of(b"held"),
            Bytes::from_static(b"held"),
            1,
        );
        assert!(store.put(&chunk).unwrap());
        assert!(!store.put(&chunk).unwrap(), "stored once");
        let mut held = Vec::new();
        store.list(&mut |hash, _| held.push(hash)).unwrap();
        assert_eq!(held, [chunk.hash()]);
        // A damaged chunk is quarantined and no longer held.
        let key = ObjectStore::<O>::key_of(&chunk.hash());
        store.objects().delete(&key).unwrap();
        store
            .objects()
            .create(&key, Bytes::from_static(b"\0damaged"))
            .unwrap();
        assert_eq!(store.holds(&chunk.hash(), 1 << 20).unwrap(), None);
        assert!(!store.has(&chunk.hash()).unwrap());
        let mut quarantined = 0;
        store
            .objects()
            .list("quarantine/", &mut |_, _| quarantined += 1)
            .unwrap();
        assert_eq!(quarantined, 1);
        assert!(store.put(&chunk).unwrap(), "stored again");
        assert_eq!(store.get(&chunk.hash(), 1 << 20).unwrap(), &b"held"[..]);
        assert!(store.remove(&chunk.hash()).unwrap() > 0);
        assert_eq!(store.remove(&chunk.hash()).unwrap(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_in_memory_pass_the_store_contract() {
        contract::check(&MemoryObjects::default);
    }
}
