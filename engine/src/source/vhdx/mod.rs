//! The VHDX format (Hyper-V), dynamic and differencing images: two checksummed headers
//! (the valid one with the higher sequence number wins), a checksummed region table
//! locating the block allocation table (BAT) and the metadata region, and payload blocks
//! of 1–256 MiB whose BAT entries say present, partly present (a sector bitmap says which
//! sectors), zero, or absent (the parent's, in a differencing image). A differencing
//! image names its parent by a relative or absolute path and by the parent's
//! DataWriteGuid (`parent_linkage`), which is checked. Images whose log was not replayed
//! (not closed cleanly) are refused with a clear error.
//!
//! Every field is checked against the file before use; no allocation exceeds the BAT,
//! which itself must lie within the file. [`write`] makes differencing images.

pub mod write;

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::opening;
use super::{ImageError, ImageSource, read_exact_at};
use crate::direct_io::AlignedBuf;

/// `vhdxfile` at offset 0.
/// How refusals name the format.
const FORMAT: &str = "VHDX";
/// A region of the file: offset and length.
type Region = (u64, u64);
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

const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
const PAGE_83: [u8; 16] = guid(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);
const LOCATOR_TYPE: [u8; 16] = guid(
    0xb04a_efb7,
    0xd19e,
    0x4a81,
    [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13],
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

/// The sector bitmap block's state in the BAT: present.
const BITMAP_PRESENT: u64 = 6;

/// A VHDX image, with its parent when it is a differencing image.
pub struct VhdxImage {
    path: PathBuf,
    file: File,
    file_len: u64,
    size: u64,
    block_size: u64,
    sector: u64,
    /// The header's DataWriteGuid: a child's `parent_linkage` names it.
    data_write_guid: [u8; 16],
    /// Payload entries of the BAT, one per block (sector bitmap entries left out).
    blocks: Vec<u64>,
    /// Sector bitmap entries, one per chunk of blocks (differencing images).
    bitmaps: Vec<u64>,
    chunk_ratio: u64,
    parent: Option<Box<dyn ImageSource>>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("differencing", &self.parent.is_some())
            .finish_non_exhaustive()
    }
}

/// What the metadata region says.
struct Metadata {
    block_size: u64,
    has_parent: bool,
    size: u64,
    sector: u64,
    /// Parent locator entries (key, value), for a differencing image.
    locator: Vec<(String, String)>,
}

impl VhdxImage {
    /// Opens a VHDX image; a differencing image with its parent (`parent` overrides the
    /// paths the image names).
    ///
    /// # Errors
    /// `InvalidData` for a damaged or hostile image or a parent that does not match,
    /// `Unsupported` for one with a log to replay.
    pub fn open(path: &Path, parent: Option<&Path>) -> Result<Self, ImageError> {
        Self::open_in_chain(path, parent, &mut super::Chain::default())
    }

    pub(super) fn open_in_chain(
        path: &Path,
        parent_override: Option<&Path>,
        chain: &mut super::Chain,
    ) -> Result<Self, ImageError> {
        let (file, file_len) = opening::enter(path, chain)?;
        let bad = |why: String| opening::damaged(FORMAT, path, why);
        if file_len < (320 << 10) {
            return Err(bad("shorter than the VHDX header area".into()));
        }
        let header = Self::read_header(&file, path)?;
        let ((bat_offset, bat_len), (meta_offset, meta_len)) =
            Self::read_regions(&file, file_len, path)?;
        let Metadata {
            block_size,
            has_parent,
            size,
            sector,
            locator,
        } = read_metadata(&file, meta_offset, meta_len).map_err(|e| bad(e.to_string()))?;
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
        let chunks = payload.div_ceil(chunk_ratio);
        let entries = if has_parent {
            chunks * (chunk_ratio + 1)
        } else {
            entries
        };
        if entries * 8 > bat_len {
            return Err(bad("the BAT is too small for the disk".into()));
        }
        let mut table = vec![0u8; (entries * 8) as usize];
        read_exact_at(&file, &mut table, bat_offset)?;
        let blocks = (0..payload)
            .map(|i| le64(&table, ((i + i / chunk_ratio) * 8) as usize))
            .collect::<Vec<_>>();
        let bitmaps = if has_parent {
            (0..chunks)
                .map(|c| le64(&table, (((c + 1) * (chunk_ratio + 1) - 1) * 8) as usize))
                .collect()
        } else {
            Vec::new()
        };
        let mut data_write_guid = [0u8; 16];
        data_write_guid.copy_from_slice(&header[32..48]);
        let parent = if has_parent {
            let parent = open_parent(path, parent_override, &locator, chain)?;
            if parent.size() != size {
                return Err(bad(format!(
                    "its parent is {} bytes, the disk {size}",
                    parent.size()
                )));
            }
            Some(parent)
        } else {
            None
        };
        let image = Self {
            path: path.to_owned(),
            file,
            file_len,
            size,
            block_size,
            sector,
            data_write_guid,
            blocks,
            bitmaps,
            chunk_ratio,
            parent,
        };
        image.check_blocks()?;
        Ok(image)
    }

    /// The current header (valid, and the higher sequence number) of a clean image.
    fn read_header(file: &File, path: &Path) -> Result<Vec<u8>, ImageError> {
        let bad = |why: String| opening::damaged(FORMAT, path, why);
        let mut magic = [0u8; 8];
        read_exact_at(file, &mut magic, 0)?;
        if magic != MAGIC {
            return Err(bad("not a VHDX image".into()));
        }
        // The current header: valid, and the higher sequence number.
        let mut header: Option<(u64, Vec<u8>)> = None;
        for at in HEADERS {
            let mut bytes = vec![0u8; 4096];
            read_exact_at(file, &mut bytes, at)?;
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
            return Err(ImageError::NeedsRepair {
                format: FORMAT,
                path: path.to_owned(),
                why: "it was not closed cleanly (its log must be replayed); open it once in Hyper-V or run `qemu-img check -r all`".into(),
            });
        }
        if le16(&header, 66) != 1 {
            return Err(bad(format!(
                "format version {} is not 1",
                le16(&header, 66)
            )));
        }
        Ok(header)
    }

    /// Where the BAT and the metadata region lie: (offset, length) each.
    fn read_regions(
        file: &File,
        file_len: u64,
        path: &Path,
    ) -> Result<(Region, Region), ImageError> {
        let bad = |why: String| opening::damaged(FORMAT, path, why);
        // The region table: the BAT and the metadata region.
        let mut regions = None;
        for at in REGION_TABLES {
            let mut bytes = vec![0u8; 64 << 10];
            read_exact_at(file, &mut bytes, at)?;
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
            if !offset.is_multiple_of(MIB) || offset.saturating_add(len) > file_len {
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
        Ok(((bat_offset, bat_len), (meta_offset, meta_len)))
    }

    /// Refuses a block entry that points outside the file, or is partly present without
    /// its sector bitmap or a parent.
    fn check_blocks(&self) -> Result<(), ImageError> {
        let bad = |why: String| opening::damaged(FORMAT, &self.path, why);
        let (file_len, chunk_ratio) = (self.file_len, self.chunk_ratio);
        for (index, &entry) in self.blocks.iter().enumerate() {
            match entry & 7 {
                PAYLOAD_FULLY_PRESENT => {
                    let offset = self.offset_of(entry);
                    if offset < (1 << 20) || offset >= file_len {
                        return Err(bad(format!("block {index} lies outside the file")));
                    }
                }
                PAYLOAD_PARTIALLY_PRESENT if self.parent.is_some() => {
                    let offset = self.offset_of(entry);
                    let bitmap = self.bitmaps[index / chunk_ratio as usize];
                    let bitmap_at = self.offset_of(bitmap);
                    if offset < (1 << 20) || offset >= file_len {
                        return Err(bad(format!("block {index} lies outside the file")));
                    }
                    if bitmap & 7 != BITMAP_PRESENT
                        || bitmap_at < (1 << 20)
                        || bitmap_at + MIB > file_len
                    {
                        return Err(bad(format!(
                            "block {index} is partly present without a sector bitmap"
                        )));
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
        Ok(())
    }

    fn offset_of(&self, entry: u64) -> u64 {
        (entry >> 20) << 20
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The DataWriteGuid a child's `parent_linkage` must name.
    pub fn data_write_guid(&self) -> [u8; 16] {
        self.data_write_guid
    }

    /// Whether the block at `index` is this image's own (not its parent's).
    fn block_is_own(&self, index: usize) -> bool {
        !(self.parent.is_some() && matches!(self.blocks[index] & 7, 0 | 1))
    }

    /// Reads `out` from this file at `at`, zeros past its end.
    fn read_own(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        super::read_or_zeros(&self.file, self.file_len, out, at)
    }

    /// Reads the parent's bytes (zeros without a parent).
    fn read_parent(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match &self.parent {
            Some(parent) => super::read_through(parent.as_ref(), offset, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    /// Reads `piece` (within block `index`, at `within`) of a partly present block: runs
    /// of sectors from this file where its bitmap says, else from the parent.
    fn read_partial(&self, index: usize, within: u64, piece: &mut [u8]) -> io::Result<()> {
        let entry = self.blocks[index];
        let bitmap_at = self.offset_of(self.bitmaps[index / self.chunk_ratio as usize]);
        let sectors_per_block = self.block_size / self.sector;
        let first_bit = (index as u64 % self.chunk_ratio) * sectors_per_block;
        let block_start = index as u64 * self.block_size;
        let sectors = super::sectors_of(within, piece.len(), self.sector);
        super::SectorBits::read(&self.file, bitmap_at, first_bit, sectors, false)?.read_runs(
            self.sector,
            within,
            piece,
            |part, at| self.read_own(part, self.offset_of(entry) + at),
            |part, at| self.read_parent(block_start + at, part),
        )
    }
}

/// Opens the parent a differencing image names (or `given`), and checks its
/// DataWriteGuid against the child's `parent_linkage`.
fn open_parent(
    child: &Path,
    given: Option<&Path>,
    locator: &[(String, String)],
    chain: &mut super::Chain,
) -> Result<Box<dyn ImageSource>, ImageError> {
    let value = |key: &str| {
        locator
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let linkage = value("parent_linkage")
        .and_then(parse_guid)
        .ok_or_else(|| {
            opening::damaged(FORMAT, child, "the parent locator has no parent_linkage")
        })?;
    let candidates = ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .filter_map(|key| value(key))
        .map(|named| opening::beside(child, named))
        .collect();
    let path = opening::find_parent(FORMAT, child, given, candidates)?;
    let parent = VhdxImage::open_in_chain(&path, None, chain)?;
    if parent.data_write_guid() != linkage {
        return Err(opening::parent_changed(
            FORMAT,
            child,
            &path,
            "changed since it was made (parent_linkage differs from the parent's DataWriteGuid)",
        ));
    }
    Ok(Box::new(parent))
}

/// Parses a GUID written `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` into its on-disk bytes.
fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut plain = [0u8; 16];
    for (i, b) in plain.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    // The first three fields are stored little-endian.
    let a = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]);
    let b = u16::from_be_bytes([plain[4], plain[5]]);
    let c = u16::from_be_bytes([plain[6], plain[7]]);
    let mut d = [0u8; 8];
    d.copy_from_slice(&plain[8..]);
    Some(guid(a, b, c, d))
}

/// The text form of an on-disk GUID, as `parent_linkage` holds it.
fn guid_text(bytes: &[u8; 16]) -> String {
    let a = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let b = u16::from_le_bytes([bytes[4], bytes[5]]);
    let c = u16::from_le_bytes([bytes[6], bytes[7]]);
    let d: String = bytes[8..].iter().map(|x| format!("{x:02x}")).collect();
    format!("{{{a:08x}-{b:04x}-{c:04x}-{}-{}}}", &d[..4], &d[4..])
}

/// What the metadata region says.
fn read_metadata(file: &File, offset: u64, len: u64) -> io::Result<Metadata> {
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
    let locator = if has_parent {
        let entry = region[32..32 + count * 32]
            .chunks_exact(32)
            .find(|e| e[..16] == PARENT_LOCATOR)
            .ok_or_else(|| io::Error::other("a differencing image without a parent locator"))?;
        let (at, n) = (le32(entry, 16) as usize, le32(entry, 20) as usize);
        let body = region
            .get(at..at.saturating_add(n))
            .ok_or_else(|| io::Error::other("the parent locator lies outside its region"))?;
        parse_locator(body)?
    } else {
        Vec::new()
    };
    Ok(Metadata {
        block_size,
        has_parent,
        size,
        sector,
        locator,
    })
}

/// The key-value pairs of a parent locator (UTF-16LE strings).
fn parse_locator(body: &[u8]) -> io::Result<Vec<(String, String)>> {
    let broken = || io::Error::other("the parent locator is damaged");
    if body.len() < 20 || body[..16] != LOCATOR_TYPE {
        return Err(io::Error::other("an unknown parent locator type"));
    }
    let count = usize::from(le16(body, 18));
    let mut out = Vec::with_capacity(count.min(64));
    for i in 0..count {
        let at = 20 + i * 12;
        let entry = body.get(at..at + 12).ok_or_else(broken)?;
        let text = |offset: usize, len: usize| -> io::Result<String> {
            let bytes = body
                .get(offset..offset.saturating_add(len))
                .ok_or_else(broken)?;
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| broken())
        };
        let key = text(le32(entry, 0) as usize, usize::from(le16(entry, 8)))?;
        let value = text(le32(entry, 4) as usize, usize::from(le16(entry, 10)))?;
        out.push((key, value));
    }
    Ok(out)
}

impl VhdxImage {
    /// The merged guest ranges of the blocks `keep` selects.
    fn block_extents(&self, keep: impl Fn(usize, u64) -> bool) -> Vec<Range<u64>> {
        super::block_ranges(self.blocks.len(), self.block_size, self.size, |i| {
            keep(i, self.blocks[i])
        })
    }
}

impl VhdxImage {
    /// Reads guest bytes at `offset` into `out` (within the disk).
    fn read_into(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let len = out.len();
        let mut done = 0usize;
        while done < len {
            let guest = offset + done as u64;
            let index = guest / self.block_size;
            let within = guest % self.block_size;
            let take = ((self.block_size - within) as usize).min(len - done);
            let piece = &mut out[done..done + take];
            let entry = self.blocks[index as usize];
            match entry & 7 {
                PAYLOAD_FULLY_PRESENT => self.read_own(piece, self.offset_of(entry) + within)?,
                PAYLOAD_PARTIALLY_PRESENT => self.read_partial(index as usize, within, piece)?,
                0 | 1 if self.parent.is_some() => self.read_parent(guest, piece)?,
                _ => piece.fill(0),
            }
            done += take;
        }
        Ok(())
    }
}

impl ImageSource for VhdxImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn layers(&self) -> Vec<PathBuf> {
        super::layers_over(&self.path, self.parent.as_deref())
    }

    fn top_layer_extents(&self) -> Option<io::Result<Vec<Range<u64>>>> {
        self.parent.as_ref()?;
        Some(Ok(self.block_extents(|index, _| self.block_is_own(index))))
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        let below = match &self.parent {
            Some(parent) => parent.data_extents()?,
            None => Vec::new(),
        };
        let own = self.block_extents(|_, entry| {
            matches!(entry & 7, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT)
        });
        Ok(super::merge_extents(own, below, self.size))
    }

    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()> {
        super::read_checked(&self.path, self.size, offset, len, buf, |out| {
            self.read_into(offset, out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::source::{Format, open};

    // Linux's qemu-img, which Wine cannot start: its tests are built on unix only.
    #[cfg(unix)]
    fn qemu_img(args: &[&str]) {
        crate::testdata::run_tool("qemu-img", args);
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // RFC 3720's test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[cfg(unix)]
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

    #[cfg(unix)]
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
        let err = VhdxImage::open(&victim, None).unwrap_err();
        assert!(matches!(err, ImageError::Damaged { .. }), "{err}");
        // Flipped bytes in the metadata, the BAT and the region tables.
        let rounds = crate::testdata::mutation_rounds(400);
        for seed in crate::testdata::xorshift(0x9e37_79b9_7f4a_7c15).take(rounds) {
            let mut bytes = good.clone();
            let at = (192 << 10) + (seed as usize % ((3 << 20) - (192 << 10)));
            bytes[at] ^= (seed >> 48) as u8 | 1;
            std::fs::write(&victim, &bytes).unwrap();
            if let Ok(image) = VhdxImage::open(&victim, None) {
                let mut buf = AlignedBuf::zeroed(1);
                let _ = image.read_at(0, image.size().min(4 << 20) as usize, &mut buf);
            }
        }
    }
}

// They run Linux tools (qemu-img, qemu-io, libvhdi), which Wine cannot start.
#[cfg(test)]
#[cfg(unix)]
mod differencing_tests {
    //! Differencing images written by [`write::write_differencing`], read back by this
    //! reader and by libvhdi (`python3-libvhdi`), an independent implementation.
    use super::*;
    use crate::source::{Format, open};

    /// A 12 MiB parent made by QEMU, with its content.
    fn parent(dir: &Path) -> (PathBuf, Vec<u8>) {
        let mut data = vec![0u8; 12 << 20];
        for (i, block) in data.chunks_mut(1 << 20).enumerate() {
            block[1000..3000].fill(i as u8 + 1);
        }
        let raw = dir.join("parent.raw");
        std::fs::write(&raw, &data).unwrap();
        let vhdx = dir.join("parent.vhdx");
        convert_to_vhdx(&raw, &vhdx);
        (vhdx, data)
    }

    fn convert_to_vhdx(raw: &Path, vhdx: &Path) {
        let (raw, vhdx) = (raw.to_str().unwrap(), vhdx.to_str().unwrap());
        crate::testdata::run_tool(
            "qemu-img",
            &["convert", "-O", "vhdx", "-o", "block_size=1M", raw, vhdx],
        );
    }

    fn changes() -> Vec<(u64, Vec<u8>)> {
        vec![
            (2 << 20, vec![0xaa; 1 << 20]),       // a whole block
            ((5 << 20) + 4096, vec![0xbb; 8192]), // part of a block
            ((7 << 20) + 512, vec![0xcc; 512]),   // one sector
            ((11 << 20) - 512, vec![0xdd; 1024]), // across two blocks
        ]
    }

    fn expected(mut data: Vec<u8>) -> Vec<u8> {
        for (offset, bytes) in changes() {
            data[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
        data
    }

    #[test]
    fn a_written_child_reads_back_through_its_parent_here_and_in_libvhdi() {
        let dir = tempfile::tempdir().unwrap();
        let (parent_path, data) = parent(dir.path());
        let child = dir.path().join("child.vhdx");
        write::write_differencing(&child, &parent_path, "parent.vhdx", &changes()).unwrap();
        let want = expected(data);

        let image = open(&child, Format::Auto, None).unwrap();
        let mut buf = AlignedBuf::zeroed(1);
        image.read_at(0, want.len(), &mut buf).unwrap();
        assert!(buf[..] == want[..], "the child reads differently");
        let top = image.top_layer_extents().unwrap().unwrap();
        assert_eq!(
            top,
            [
                2 << 20..3 << 20,
                5 << 20..6 << 20,
                7 << 20..8 << 20,
                10 << 20..12 << 20
            ]
        );

        // libvhdi, with the parent set, reads the same bytes.
        if let Some(read) = crate::testdata::libvhdi_read(
            "a_written_child_reads_back_through_its_parent_here_and_in_libvhdi",
            &child,
            &parent_path,
        ) {
            assert!(read == want, "libvhdi reads the child differently");
        }
    }

    #[test]
    fn a_parent_that_changed_or_is_missing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (parent_path, _) = parent(dir.path());
        let child = dir.path().join("child.vhdx");
        write::write_differencing(&child, &parent_path, "parent.vhdx", &changes()).unwrap();
        // Another image as the parent: its DataWriteGuid is not the linkage.
        let other = dir.path().join("other.vhdx");
        convert_to_vhdx(&dir.path().join("parent.raw"), &other);
        let err = VhdxImage::open(&child, Some(&other)).unwrap_err();
        assert!(matches!(err, ImageError::ParentChanged { .. }), "{err}");
        std::fs::rename(&parent_path, dir.path().join("moved.vhdx")).unwrap();
        let err = VhdxImage::open(&child, None).unwrap_err();
        assert!(matches!(err, ImageError::ParentMissing { .. }), "{err}");
        assert!(VhdxImage::open(&child, Some(&dir.path().join("moved.vhdx"))).is_ok());
        // A child that names itself as its parent.
        let looped = dir.path().join("loop.vhdx");
        write::write_differencing(
            &looped,
            &dir.path().join("moved.vhdx"),
            "loop.vhdx",
            &changes(),
        )
        .unwrap();
        let err = VhdxImage::open(&looped, None).unwrap_err();
        assert!(matches!(err, ImageError::ChainLoops { .. }), "{err}");
    }
}
