//! Writes VHDX differencing images: a child of an existing VHDX that holds only the
//! given changes, as Hyper-V keeps a terminal's writes. Blocks wholly written are
//! present; others partly present, with a sector bitmap naming their sectors.
//!
//! Layout: the file identifier and two headers, two region tables, a 1 MiB log (empty),
//! the metadata region at 2 MiB, the BAT at 3 MiB, then payload blocks and sector
//! bitmaps, all at MiB boundaries.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;

use super::{
    BAT_REGION, FILE_PARAMETERS, LOCATOR_TYPE, LOGICAL_SECTOR_SIZE, METADATA_REGION, MIB, PAGE_83,
    PARENT_LOCATOR, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_ZERO,
    PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE, VhdxImage, crc32c, guid_text,
};
use crate::source::write_all_at;

const LOG_OFFSET: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// Metadata item flags.
const IS_VIRTUAL_DISK: u32 = 2;
const IS_REQUIRED: u32 = 4;

/// One block's changes: its bytes and which sectors were written.
struct Block {
    data: Vec<u8>,
    written: Vec<bool>,
}

/// A block as it goes into a VHDX image.
#[derive(Debug)]
pub enum BlockContent<'a> {
    /// The whole block (the last block of a disk may be short).
    Full(&'a [u8]),
    /// Only some sectors, the rest the parent's (differencing images).
    Partial { data: &'a [u8], written: &'a [bool] },
    /// Zeros, whatever the parent holds.
    Zero,
}

/// The parent a differencing image names.
#[derive(Debug, Clone)]
pub struct ParentRef {
    /// The parent's DataWriteGuid (`parent_linkage`).
    pub data_write_guid: [u8; 16],
    /// How the child names it: relative to the child (`.\\name`), or an absolute path.
    pub path: String,
}

/// Writes a VHDX image block by block, in any order: the BAT and metadata go at fixed
/// places, payload blocks after them as they come, sector bitmaps at the end.
#[derive(Debug)]
pub struct VhdxWriter {
    file: File,
    size: u64,
    block_size: u64,
    sector: u64,
    chunk_ratio: u64,
    parent: Option<ParentRef>,
    bat: Vec<u8>,
    bat_len: u64,
    next: u64,
    bitmaps: BTreeMap<u64, Vec<u8>>,
}

impl VhdxWriter {
    /// Starts an image of `size` bytes in blocks of `block_size` (a power of two from
    /// 1 to 256 MiB), differencing when `parent` is given.
    ///
    /// # Errors
    /// On a bad geometry or when the file cannot be created.
    pub fn create(
        path: &Path,
        size: u64,
        block_size: u64,
        sector: u64,
        parent: Option<ParentRef>,
    ) -> io::Result<Self> {
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VHDX block size {block_size}"),
            ));
        }
        let chunk_ratio = ((1u64 << 23) * sector) / block_size;
        let payload = size.div_ceil(block_size);
        let chunks = payload.div_ceil(chunk_ratio);
        let entries = if parent.is_some() {
            chunks * (chunk_ratio + 1)
        } else {
            payload + payload.saturating_sub(1) / chunk_ratio
        };
        let bat_len = (entries * 8).div_ceil(MIB) * MIB;
        Ok(Self {
            file: File::create(path)?,
            size,
            block_size,
            sector,
            chunk_ratio,
            parent,
            bat: vec![0u8; bat_len as usize],
            bat_len,
            next: BAT_OFFSET + bat_len,
            bitmaps: BTreeMap::new(),
        })
    }

    /// Writes block `index`.
    ///
    /// # Errors
    /// When the block lies outside the disk, is partial without a parent, or the file
    /// cannot be written.
    pub fn write_block(&mut self, index: u64, content: BlockContent<'_>) -> io::Result<()> {
        if index >= self.size.div_ceil(self.block_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a block beyond the disk",
            ));
        }
        let at = ((index + index / self.chunk_ratio) * 8) as usize;
        let state = match content {
            BlockContent::Zero => PAYLOAD_ZERO,
            BlockContent::Full(data) => {
                write_all_at(&self.file, data, self.next)?;
                PAYLOAD_FULLY_PRESENT | self.advance()
            }
            BlockContent::Partial { data, written } => {
                if self.parent.is_none() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a partial block needs a parent",
                    ));
                }
                write_all_at(&self.file, data, self.next)?;
                let offset = self.advance();
                let bitmap = self
                    .bitmaps
                    .entry(index / self.chunk_ratio)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let first = (index % self.chunk_ratio) * (self.block_size / self.sector);
                for (s, _) in written.iter().enumerate().filter(|(_, w)| **w) {
                    let bit = first + s as u64;
                    bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
                }
                PAYLOAD_PARTIALLY_PRESENT | offset
            }
        };
        self.bat[at..at + 8].copy_from_slice(&state.to_le_bytes());
        Ok(())
    }

    /// The offset of the block just written; moves past it.
    fn advance(&mut self) -> u64 {
        let offset = self.next;
        self.next += self.block_size.div_ceil(MIB) * MIB;
        offset
    }

    /// Writes the sector bitmaps, BAT, metadata, headers and region tables, and makes
    /// the image durable.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn finish(mut self) -> io::Result<()> {
        for (chunk, bitmap) in std::mem::take(&mut self.bitmaps) {
            write_all_at(&self.file, &bitmap, self.next)?;
            let at = (((chunk + 1) * (self.chunk_ratio + 1) - 1) * 8) as usize;
            self.bat[at..at + 8].copy_from_slice(&(6 | self.next).to_le_bytes());
            self.next += MIB;
        }
        let file = &self.file;
        write_all_at(file, &self.bat, BAT_OFFSET)?;
        write_all_at(
            file,
            &metadata(
                self.size,
                self.block_size,
                self.sector,
                self.parent.as_ref(),
            ),
            METADATA_OFFSET,
        )?;
        let mut identifier = b"vhdxfile".to_vec();
        identifier.extend("Hotate".encode_utf16().flat_map(u16::to_le_bytes));
        write_all_at(file, &identifier, 0)?;
        let (file_guid, data_guid) = (rand_guid(), rand_guid());
        for (sequence, at) in [(1u64, 64 << 10), (2, 128 << 10)] {
            let mut header = vec![0u8; 4096];
            header[..4].copy_from_slice(b"head");
            header[8..16].copy_from_slice(&sequence.to_le_bytes());
            header[16..32].copy_from_slice(&file_guid);
            header[32..48].copy_from_slice(&data_guid);
            header[66..68].copy_from_slice(&1u16.to_le_bytes());
            header[68..72].copy_from_slice(&(MIB as u32).to_le_bytes());
            header[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
            seal(&mut header);
            write_all_at(file, &header, at)?;
        }
        let mut regions = vec![0u8; 64 << 10];
        regions[..4].copy_from_slice(b"regi");
        regions[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (id, offset, len)) in [
            (BAT_REGION, BAT_OFFSET, self.bat_len),
            (METADATA_REGION, METADATA_OFFSET, MIB),
        ]
        .into_iter()
        .enumerate()
        {
            let entry = &mut regions[16 + i * 32..16 + (i + 1) * 32];
            entry[..16].copy_from_slice(&id);
            entry[16..24].copy_from_slice(&offset.to_le_bytes());
            entry[24..28].copy_from_slice(&(len as u32).to_le_bytes());
            entry[28..32].copy_from_slice(&1u32.to_le_bytes());
        }
        seal(&mut regions);
        write_all_at(file, &regions, 192 << 10)?;
        write_all_at(file, &regions, 256 << 10)?;
        file.set_len(self.next)?;
        file.sync_all()
    }
}

/// Writes `path`, a differencing image of the VHDX `parent` holding `changes` (bytes at
/// sector-aligned offsets); the parent is named by `parent_name` relative to the child.
///
/// # Errors
/// When the parent cannot be read, a change is not sector aligned or runs past the
/// disk, or the file cannot be written.
pub fn write_differencing(
    path: &Path,
    parent: &Path,
    parent_name: &str,
    changes: &[(u64, Vec<u8>)],
) -> io::Result<()> {
    let base = VhdxImage::open(parent, None)?;
    let (size, block_size, sector) = (base.size, base.block_size, base.sector);
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    for (offset, data) in changes {
        if !offset.is_multiple_of(sector) || !(data.len() as u64).is_multiple_of(sector) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "changes must be whole sectors",
            ));
        }
        if offset + data.len() as u64 > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a change runs past the disk",
            ));
        }
        for (i, byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            let block = blocks.entry(at / block_size).or_insert_with(|| Block {
                data: vec![0; block_size as usize],
                written: vec![false; (block_size / sector) as usize],
            });
            let within = at % block_size;
            block.data[within as usize] = *byte;
            block.written[(within / sector) as usize] = true;
        }
    }
    let parent = ParentRef {
        data_write_guid: base.data_write_guid,
        path: format!(".\\{parent_name}"),
    };
    let mut writer = VhdxWriter::create(path, size, block_size, sector, Some(parent))?;
    for (index, block) in &blocks {
        let content = if block.written.iter().all(|&w| w) {
            BlockContent::Full(&block.data)
        } else {
            BlockContent::Partial {
                data: &block.data,
                written: &block.written,
            }
        };
        writer.write_block(*index, content)?;
    }
    writer.finish()
}

/// Writes a structure's CRC-32C into bytes 4..8.
fn seal(bytes: &mut [u8]) {
    bytes[4..8].fill(0);
    let crc = crc32c(bytes);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A random (version 4) GUID, as stored.
fn rand_guid() -> [u8; 16] {
    let mut bytes = crate::source::random_id();
    bytes[7] = (bytes[7] & 0x0f) | 0x40; // version 4, as stored little-endian
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// The metadata region of an image (differencing when `parent` is given).
fn metadata(size: u64, block_size: u64, sector: u64, parent: Option<&ParentRef>) -> Vec<u8> {
    let mut region = vec![0u8; MIB as usize];
    region[..8].copy_from_slice(b"metadata");
    let mut parameters = (block_size as u32).to_le_bytes().to_vec();
    parameters.extend(u32::from(parent.is_some()).wrapping_mul(2).to_le_bytes()); // HasParent
    let mut items: Vec<(&[u8; 16], Vec<u8>, u32)> = vec![
        (&FILE_PARAMETERS, parameters, IS_REQUIRED),
        (
            &VIRTUAL_DISK_SIZE,
            size.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            &PAGE_83,
            rand_guid().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            &LOGICAL_SECTOR_SIZE,
            (sector as u32).to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            &PHYSICAL_SECTOR_SIZE,
            4096u32.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
    ];
    if let Some(parent) = parent {
        let key = if parent.path.starts_with(".\\") {
            "relative_path"
        } else {
            "absolute_win32_path"
        };
        let body = locator(&[
            ("parent_linkage", guid_text(&parent.data_write_guid)),
            (key, parent.path.clone()),
        ]);
        items.push((&PARENT_LOCATOR, body, IS_REQUIRED));
    }
    region[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut at = 64 << 10;
    for (i, (id, body, flags)) in items.iter().enumerate() {
        let entry = &mut region[32 + i * 32..32 + (i + 1) * 32];
        entry[..16].copy_from_slice(*id);
        entry[16..20].copy_from_slice(&(at as u32).to_le_bytes());
        entry[20..24].copy_from_slice(&(body.len() as u32).to_le_bytes());
        entry[24..28].copy_from_slice(&flags.to_le_bytes());
        region[at..at + body.len()].copy_from_slice(body);
        at += body.len().div_ceil(8) * 8;
    }
    region
}

/// A parent locator with these key-value pairs (UTF-16LE).
fn locator(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut body = LOCATOR_TYPE.to_vec();
    body.extend(0u16.to_le_bytes());
    body.extend((pairs.len() as u16).to_le_bytes());
    let mut strings: Vec<u8> = Vec::new();
    let start = body.len() + pairs.len() * 12;
    let mut entries = Vec::new();
    for (key, value) in pairs {
        let key: Vec<u8> = key.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let value: Vec<u8> = value.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let key_at = start + strings.len();
        strings.extend(&key);
        let value_at = start + strings.len();
        strings.extend(&value);
        entries.extend((key_at as u32).to_le_bytes());
        entries.extend((value_at as u32).to_le_bytes());
        entries.extend((key.len() as u16).to_le_bytes());
        entries.extend((value.len() as u16).to_le_bytes());
    }
    body.extend(entries);
    body.extend(strings);
    body
}
