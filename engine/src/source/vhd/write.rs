//! Writes dynamic and differencing VHD images: the footer (and its copy first), the
//! dynamic header with, for a differencing image, the parent's unique id, name and two
//! locators (relative and absolute Windows paths), the BAT, then the blocks given, each a
//! sector bitmap and the block's data, in the order they come.

use std::fs::File;
use std::io;
use std::path::Path;

use super::{COOKIE, DIFFERENCING, DYNAMIC, SPARSE_COOKIE};
use crate::source::write_all_at;

/// The block size written (Virtual PC's and Hyper-V's default).
pub const BLOCK: u64 = 2 << 20;
const SECTOR: u64 = 512;
const BITMAP: u64 = 512; // 4096 sectors of a 2 MiB block, a bit each
const HEADER_AT: u64 = 512;
const BAT_AT: u64 = 1536;

/// The parent a differencing VHD names.
#[derive(Debug, Clone)]
pub struct VhdParent {
    /// The parent footer's unique id.
    pub unique_id: [u8; 16],
    /// The parent's file name, for the header and the relative locator (`.\name`).
    pub name: String,
    /// The parent's absolute path, for the absolute locator.
    pub absolute: String,
}

/// Writes a VHD block by block: the BAT at a fixed place, blocks after it as they come,
/// the footer at the end.
#[derive(Debug)]
pub struct VhdWriter {
    file: File,
    size: u64,
    parent: Option<VhdParent>,
    bat: Vec<u8>,
    next: u64,
}

impl VhdWriter {
    /// Starts a dynamic image of `size` bytes, differencing when `parent` is given.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path, size: u64, parent: Option<VhdParent>) -> io::Result<Self> {
        let blocks = size.div_ceil(BLOCK);
        let bat_len = (blocks * 4).div_ceil(SECTOR) * SECTOR;
        // Parent locators' data follows the BAT: two sectors of 2 KiB each.
        let locators = if parent.is_some() { 2 * 2048 } else { 0 };
        Ok(Self {
            file: File::create(path)?,
            size,
            parent,
            bat: vec![0xff; bat_len as usize],
            next: BAT_AT + bat_len + locators,
        })
    }

    /// Writes block `index`: `data` (one block, short at the disk's end) where `written`
    /// marks its sectors (all of them when `None`); the others are the parent's, or
    /// zeros.
    ///
    /// # Errors
    /// When the block lies outside the disk or the file cannot be written.
    pub fn write_block(
        &mut self,
        index: u64,
        data: &[u8],
        written: Option<&[bool]>,
    ) -> io::Result<()> {
        if index >= self.size.div_ceil(BLOCK) || data.len() as u64 > BLOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a block beyond the disk",
            ));
        }
        let mut bitmap = vec![0u8; BITMAP as usize];
        for sector in 0..(BLOCK / SECTOR) as usize {
            if written.is_none_or(|w| w.get(sector).copied().unwrap_or(false)) {
                bitmap[sector / 8] |= 0x80 >> (sector % 8);
            }
        }
        write_all_at(&self.file, &bitmap, self.next)?;
        let mut block = data.to_vec();
        block.resize(BLOCK as usize, 0);
        write_all_at(&self.file, &block, self.next + BITMAP)?;
        let at = (index * 4) as usize;
        self.bat[at..at + 4].copy_from_slice(&((self.next / SECTOR) as u32).to_be_bytes());
        self.next += BITMAP + BLOCK;
        Ok(())
    }

    /// Writes the BAT, header, locators and both footers, and makes the image durable.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn finish(self) -> io::Result<()> {
        let unique_id = crate::source::random_id();
        let footer = footer(self.size, self.parent.is_some(), &unique_id);
        write_all_at(&self.file, &footer, 0)?;
        write_all_at(&self.file, &self.bat, BAT_AT)?;
        let mut header = vec![0u8; 1024];
        header[..8].copy_from_slice(&SPARSE_COOKIE);
        header[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        header[16..24].copy_from_slice(&BAT_AT.to_be_bytes());
        header[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        header[28..32].copy_from_slice(&(self.size.div_ceil(BLOCK) as u32).to_be_bytes());
        header[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
        if let Some(parent) = &self.parent {
            header[40..56].copy_from_slice(&parent.unique_id);
            for (i, unit) in parent.name.encode_utf16().take(256).enumerate() {
                header[64 + i * 2..66 + i * 2].copy_from_slice(&unit.to_be_bytes());
            }
            let locators = [
                (*b"W2ru", format!(".\\{}", parent.name)),
                (*b"W2ku", parent.absolute.clone()),
            ];
            let data_at = BAT_AT + self.bat.len() as u64;
            for (i, (code, path)) in locators.iter().enumerate() {
                let bytes: Vec<u8> = path.encode_utf16().flat_map(u16::to_le_bytes).collect();
                let bytes = &bytes[..bytes.len().min(2048)];
                let at = data_at + i as u64 * 2048;
                write_all_at(&self.file, bytes, at)?;
                let entry = &mut header[576 + i * 24..600 + i * 24];
                entry[..4].copy_from_slice(code);
                entry[4..8].copy_from_slice(&(2048u32 / SECTOR as u32).to_be_bytes());
                entry[8..12].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
                entry[16..24].copy_from_slice(&at.to_be_bytes());
            }
        }
        let sum = header
            .iter()
            .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        header[36..40].copy_from_slice(&(!sum).to_be_bytes());
        write_all_at(&self.file, &header, HEADER_AT)?;
        write_all_at(&self.file, &footer, self.next)?;
        self.file.set_len(self.next + 512)?;
        self.file.sync_all()
    }
}

/// The 512-byte footer of a dynamic (or differencing) disk of `size` bytes.
fn footer(size: u64, differencing: bool, unique_id: &[u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[..8].copy_from_slice(&COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&HEADER_AT.to_be_bytes());
    // "qem2": readers take the current size as it is, not the geometry's.
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (cylinders, heads, sectors) = geometry(size);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    let kind = if differencing { DIFFERENCING } else { DYNAMIC };
    f[60..64].copy_from_slice(&kind.to_be_bytes());
    f[68..84].copy_from_slice(unique_id);
    let sum = f.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// The CHS geometry the VHD specification derives from a size.
fn geometry(size: u64) -> (u16, u8, u8) {
    let mut total = (size / SECTOR).min(65535 * 16 * 255);
    let (mut sectors, mut heads);
    if total >= 65535 * 16 * 63 {
        sectors = 255;
        heads = 16;
        total = total.min(65535 * 16 * 255);
        return (
            ((total / sectors) / heads) as u16,
            heads as u8,
            sectors as u8,
        );
    }
    sectors = 17;
    let mut per_cylinder = total / sectors;
    heads = per_cylinder.div_ceil(1024).max(4);
    if per_cylinder >= heads * 1024 || heads > 16 {
        sectors = 31;
        heads = 16;
        per_cylinder = total / sectors;
    }
    if per_cylinder >= heads * 1024 {
        sectors = 63;
        heads = 16;
        per_cylinder = total / sectors;
    }
    ((per_cylinder / heads) as u16, heads as u8, sectors as u8)
}
