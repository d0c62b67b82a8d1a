//! The VHD format (Virtual PC, QEMU's `vpc`), fixed, dynamic and differencing disks: a
//! checksummed 512-byte footer at the end of the file (its copy at the start for dynamic
//! disks), and for a dynamic disk a checksummed header locating the block allocation
//! table (BAT), whose entries give each block's sector, or none (the block reads as
//! zeros, or the parent's). Each allocated block is a sector bitmap (most significant bit
//! first) followed by the block's data; in a differencing disk, sectors whose bit is clear
//! are the parent's. The parent is found by the header's locators (relative, then
//! absolute Windows path) or its name, and must carry the unique id the header records.
//!
//! Every field is checked against the file before use; the BAT must lie within it.
//! [`write`] makes dynamic and differencing images.

pub mod write;

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::opening;
use super::{ImageError, ImageSource, read_exact_at};
use crate::direct_io::AlignedBuf;

/// `conectix`, the footer's cookie.
/// How refusals name the format.
const FORMAT: &str = "VHD";
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

/// A VHD image, with its parent when it is a differencing disk.
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
    /// The footer's unique id: a child's header names its parent by it.
    unique_id: [u8; 16],
    parent: Option<Box<dyn ImageSource>>,
}

impl std::fmt::Debug for VhdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdImage")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("differencing", &self.parent.is_some())
            .finish_non_exhaustive()
    }
}

impl VhdImage {
    /// Opens a VHD image; a differencing one with its parent (`parent` overrides where
    /// the image says it is).
    ///
    /// # Errors
    /// `InvalidData` for a damaged or hostile image, or a parent that is not the one the
    /// image names.
    pub fn open(path: &Path, parent: Option<&Path>) -> Result<Self, ImageError> {
        Self::open_in_chain(path, parent, &mut super::Chain::default())
    }

    /// The footer's unique id.
    pub fn unique_id(&self) -> [u8; 16] {
        self.unique_id
    }

    pub(super) fn open_in_chain(
        path: &Path,
        parent_override: Option<&Path>,
        chain: &mut super::Chain,
    ) -> Result<Self, ImageError> {
        let (file, file_len) = opening::enter(path, chain)?;
        let bad = |why: String| opening::damaged(FORMAT, path, why);
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
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&footer[68..84]);
        let mut image = Self {
            path: path.to_owned(),
            file,
            file_len,
            size,
            block_size: 0,
            bat: Vec::new(),
            bitmap_bytes: 0,
            fixed: kind == FIXED,
            unique_id,
            parent: None,
        };
        match kind {
            FIXED => {
                if file_len < size + 511 {
                    return Err(bad("the file is shorter than its disk".into()));
                }
            }
            DYNAMIC => {
                image
                    .read_dynamic_header(be64(&footer, 16))
                    .map_err(|e| bad(e.to_string()))?;
            }
            DIFFERENCING => {
                let header = image
                    .read_dynamic_header(be64(&footer, 16))
                    .map_err(|e| bad(e.to_string()))?;
                let parent = image.open_parent(&header, parent_override, chain)?;
                image.parent = Some(parent);
            }
            other => return Err(bad(format!("unknown disk type {other}"))),
        }
        Ok(image)
    }

    /// Reads the dynamic header and the BAT; returns the header.
    fn read_dynamic_header(&mut self, offset: u64) -> io::Result<[u8; 1024]> {
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
        Ok(header)
    }

    /// Opens the parent a differencing disk's header names (or `given`) and checks its
    /// unique id.
    fn open_parent(
        &self,
        header: &[u8; 1024],
        given: Option<&Path>,
        chain: &mut super::Chain,
    ) -> Result<Box<dyn ImageSource>, ImageError> {
        let mut candidates = Vec::new();
        for entry in header[576..768].chunks_exact(24) {
            let (code, len, at) = (&entry[..4], u64::from(be32(entry, 8)), be64(entry, 16));
            if !matches!(code, b"W2ru" | b"W2ku") || len == 0 || len > 4096 {
                continue;
            }
            if at.saturating_add(len) > self.file_len {
                continue;
            }
            let mut bytes = vec![0u8; len as usize];
            read_exact_at(&self.file, &mut bytes, at)?;
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            if let Ok(text) = String::from_utf16(&units) {
                candidates.push(opening::beside(&self.path, &text));
            }
        }
        let name: Vec<u16> = header[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        if let Ok(name) = String::from_utf16(&name)
            && !name.is_empty()
        {
            candidates.push(opening::beside(&self.path, &name));
        }
        let path = opening::find_parent(FORMAT, &self.path, given, candidates)?;
        let parent = VhdImage::open_in_chain(&path, None, chain)?;
        if header[40..56] != parent.unique_id {
            return Err(opening::parent_changed(
                FORMAT,
                &self.path,
                &path,
                "is not the disk it was made from (unique id differs)",
            ));
        }
        if parent.size != self.size {
            return Err(opening::parent_changed(
                FORMAT,
                &self.path,
                &path,
                "is another size",
            ));
        }
        Ok(Box::new(parent))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This file's bytes at `at`, zeros past its end.
    fn read_own(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        super::read_or_zeros(&self.file, self.file_len, out, at)
    }

    /// The merged ranges of the blocks this file holds.
    fn allocated_extents(&self) -> Vec<Range<u64>> {
        super::block_ranges(self.bat.len(), self.block_size, self.size, |i| {
            self.bat[i] != UNALLOCATED
        })
    }
}

impl VhdImage {
    /// Reads guest bytes at `offset` into `out` (within the disk).
    fn read_into(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let len = out.len();
        if self.fixed {
            self.read_own(out, offset)?;
        } else {
            let mut done = 0usize;
            while done < len {
                let guest = offset + done as u64;
                let (index, within) = (guest / self.block_size, guest % self.block_size);
                let take = ((self.block_size - within) as usize).min(len - done);
                let piece = &mut out[done..done + take];
                match (self.bat[index as usize], &self.parent) {
                    (UNALLOCATED, None) => piece.fill(0),
                    (UNALLOCATED, Some(parent)) => {
                        super::read_through(parent.as_ref(), guest, piece)?;
                    }
                    (sector, None) => {
                        let at = u64::from(sector) * 512 + self.bitmap_bytes + within;
                        self.read_own(piece, at)?;
                    }
                    (sector, Some(parent)) => {
                        let block_at = u64::from(sector) * 512;
                        let block_start = guest - within;
                        let sectors = super::sectors_of(within, take, 512);
                        super::SectorBits::read(&self.file, block_at, 0, sectors, true)?
                            .read_runs(
                                512,
                                within,
                                piece,
                                |part, at| self.read_own(part, block_at + self.bitmap_bytes + at),
                                |part, at| {
                                    super::read_through(parent.as_ref(), block_start + at, part)
                                },
                            )?;
                    }
                }
                done += take;
            }
        }
        Ok(())
    }
}

impl ImageSource for VhdImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn layers(&self) -> Vec<PathBuf> {
        super::layers_over(&self.path, self.parent.as_deref())
    }

    fn top_layer_extents(&self) -> Option<io::Result<Vec<Range<u64>>>> {
        self.parent.as_ref()?;
        Some(Ok(self.allocated_extents()))
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        if let Some(parent) = &self.parent {
            let own = self.allocated_extents();
            return Ok(super::merge_extents(own, parent.data_extents()?, self.size));
        }
        if self.fixed {
            return Ok(std::iter::once(0..self.size).collect());
        }
        Ok(self.allocated_extents())
    }

    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()> {
        super::read_checked(&self.path, self.size, offset, len, buf, |out| {
            self.read_into(offset, out)
        })
    }
}

// They run Linux tools (qemu-img, qemu-io, libvhdi), which Wine cannot start.
#[cfg(test)]
#[cfg(unix)]
mod tests {
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
            let options = format!("subformat={subformat},force_size=on");
            crate::testdata::run_tool(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "vpc",
                    "-o",
                    &options,
                    raw.to_str().unwrap(),
                    vhd.to_str().unwrap(),
                ],
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
            let rounds = crate::testdata::mutation_rounds(300);
            for seed in crate::testdata::xorshift(0x51f1_5eed ^ good.len() as u64).take(rounds) {
                let mut bytes = good.clone();
                let at = if seed.is_multiple_of(2) {
                    (seed as usize >> 8) % 4096
                } else {
                    bytes.len() - 1 - (seed as usize >> 8) % 512
                };
                bytes[at] ^= (seed >> 48) as u8 | 1;
                std::fs::write(&victim, &bytes).unwrap();
                if let Ok(image) = VhdImage::open(&victim, None) {
                    let _ = image.read_at(0, image.size().min(4 << 20) as usize, &mut buf);
                }
            }
        }
    }
}

// They run Linux tools (qemu-img, qemu-io, libvhdi), which Wine cannot start.
#[cfg(test)]
#[cfg(unix)]
mod written_tests {
    //! Images written by [`write::VhdWriter`], read back by this reader, by QEMU and by
    //! libvhdi (`python3-libvhdi`), independently.
    use super::write::{BLOCK, VhdParent, VhdWriter};
    use super::*;
    use crate::source::{Format, open};

    const SIZE: u64 = 9 * BLOCK + (300 << 10);

    fn read_all(path: &Path) -> Vec<u8> {
        let image = open(path, Format::Auto, None).unwrap();
        let mut buf = AlignedBuf::zeroed(1);
        image.read_at(0, image.size() as usize, &mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn dynamic_and_differencing_images_read_back_here_in_qemu_and_in_libvhdi() {
        let dir = tempfile::tempdir().unwrap();
        // A dynamic parent: blocks 0, 3 and the short last one.
        let mut base = vec![0u8; SIZE as usize];
        let parent_path = dir.path().join("parent.vhd");
        let mut writer = VhdWriter::create(&parent_path, SIZE, None).unwrap();
        for index in [0u64, 3, 9] {
            let start = (index * BLOCK) as usize;
            let end = (start + BLOCK as usize).min(base.len());
            for (i, b) in base[start..end].iter_mut().enumerate() {
                *b = (i % 251) as u8 ^ index as u8;
            }
            writer.write_block(index, &base[start..end], None).unwrap();
        }
        writer.finish().unwrap();
        assert!(
            read_all(&parent_path) == base,
            "the dynamic image reads differently"
        );
        let raw = dir.path().join("parent.raw");
        std::fs::write(&raw, &base).unwrap();
        // QEMU reads the dynamic image as written (compare fails otherwise).
        crate::testdata::run_tool(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "vpc",
                "-F",
                "raw",
                parent_path.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );

        // A differencing child: a whole block, and some sectors of a block the parent has.
        let parent = VhdImage::open(&parent_path, None).unwrap();
        let child_of_parent = |path: &Path| {
            let link = VhdParent {
                unique_id: parent.unique_id(),
                name: "parent.vhd".into(),
                absolute: parent_path.display().to_string(),
            };
            VhdWriter::create(path, SIZE, Some(link)).unwrap()
        };
        let child_path = dir.path().join("child.vhd");
        let mut writer = child_of_parent(&child_path);
        let mut want = base.clone();
        let whole = vec![0x77u8; BLOCK as usize];
        writer.write_block(5, &whole, None).unwrap();
        want[(5 * BLOCK) as usize..(6 * BLOCK) as usize].copy_from_slice(&whole);
        let mut partial = vec![0u8; BLOCK as usize];
        let mut written = vec![false; (BLOCK / 512) as usize];
        // Runs of whole bitmap bytes: libvhdi 20210425 reads the unwritten sectors that
        // follow a written one in the same bitmap byte as zeros, not the parent's.
        for sector in (8..16).chain(800..808).chain(4088..4096) {
            written[sector] = true;
            partial[sector * 512..(sector + 1) * 512].fill(0x99);
            let at = (3 * BLOCK) as usize + sector * 512;
            want[at..at + 512].fill(0x99);
        }
        writer.write_block(3, &partial, Some(&written)).unwrap();
        writer.finish().unwrap();

        assert!(
            read_all(&child_path) == want,
            "the child reads differently here"
        );
        let child = VhdImage::open(&child_path, None).unwrap();
        assert_eq!(
            child.top_layer_extents().unwrap().unwrap(),
            [3 * BLOCK..4 * BLOCK, 5 * BLOCK..6 * BLOCK]
        );
        if let Some(read) = crate::testdata::libvhdi_read(
            "dynamic_and_differencing_images_read_back_here_in_qemu_and_in_libvhdi",
            &child_path,
            &parent_path,
        ) {
            assert!(read == want, "libvhdi reads the child differently");
        }

        // Single sectors anywhere in a block: the others are the parent's.
        let single = dir.path().join("single.vhd");
        let mut writer = child_of_parent(&single);
        let mut want = base.clone();
        let mut partial = vec![0u8; BLOCK as usize];
        let mut written = vec![false; (BLOCK / 512) as usize];
        for sector in [1usize, 2, 100, 4095] {
            written[sector] = true;
            partial[sector * 512..(sector + 1) * 512].fill(0x55);
            let at = (3 * BLOCK) as usize + sector * 512;
            want[at..at + 512].fill(0x55);
        }
        writer.write_block(3, &partial, Some(&written)).unwrap();
        writer.finish().unwrap();
        assert!(read_all(&single) == want, "single sectors read differently");

        // Another disk as the parent is refused.
        let other = dir.path().join("other.vhd");
        let mut writer = VhdWriter::create(&other, SIZE, None).unwrap();
        writer
            .write_block(0, &base[..BLOCK as usize], None)
            .unwrap();
        writer.finish().unwrap();
        let err = VhdImage::open(&child_path, Some(&other)).unwrap_err();
        assert!(matches!(err, ImageError::ParentChanged { .. }), "{err}");
    }
}
