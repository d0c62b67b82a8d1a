//! What opening every image format shares: [`ImageError`], the one error of the image
//! readers; entering a file into its backing chain; the wording of refusals; and finding
//! a parent among the paths an image names, and checking it is the one it was made from.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::Chain;

/// Why an image cannot be opened (or, as an `io::Error` of kind `InvalidData`, read).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Its structures are damaged, hostile, or of a kind not supported.
    #[error("{format} image {}: {why}", path.display())]
    Damaged {
        format: &'static str,
        path: PathBuf,
        why: String,
    },
    /// It must be repaired first (a VHDX log to replay).
    #[error("{format} image {}: {why}", path.display())]
    NeedsRepair {
        format: &'static str,
        path: PathBuf,
        why: String,
    },
    /// None of the paths it names for its parent (or backing file) exists.
    #[error(
        "{format} image {}: its parent is not found (looked for {}); set `parent`",
        path.display(),
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ParentMissing {
        format: &'static str,
        path: PathBuf,
        looked: Vec<PathBuf>,
    },
    /// Its parent is not the image it was made from.
    #[error("{format} image {}: its parent {} {why}", path.display(), parent.display())]
    ParentChanged {
        format: &'static str,
        path: PathBuf,
        parent: PathBuf,
        why: String,
    },
    #[error("{}: the backing chain is longer than {}", path.display(), super::MAX_CHAIN)]
    ChainTooLong { path: PathBuf },
    #[error("{}: the backing chain loops back to this image", path.display())]
    ChainLoops { path: PathBuf },
    #[error("unknown image format {0:?}: raw, qcow2, vhd, vhdx or auto")]
    UnknownFormat(String),
}

impl From<ImageError> for io::Error {
    fn from(err: ImageError) -> Self {
        let kind = match &err {
            ImageError::Io(e) => return io::Error::new(e.kind(), err),
            ImageError::NeedsRepair { .. } => io::ErrorKind::Unsupported,
            ImageError::UnknownFormat(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

/// Enters the image at `path` into `chain` (refusing loops and long chains) and opens
/// it: its file and length.
pub(crate) fn enter(path: &Path, chain: &mut Chain) -> Result<(File, u64), ImageError> {
    chain.enter(path)?;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// The first of `candidates` for the parent of the `format` image `child` that exists
/// (`given`, the caller's, alone when set), or `ParentMissing`.
pub(crate) fn find_parent(
    format: &'static str,
    child: &Path,
    given: Option<&Path>,
    candidates: Vec<PathBuf>,
) -> Result<PathBuf, ImageError> {
    let looked = match given {
        Some(given) => vec![given.to_owned()],
        None => candidates,
    };
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(ImageError::ParentMissing {
            format,
            path: child.to_owned(),
            looked,
        }),
    }
}

/// A parent named `named` (a Windows or Unix path) seen from the image `child`:
/// absolute, or beside it.
pub(crate) fn beside(child: &Path, named: &str) -> PathBuf {
    let unix = named.trim_end_matches('\0').replace('\\', "/");
    let unix = unix.strip_prefix("./").unwrap_or(&unix);
    if Path::new(unix).is_absolute() {
        PathBuf::from(unix)
    } else {
        child.parent().unwrap_or(Path::new(".")).join(unix)
    }
}

/// `ParentChanged`: `parent` is not the image the `format` image `child` was made from.
pub(crate) fn parent_changed(
    format: &'static str,
    child: &Path,
    parent: &Path,
    why: impl std::fmt::Display,
) -> ImageError {
    ImageError::ParentChanged {
        format,
        path: child.to_owned(),
        parent: parent.to_owned(),
        why: why.to_string(),
    }
}

/// A refusal of the `format` image at `path`.
pub(crate) fn damaged(
    format: &'static str,
    path: &Path,
    why: impl std::fmt::Display,
) -> ImageError {
    ImageError::Damaged {
        format,
        path: path.to_owned(),
        why: why.to_string(),
    }
}
