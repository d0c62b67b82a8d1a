//! Where versions' manifests are kept: files `manifests/DISK/VERSION.manifest` of the
//! data dir, or objects of the same names beside the chunks in the bucket (`--store`).
//!
//! A manifest is durable before the version row that names it is committed: a file is
//! written to a temp file, fsynced and renamed; an object is whole or absent.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use hotate_engine::store::Objects;

use crate::error::ServerError;

/// The manifests of every disk.
#[derive(Debug)]
pub enum Manifests {
    /// Under this directory.
    Files(PathBuf),
    /// As objects of this backend.
    Objects(Arc<dyn Objects>),
}

fn file_name(version: &str) -> String {
    format!("{version}.manifest")
}

fn object_failed(e: hotate_engine::store::ObjectError) -> ServerError {
    ServerError::Io(std::io::Error::other(e.0))
}

impl Manifests {
    fn object_key(disk: &str, name: &str) -> String {
        format!("manifests/{disk}/{name}")
    }

    /// Writes a version's manifest durably (replacing one left by a commit that failed).
    ///
    /// # Errors
    /// On an IO or object store error (a full disk among others).
    pub fn write(&self, disk: &str, version: &str, bytes: Vec<u8>) -> Result<(), ServerError> {
        match self {
            Self::Files(root) => {
                let dir = root.join(disk);
                fs::create_dir_all(&dir)?;
                let path = dir.join(file_name(version));
                let temp = path.with_extension("manifest.tmp");
                let mut file = File::create(&temp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                fs::rename(&temp, &path)?;
                File::open(&dir)?.sync_all()?;
            }
            Self::Objects(objects) => {
                let key = Self::object_key(disk, &file_name(version));
                let bytes = Bytes::from(bytes);
                if !objects.create(&key, bytes.clone()).map_err(object_failed)? {
                    objects.delete(&key).map_err(object_failed)?;
                    objects.create(&key, bytes).map_err(object_failed)?;
                }
            }
        }
        Ok(())
    }

    /// A version's manifest bytes.
    ///
    /// # Errors
    /// When it is missing or cannot be read.
    pub fn read(&self, disk: &str, version: &str) -> Result<Vec<u8>, ServerError> {
        match self {
            Self::Files(root) => Ok(fs::read(root.join(disk).join(file_name(version)))?),
            Self::Objects(objects) => {
                let key = Self::object_key(disk, &file_name(version));
                objects.get(&key).map_err(object_failed)?.map_or_else(
                    || {
                        Err(ServerError::Io(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("manifest {key} is missing"),
                        )))
                    },
                    |bytes| Ok(bytes.to_vec()),
                )
            }
        }
    }

    /// Removes one of a disk's files (a manifest or a temp file); true when it went.
    pub fn remove(&self, disk: &str, name: &str) -> bool {
        match self {
            Self::Files(root) => fs::remove_file(root.join(disk).join(name)).is_ok(),
            Self::Objects(objects) => objects.delete(&Self::object_key(disk, name)).is_ok(),
        }
    }

    /// Removes a version's manifest.
    pub fn remove_version(&self, disk: &str, version: &str) {
        self.remove(disk, &file_name(version));
    }

    /// Removes every manifest of a disk.
    pub fn remove_disk(&self, disk: &str) {
        match self {
            Self::Files(root) => {
                let _ = fs::remove_dir_all(root.join(disk));
            }
            Self::Objects(_) => {
                if let Ok(names) = self.names() {
                    for (_, name) in names.iter().filter(|(d, _)| d == disk) {
                        self.remove(disk, name);
                    }
                }
            }
        }
    }

    /// Every file kept, as (disk, file name).
    ///
    /// # Errors
    /// When the directory or the bucket cannot be listed.
    pub fn names(&self) -> Result<Vec<(String, String)>, ServerError> {
        let mut names = Vec::new();
        match self {
            Self::Files(root) => {
                let Ok(disks) = fs::read_dir(root) else {
                    return Ok(names);
                };
                for disk in disks.flatten() {
                    let Ok(files) = fs::read_dir(disk.path()) else {
                        continue;
                    };
                    let disk = disk.file_name().to_string_lossy().into_owned();
                    for file in files.flatten() {
                        names.push((disk.clone(), file.file_name().to_string_lossy().into()));
                    }
                }
            }
            Self::Objects(objects) => objects
                .list("manifests/", &mut |key, _| {
                    let mut parts = key.splitn(3, '/').skip(1);
                    if let (Some(disk), Some(name)) = (parts.next(), parts.next()) {
                        names.push((disk.to_owned(), name.to_owned()));
                    }
                })
                .map_err(object_failed)?,
        }
        Ok(names)
    }

    /// Removes a disk's directory once it is empty (files only).
    pub fn tidy(&self, disk: &str) {
        if let Self::Files(root) = self {
            let _ = fs::remove_dir(root.join(disk));
        }
    }
}
