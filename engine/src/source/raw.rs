//! The raw format: the differential disk is the whole updated disk as one file.
//!
//! Read unbuffered from a device; mapped in place when the file lives in memory (tmpfs),
//! where a read would only copy the page cache.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::ImageSource;
use crate::direct_io::{AlignedBuf, PositionalFile};

/// A raw disk image read unbuffered, its holes (`SEEK_DATA`/`SEEK_HOLE`) skipped.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    file: PositionalFile,
    size: u64,
}

impl RawImage {
    /// Opens a raw image: a file, or on Windows a volume or physical disk.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a regular file.
    pub fn open(path: &Path) -> io::Result<Self> {
        if !crate::direct_io::is_device_path(path) && !std::fs::metadata(path)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let file = PositionalFile::open(path)?;
        let size = file.file_len()?;
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ImageSource for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        self.file.data_extents()
    }

    fn layers(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn map_at(&self, offset: u64, len: usize) -> Option<io::Result<Bytes>> {
        self.file.is_in_memory().then(|| {
            self.file
                .map_at(offset, len)
                .map(Bytes::from_owner)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
        })
    }

    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()> {
        let got = self.file.read_at(offset, len, buf)?;
        if got < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ended at byte {} while reading {len} bytes at {offset}",
                    self.path.display(),
                    offset + got as u64
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{SIZES, pattern};

    #[test]
    fn reads_exactly_or_reports_the_early_end() {
        let dir = tempfile::tempdir().unwrap();
        for &size in SIZES {
            let path = dir.path().join(format!("raw{size}"));
            std::fs::write(&path, pattern(size, 9)).unwrap();
            let image = RawImage::open(&path).unwrap();
            assert_eq!(image.size(), size as u64);
            let mut buf = AlignedBuf::zeroed(1);
            image.read_at(0, size, &mut buf).unwrap();
            assert_eq!(&buf[..], &pattern(size, 9)[..]);
            let err = image.read_at(0, size + 1, &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
        assert!(RawImage::open(dir.path()).is_err());
        assert!(RawImage::open(&dir.path().join("missing")).is_err());
    }
}
