//! The VHDX format (Hyper-V), dynamic images: two checksummed headers (the valid one with
//! the higher sequence number wins), a checksummed region table locating the block
//! allocation table (BAT) and the metadata region, and payload blocks of 1–256 MiB whose
//! BAT entries say present, zero or absent. Differencing images and images whose log
//! was not replayed (not closed cleanly) are refused with a clear error for now.
//!
//! Every field is checked against the file before use; no allocation exceeds the BAT,
//! which itself must lie within the file.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{ImageSource, read_exact_at};
use crate::direct_io::AlignedBuf;

/// `vhdxfile` at offset 0.
pub const MAGIC: [u8; 8] = *b"vhdxfile";

const HEADERS: [u64; 2] = [64 << 10, 128 << 10];
const REGION_TABLES: [u64; 2] = [192 << 10, 256 << 10];
const MIB: u64 = 1 << 20;

/// GUIDs as stored on disk (the first three fields little-endian).
const BAT_REGION: [u8; 16] = guid(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
const METADATA_REGION: [u8; 16] = guid(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let (b, c) = (b.to_le_bytes(), c.to_le_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Payload block states of the BAT.
const PAYLOAD_ZERO: u64 = 2;
const PAYLOAD_UNMAPPED: u64 = 3;
const PAYLOAD_FULLY_PRESENT: u64 = 6;
const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// CRC-32C (Castagnoli), as VHDX checksums its headers and region tables.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// Whether a structure of `len` bytes at the start of `bytes` carries a valid checksum in
/// bytes 4..8 (computed with that field zeroed).
fn checksum_ok(bytes: &[u8]) -> bool {
    let stored = le32(bytes, 4);
    let mut copy = bytes.to_vec();
    copy[4..8].fill(0);
    crc32c(&copy) == stored
}

/// A dynamic VHDX image.
#[derive(Debug)]
pub struct VhdxImage {
    path: PathBuf,
    file: File,
    file_len: u64,
    size: u64,
    block_size: u64,
    /// Payload entries of the BAT, one per block (sector bitmap entries left out).
    blocks: Vec<u64>,
}

impl VhdxImage {
    /// Opens a dynamic VHDX image.
    ///
    /// # Errors
    /// `InvalidData` for a damaged or hostile image, `Unsupported` for a differencing
    /// image or one with a log to replay.
    pub fn open(path: &Path) -> io::Result<Self> {
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("VHDX image {}: {why}", path.display()),
            )
        };
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        if file_len < (320 << 10) {
            return Err(bad("shorter than the VHDX header area".into()));
        }
        let mut magic = [0u8; 8];
        read_exact_at(&file, &mut magic, 0)?;
        if magic != MAGIC {
            return Err(bad("not a VHDX image".into()));
        }
        // The current header: valid, and the higher sequence number.
        let mut header: Option<(u64, Vec<u8>)> = None;
        for at in HEADERS {
            let mut bytes = vec![0u8; 4096];
            read_exact_at(&file, &mut bytes, at)?;
            if &bytes[..4] == b"head" && checksum_ok(&bytes) {
                let sequence = le64(&bytes, 8);
                if header.as_ref().is_none_or(|(s, _)| sequence > *s) {
                    header = Some((sequence, bytes));
                }
            }
        }
        let Some((_, header)) = header else {
            return Err(bad("no valid header".into()));
        };
        if header[48..64].iter().any(|&b| b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "VHDX image {}: it was not closed cleanly (its log must be replayed); open it once in Hyper-V or run `qemu-img check -r all`",
                    path.display()
                ),
            ));
        }
        if le16(&header, 66) != 1 {
            return Err(bad(format!(
                "format version {} is not 1",
                le16(&header, 66)
            )));
        }
        // The region table: the BAT and the metadata region.
        let mut regions = None;
        for at in REGION_TABLES {
            let mut bytes = vec![0u8; 64 << 10];
            read_exact_at(&file, &mut bytes, at)?;
            if &bytes[..4] == b"regi" && checksum_ok(&bytes) {
                regions = Some(bytes);
                break;
            }
        }
        let Some(regions) = regions else {
            return Err(bad("no valid region table".into()));
        };
        let count = le32(&regions, 8) as usize;
        if count > 2047 {
            return Err(bad(format!("{count} regions")));
        }
        let (mut bat, mut metadata) = (None, None);
        for entry in regions[16..16 + count * 32].chunks_exact(32) {
            let (offset, len, required) = (
                le64(entry, 16),
                u64::from(le32(entry, 24)),
                le32(entry, 28) & 1,
            );
            if offset % MIB != 0 || offset.saturating_add(len) > file_len {
                return Err(bad("a region lies outside the file".into()));
            }
            if entry[..16] == BAT_REGION {
                bat = Some((offset, len));
            } else if entry[..16] == METADATA_REGION {
                metadata = Some((offset, len));
            } else if required != 0 {
                return Err(bad("an unknown required region".into()));
            }
        }
        let (Some((bat_offset, bat_len)), Some((meta_offset, meta_len))) = (bat, metadata) else {
            return Err(bad("the BAT or the metadata region is missing".into()));
        };
        let (block_size, has_parent, size, sector) =
            read_metadata(&file, meta_offset, meta_len).map_err(|e| bad(e.to_string()))?;
        if has_parent {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "VHDX image {}: differencing VHDX images are not supported yet",
                    path.display()
                ),
            ));
        }
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(bad(format!("block size {block_size}")));
        }
        if sector != 512 && sector != 4096 {
            return Err(bad(format!("logical sector size {sector}")));
        }
        if size == 0 || size > (64 << 40) {
            return Err(bad(format!("virtual size {size}")));
        }
        let chunk_ratio = ((1u64 << 23) * sector) / block_size;
        let payload = size.div_ceil(block_size);
        let entries = payload + (payload.saturating_sub(1)) / chunk_ratio;
        if entries * 8 > bat_len {
            return Err(bad("the BAT is too small for the disk".into()));
        }
        let mut table = vec![0u8; (entries * 8) as usize];
        read_exact_at(&file, &mut table, bat_offset)?;
        let blocks = (0..payload)
            .map(|i| le64(&table, ((i + i / chunk_ratio) * 8) as usize))
            .collect::<Vec<_>>();
        let image = Self {
            path: path.to_owned(),
            file,
            file_len,
            size,
            block_size,
            blocks,
        };
        for (index, &entry) in image.blocks.iter().enumerate() {
            match entry & 7 {
                PAYLOAD_FULLY_PRESENT => {
                    let offset = image.offset_of(entry);
                    if offset < (1 << 20) || offset >= file_len {
                        return Err(bad(format!("block {index} lies outside the file")));
                    }
                }
                PAYLOAD_PARTIALLY_PRESENT => {
                    return Err(bad(format!(
                        "block {index} is partly present in a disk without a parent"
                    )));
                }
                0 | 1 | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => {}
                state => return Err(bad(format!("block {index} has unknown state {state}"))),
            }
        }
        Ok(image)
    }

    fn offset_of(&self, entry: u64) -> u64 {
        (entry >> 20) << 20
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Block size, whether the disk has a parent, virtual size and logical sector size, from
/// the metadata region.
fn read_metadata(file: &File, offset: u64, len: u64) -> io::Result<(u64, bool, u64, u64)> {
    let len = len.min(1 << 20);
    let mut region = vec![0u8; len as usize];
    read_exact_at(file, &mut region, offset)?;
    if region.len() < 32 || &region[..8] != b"metadata" {
        return Err(io::Error::other("the metadata table is missing"));
    }
    let count = usize::from(le16(&region, 10));
    if 32 + count * 32 > region.len() {
        return Err(io::Error::other("the metadata table runs past its region"));
    }
    let item = |id: &[u8; 16], want: usize| -> io::Result<&[u8]> {
        let entry = region[32..32 + count * 32]
            .chunks_exact(32)
            .find(|e| &e[..16] == id)
            .ok_or_else(|| io::Error::other("a required metadata item is missing"))?;
        let (at, n) = (le32(entry, 16) as usize, le32(entry, 20) as usize);
        if n < want || at.saturating_add(n) > region.len() {
            return Err(io::Error::other("a metadata item lies outside its region"));
        }
        Ok(&region[at..at + want])
    };
    let parameters = item(&FILE_PARAMETERS, 8)?;
    let block_size = u64::from(le32(parameters, 0));
    let has_parent = le32(parameters, 4) & 2 != 0;
    let size = le64(item(&VIRTUAL_DISK_SIZE, 8)?, 0);
    let sector = u64::from(le32(item(&LOGICAL_SECTOR_SIZE, 4)?, 0));
    Ok((block_size, has_parent, size, sector))
}

impl ImageSource for VhdxImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for (index, &entry) in self.blocks.iter().enumerate() {
            if entry & 7 == PAYLOAD_FULLY_PRESENT {
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
        let mut done = 0usize;
        while done < len {
            let guest = offset + done as u64;
            let index = guest / self.block_size;
            let within = guest % self.block_size;
            let take = ((self.block_size - within) as usize).min(len - done);
            let piece = &mut out[done..done + take];
            let entry = self.blocks[index as usize];
            if entry & 7 == PAYLOAD_FULLY_PRESENT {
                let at = self.offset_of(entry) + within;
                let available = self.file_len.saturating_sub(at).min(take as u64) as usize;
                read_exact_at(&self.file, &mut piece[..available], at)?;
                piece[available..].fill(0);
            } else {
                piece.fill(0);
            }
            done += take;
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

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // RFC 3720's test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn dynamic_images_made_by_qemu_read_as_qemu_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 11 << 20];
        for (i, block) in data.chunks_mut(1 << 20).enumerate() {
            if i % 3 != 2 {
                block[..4096].fill(i as u8 + 1);
                block[500_000..500_008].copy_from_slice(&(i as u64).to_le_bytes());
            }
        }
        std::fs::write(&raw, &data).unwrap();
        for options in [
            "block_size=1M",
            "block_size=8M,log_size=1M",
            "block_size=32M",
        ] {
            let vhdx = dir.path().join("disk.vhdx");
            let _ = std::fs::remove_file(&vhdx);
            qemu_img(&[
                "convert",
                "-O",
                "vhdx",
                "-o",
                options,
                raw.to_str().unwrap(),
                vhdx.to_str().unwrap(),
            ]);
            assert_eq!(Format::detect(&vhdx).unwrap(), Format::Vhdx);
            let image = open(&vhdx, Format::Auto, None).unwrap();
            assert_eq!(image.size(), data.len() as u64, "{options}");
            let mut buf = AlignedBuf::zeroed(1);
            image.read_at(0, data.len(), &mut buf).unwrap();
            assert!(buf[..] == data[..], "{options}: reads differ");
            let mut at = 0usize;
            for range in image.data_extents().unwrap() {
                assert!(data[at..range.start as usize].iter().all(|&b| b == 0));
                at = range.end as usize;
            }
            assert!(data[at..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn damaged_copies_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![9u8; 3 << 20]).unwrap();
        let vhdx = dir.path().join("disk.vhdx");
        qemu_img(&[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M",
            raw.to_str().unwrap(),
            vhdx.to_str().unwrap(),
        ]);
        let good = std::fs::read(&vhdx).unwrap();
        // Both headers damaged: refused.
        let mut bytes = good.clone();
        bytes[(64 << 10) + 20] ^= 1;
        bytes[(128 << 10) + 20] ^= 1;
        let victim = dir.path().join("victim.vhdx");
        std::fs::write(&victim, &bytes).unwrap();
        assert!(
            VhdxImage::open(&victim)
                .unwrap_err()
                .to_string()
                .contains("no valid header")
        );
        // Flipped bytes in the metadata, the BAT and the region tables.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..400 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = good.clone();
            let at = (192 << 10) + (seed as usize % ((3 << 20) - (192 << 10)));
            bytes[at] ^= (seed >> 48) as u8 | 1;
            std::fs::write(&victim, &bytes).unwrap();
            if let Ok(image) = VhdxImage::open(&victim) {
                let mut buf = AlignedBuf::zeroed(1);
                let _ = image.read_at(0, image.size().min(4 << 20) as usize, &mut buf);
            }
        }
    }
}
