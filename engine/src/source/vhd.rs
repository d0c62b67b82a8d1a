//! The VHD format (Virtual PC, QEMU's `vpc`), fixed and dynamic disks: a checksummed
//! 512-byte footer at the end of the file (its copy at the start for dynamic disks), and
//! for a dynamic disk a checksummed header locating the block allocation table (BAT),
//! whose entries give each block's sector, or none (the block reads as zeros). Each
//! allocated block is a sector bitmap followed by the block's data. Differencing VHD
//! images are refused with a clear error for now.
//!
//! Every field is checked against the file before use; the BAT must lie within it.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{ImageSource, read_exact_at};
use crate::direct_io::AlignedBuf;

/// `conectix`, the footer's cookie.
pub const COOKIE: [u8; 8] = *b"conectix";
const SPARSE_COOKIE: [u8; 8] = *b"cxsparse";
const FIXED: u32 = 2;
const DYNAMIC: u32 = 3;
const DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// The one's complement of the byte sum, with the checksum field (at `at`) zeroed.
fn checksum_ok(bytes: &[u8], at: usize) -> bool {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum == be32(bytes, at)
}

/// A fixed or dynamic VHD image.
#[derive(Debug)]
pub struct VhdImage {
    path: PathBuf,
    file: File,
    file_len: u64,
    size: u64,
    /// Dynamic disks: the block size and each block's first sector (or `UNALLOCATED`).
    block_size: u64,
    bat: Vec<u32>,
    /// Bytes of the sector bitmap before each block's data.
    bitmap_bytes: u64,
    fixed: bool,
}

impl VhdImage {
    /// Opens a fixed or dynamic VHD image.
    ///
    /// # Errors
    /// `InvalidData` for a damaged or hostile image, `Unsupported` for a differencing one.
    pub fn open(path: &Path) -> io::Result<Self> {
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("VHD image {}: {why}", path.display()),
            )
        };
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        if file_len < 512 {
            return Err(bad("shorter than a VHD footer".into()));
        }
        let mut footer = [0u8; 512];
        read_exact_at(&file, &mut footer, file_len - 512)?;
        if footer[..8] != COOKIE {
            // Some writers leave a 511-byte footer; a dynamic disk also has a copy first.
            read_exact_at(&file, &mut footer, 0)?;
            if footer[..8] != COOKIE {
                return Err(bad("no VHD footer".into()));
            }
        }
        if !checksum_ok(&footer, 64) {
            return Err(bad("the footer's checksum is wrong".into()));
        }
        let size = be64(&footer, 48);
        let kind = be32(&footer, 60);
        if size == 0 || size > (2040u64 << 30) {
            return Err(bad(format!("virtual size {size}")));
        }
        let mut image = Self {
            path: path.to_owned(),
            file,
            file_len,
            size,
            block_size: 0,
            bat: Vec::new(),
            bitmap_bytes: 0,
            fixed: kind == FIXED,
        };
        match kind {
            FIXED => {
                if file_len < size + 511 {
                    return Err(bad("the file is shorter than its disk".into()));
                }
            }
            DYNAMIC => image
                .read_dynamic_header(be64(&footer, 16))
                .map_err(|e| bad(e.to_string()))?,
            DIFFERENCING => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "VHD image {}: differencing VHD images are not supported yet; convert the chain with `qemu-img convert -O qcow2`",
                        path.display()
                    ),
                ));
            }
            other => return Err(bad(format!("unknown disk type {other}"))),
        }
        Ok(image)
    }

    fn read_dynamic_header(&mut self, offset: u64) -> io::Result<()> {
        if offset.saturating_add(1024) > self.file_len {
            return Err(io::Error::other("the dynamic header lies outside the file"));
        }
        let mut header = [0u8; 1024];
        read_exact_at(&self.file, &mut header, offset)?;
        if header[..8] != SPARSE_COOKIE || !checksum_ok(&header, 36) {
            return Err(io::Error::other("the dynamic header is damaged"));
        }
        let table = be64(&header, 16);
        let entries = u64::from(be32(&header, 28));
        let block_size = u64::from(be32(&header, 32));
        if !block_size.is_power_of_two() || !(512..=(256 << 20)).contains(&block_size) {
            return Err(io::Error::other(format!("block size {block_size}")));
        }
        if entries < self.size.div_ceil(block_size) {
            return Err(io::Error::other("the BAT is too small for the disk"));
        }
        if table.saturating_add(entries * 4) > self.file_len {
            return Err(io::Error::other("the BAT lies outside the file"));
        }
        let mut bytes = vec![0u8; (self.size.div_ceil(block_size) * 4) as usize];
        read_exact_at(&self.file, &mut bytes, table)?;
        self.bat = bytes.chunks_exact(4).map(|w| be32(w, 0)).collect();
        self.block_size = block_size;
        self.bitmap_bytes = (block_size / 512).div_ceil(8).div_ceil(512) * 512;
        for (index, &sector) in self.bat.iter().enumerate() {
            if sector != UNALLOCATED && u64::from(sector) * 512 + self.bitmap_bytes >= self.file_len
            {
                return Err(io::Error::other(format!(
                    "block {index} lies outside the file"
                )));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This file's bytes at `at`, zeros past its end.
    fn read_own(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        let available = self.file_len.saturating_sub(at).min(out.len() as u64) as usize;
        read_exact_at(&self.file, &mut out[..available], at)?;
        out[available..].fill(0);
        Ok(())
    }
}

impl ImageSource for VhdImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        if self.fixed {
            return Ok(std::iter::once(0..self.size).collect());
        }
        let mut out: Vec<Range<u64>> = Vec::new();
        for (index, &sector) in self.bat.iter().enumerate() {
            if sector != UNALLOCATED {
                let start = index as u64 * self.block_size;
                let range = start..(start + self.block_size).min(self.size);
                match out.last_mut() {
                    Some(last) if last.end == range.start => last.end = range.end,
                    _ => out.push(range),
                }
            }
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()> {
        if buf.capacity() < len {
            *buf = AlignedBuf::zeroed(len);
        }
        if offset.saturating_add(len as u64) > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {len} bytes at {offset} run past the disk's {} bytes",
                    self.path.display(),
                    self.size
                ),
            ));
        }
        let out = &mut buf.spare_mut()[..len];
        if self.fixed {
            self.read_own(out, offset)?;
        } else {
            let mut done = 0usize;
            while done < len {
                let guest = offset + done as u64;
                let (index, within) = (guest / self.block_size, guest % self.block_size);
                let take = ((self.block_size - within) as usize).min(len - done);
                let piece = &mut out[done..done + take];
                match self.bat[index as usize] {
                    UNALLOCATED => piece.fill(0),
                    sector => {
                        let at = u64::from(sector) * 512 + self.bitmap_bytes + within;
                        self.read_own(piece, at)?;
                    }
                }
                done += take;
            }
        }
        buf.set_len(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::source::{Format, open};

    #[test]
    fn fixed_and_dynamic_images_made_by_qemu_read_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; (9 << 20) + (512 << 10)];
        for (i, block) in data.chunks_mut(1 << 20).enumerate() {
            if i % 3 != 1 {
                block[..512].fill(i as u8 + 1);
                block[70_000..70_008].copy_from_slice(&(i as u64).to_le_bytes());
            }
        }
        std::fs::write(&raw, &data).unwrap();
        for subformat in ["dynamic", "fixed"] {
            let vhd = dir.path().join(format!("{subformat}.vhd"));
            let out = Command::new("qemu-img")
                .args(["convert", "-O", "vpc", "-o"])
                .arg(format!("subformat={subformat},force_size=on"))
                .args([&raw, &vhd])
                .output()
                .expect("qemu-img (qemu-utils)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(Format::detect(&vhd).unwrap(), Format::Vhd, "{subformat}");
            let image = open(&vhd, Format::Auto, None).unwrap();
            assert_eq!(image.size(), data.len() as u64);
            let mut buf = AlignedBuf::zeroed(1);
            image.read_at(0, data.len(), &mut buf).unwrap();
            assert!(buf[..] == data[..], "{subformat} reads differently");
            let mut at = 0usize;
            for range in image.data_extents().unwrap() {
                assert!(data[at..range.start as usize].iter().all(|&b| b == 0));
                at = range.end as usize;
            }
            assert!(data[at..].iter().all(|&b| b == 0));

            // Damaged copies fail cleanly.
            let good = std::fs::read(&vhd).unwrap();
            let victim = dir.path().join("victim.vhd");
            let mut seed = 0x51f1_5eed_u64 ^ good.len() as u64;
            for _ in 0..crate::testdata::mutation_rounds(300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut bytes = good.clone();
                let at = if seed.is_multiple_of(2) {
                    (seed as usize >> 8) % 4096
                } else {
                    bytes.len() - 1 - (seed as usize >> 8) % 512
                };
                bytes[at] ^= (seed >> 48) as u8 | 1;
                std::fs::write(&victim, &bytes).unwrap();
                if let Ok(image) = VhdImage::open(&victim) {
                    let _ = image.read_at(0, image.size().min(4 << 20) as usize, &mut buf);
                }
            }
        }
    }
}
