//! Image sources: where the pipeline reads a differential disk from.
//!
//! A source knows its virtual size, which extents may hold data (the rest reads as
//! zeros and is never read), and reads at an offset, or hands out the image in place
//! when it already lives in memory. `raw` is the whole disk as a file;
//! overlay formats that hold only changed blocks (qcow2, VHDX) implement the same trait.

mod raw;

use std::io;
use std::ops::Range;

use bytes::Bytes;

use crate::direct_io::AlignedBuf;

pub use raw::RawImage;

/// A disk image the pipeline can read block by block, from several threads at once.
pub trait ImageSource: Send + Sync {
    /// The virtual size of the disk in bytes.
    fn size(&self) -> u64;

    /// Sorted, disjoint byte ranges that may hold data; everything else is zeros.
    ///
    /// # Errors
    /// On an IO error while probing.
    fn data_extents(&self) -> io::Result<Vec<Range<u64>>>;

    /// The bytes at `offset` in place, where the image lives in memory (a raw file on
    /// tmpfs): the pipeline then uses them instead of reading copies. `None` (the
    /// default) for images on a device.
    ///
    /// # Errors
    /// As [`ImageSource::read_at`].
    fn map_at(&self, _offset: u64, _len: usize) -> Option<io::Result<Bytes>> {
        None
    }

    /// Reads exactly `len` bytes at `offset` (a multiple of the block size) into `buf`.
    ///
    /// # Errors
    /// On an IO error, or `UnexpectedEof` when the image ends early.
    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()>;
}
