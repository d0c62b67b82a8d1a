//! The qcow2 format (versions 2 and 3), as QEMU writes it: a two-level table (L1, L2)
//! maps each guest cluster to a host cluster, a zero cluster, a compressed cluster
//! (deflate, or zstd where the header says so), or nothing, in which case the backing
//! image (raw or qcow2, a chain) supplies it. Extended L2 entries split a cluster into
//! 32 subclusters, each allocated, zero, or from the backing image.
//!
//! Every header and table field is checked against the file before use: offsets must lie
//! within it, so no allocation or read is larger than the file or a cluster. Encrypted
//! images, external data files and images marked corrupt are refused. [`write`] makes
//! qcow2 images.

pub mod write;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::opening;
use super::{ImageError, ImageSource, read_exact_at, read_through};
use crate::direct_io::AlignedBuf;

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// L2 tables kept in memory at once.
/// How refusals name the format.
const FORMAT: &str = "qcow2";
const L2_CACHE: usize = 64;
/// The largest L1 table QEMU writes (32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0b1_1111;

const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Where a guest cluster's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not in this image: the backing image's bytes, or zeros.
    Backing,
    Zero,
    Data(u64),
    Compressed {
        host: u64,
        len: u64,
    },
    /// Extended L2: per subcluster, allocated at `host + i * sub`, zero, or backing.
    Subclusters {
        host: u64,
        allocated: u32,
        zero: u32,
    },
}

/// A qcow2 image, with its backing chain.
pub struct Qcow2Image {
    path: PathBuf,
    file: File,
    file_len: u64,
    size: u64,
    cluster_bits: u32,
    extended_l2: bool,
    zstd: bool,
    l1: Vec<u64>,
    backing: Option<Box<dyn ImageSource>>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("cluster_bits", &self.cluster_bits)
            .field("backed", &self.backing.is_some())
            .finish_non_exhaustive()
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// What the header says, checked against the file.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u32,
    backing_offset: u64,
    backing_len: u64,
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    header_len: u64,
    zstd: bool,
    extended_l2: bool,
}

impl Header {
    fn read(file: &File, file_len: u64, path: &Path) -> Result<Self, ImageError> {
        let bad = |why: String| opening::damaged(FORMAT, path, why);
        let mut header = [0u8; 112];
        let got = (file_len as usize).min(header.len());
        if got < 72 {
            return Err(bad("shorter than a qcow2 header".into()));
        }
        read_exact_at(file, &mut header[..got], 0)?;
        if header[..4] != MAGIC {
            return Err(bad("not a qcow2 image".into()));
        }
        let version = be32(&header, 4);
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version} is not supported (2 or 3)")));
        }
        let backing_offset = be64(&header, 8);
        let backing_len = u64::from(be32(&header, 16));
        let cluster_bits = be32(&header, 20);
        let size = be64(&header, 24);
        let crypt = be32(&header, 32);
        let l1_size = u64::from(be32(&header, 36));
        let l1_offset = be64(&header, 40);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("cluster bits {cluster_bits} out of range")));
        }
        if crypt != 0 {
            return Err(bad("encrypted images are not supported".into()));
        }
        let (mut incompatible, mut header_len, mut zstd) = (0, 72u64, false);
        if version == 3 {
            if got < 104 {
                return Err(bad("shorter than a version 3 header".into()));
            }
            incompatible = be64(&header, 72);
            header_len = u64::from(be32(&header, 100));
            if header_len < 104 || header_len > file_len {
                return Err(bad(format!("header length {header_len} out of range")));
            }
            if incompatible & INCOMPAT_COMPRESSION != 0 {
                if header_len <= 104 || got <= 104 {
                    return Err(bad("compression type missing from the header".into()));
                }
                match header[104] {
                    0 => {}
                    1 => zstd = true,
                    other => return Err(bad(format!("unknown compression type {other}"))),
                }
            }
        }
        if incompatible & !INCOMPAT_KNOWN != 0 {
            return Err(bad(format!(
                "unknown incompatible features {:#x}",
                incompatible & !INCOMPAT_KNOWN
            )));
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(bad(
                "QEMU marked it corrupt; run `qemu-img check -r all`".into()
            ));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(bad("external data files are not supported".into()));
        }
        let extended_l2 = incompatible & INCOMPAT_EXTL2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(bad(
                "extended L2 entries need clusters of 16 KiB or more".into()
            ));
        }
        let cluster = 1u64 << cluster_bits;
        let entry_bytes = if extended_l2 { 16 } else { 8 };
        let l2_entries = cluster / entry_bytes;
        let needed_l1 = size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_size < needed_l1 || l1_size * 8 > MAX_L1_BYTES {
            return Err(bad(format!(
                "L1 table of {l1_size} entries for a {size}-byte disk"
            )));
        }
        if !l1_offset.is_multiple_of(cluster) || l1_offset.saturating_add(l1_size * 8) > file_len {
            return Err(bad("the L1 table lies outside the file".into()));
        }
        Ok(Self {
            version,
            backing_offset,
            backing_len,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            header_len,
            zstd,
            extended_l2,
        })
    }
}

impl Qcow2Image {
    /// Opens a qcow2 image and its backing chain; `backing` overrides the path the image
    /// names.
    ///
    /// # Errors
    /// `Damaged` for a damaged, hostile or unsupported image, with the reason;
    /// `ParentMissing` when its backing file is not found.
    pub fn open(path: &Path, backing: Option<&Path>) -> Result<Self, ImageError> {
        Self::open_in_chain(path, backing, &mut super::Chain::default())
    }

    pub(super) fn open_in_chain(
        path: &Path,
        backing_override: Option<&Path>,
        chain: &mut super::Chain,
    ) -> Result<Self, ImageError> {
        let (file, file_len) = opening::enter(path, chain)?;
        let header = Header::read(&file, file_len, path)?;
        let Header {
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            zstd,
            extended_l2,
            ..
        } = header;
        let mut l1_bytes = vec![0u8; (l1_size * 8) as usize];
        read_exact_at(&file, &mut l1_bytes, l1_offset)?;
        let l1: Vec<u64> = l1_bytes.chunks_exact(8).map(|w| be64(w, 0)).collect();

        let backing = Self::open_backing(&file, file_len, path, &header, backing_override, chain)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            file_len,
            size,
            cluster_bits,
            extended_l2,
            zstd,
            l1,
            backing,
            l2_cache: Mutex::default(),
        })
    }

    /// The image below, if the header names one: `given` or the path it names.
    fn open_backing(
        file: &File,
        file_len: u64,
        path: &Path,
        header: &Header,
        given: Option<&Path>,
        chain: &mut super::Chain,
    ) -> Result<Option<Box<dyn ImageSource>>, ImageError> {
        let bad = |why: String| opening::damaged(FORMAT, path, why);
        let Header {
            version,
            backing_offset,
            backing_len,
            header_len,
            cluster_bits,
            ..
        } = *header;
        let cluster = 1u64 << cluster_bits;
        let mut backing_format = None;
        if version == 3 {
            backing_format = read_backing_format(file, header_len, file_len, cluster)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(if backing_offset == 0 {
            None
        } else {
            if backing_len == 0 || backing_len > 1023 || backing_offset + backing_len > file_len {
                return Err(bad("the backing file name lies outside the file".into()));
            }
            let mut name = vec![0u8; backing_len as usize];
            read_exact_at(file, &mut name, backing_offset)?;
            let name = String::from_utf8(name)
                .map_err(|_| bad("the backing file name is not UTF-8".into()))?;
            let named = Path::new(&name);
            let candidate = if named.is_absolute() {
                named.to_owned()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(named)
            };
            let resolved = opening::find_parent(FORMAT, path, given, vec![candidate])?;
            Some(super::open_layer(
                &resolved,
                backing_format.as_deref(),
                chain,
            )?)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn bad(&self, why: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("qcow2 image {}: {why}", self.path.display()),
        )
    }

    /// The L2 table at `offset`, from the cache or the file.
    fn l2_table(&self, offset: u64) -> io::Result<Arc<Vec<u64>>> {
        let mut cache = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = cache.get(&offset) {
            return Ok(table.clone());
        }
        let cluster = self.cluster_size();
        if !offset.is_multiple_of(cluster) || offset.saturating_add(cluster) > self.file_len {
            return Err(self.bad(format!("an L2 table at {offset} lies outside the file")));
        }
        let mut bytes = vec![0u8; cluster as usize];
        read_exact_at(&self.file, &mut bytes, offset)?;
        let table = Arc::new(
            bytes
                .chunks_exact(8)
                .map(|w| be64(w, 0))
                .collect::<Vec<_>>(),
        );
        if cache.len() >= L2_CACHE {
            cache.clear();
        }
        cache.insert(offset, table.clone());
        Ok(table)
    }

    /// Where guest cluster `index` lives.
    fn mapping(&self, index: u64) -> io::Result<Mapping> {
        let entry_words = if self.extended_l2 { 2 } else { 1 };
        let l2_entries = self.cluster_size() / (8 * entry_words);
        let l1_entry = self.l1[(index / l2_entries) as usize];
        let l2_offset = l1_entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Mapping::Backing);
        }
        let table = self.l2_table(l2_offset)?;
        let at = ((index % l2_entries) * entry_words) as usize;
        let entry = table[at];
        let cluster = self.cluster_size();
        if entry & L2_COMPRESSED != 0 {
            let offset_bits = 62 - (self.cluster_bits - 8);
            let host = entry & ((1 << offset_bits) - 1);
            let sectors = ((entry >> offset_bits) & ((1 << (62 - offset_bits)) - 1)) + 1;
            let len = (sectors * 512).saturating_sub(host % 512);
            if host >= self.file_len {
                return Err(self.bad(format!(
                    "a compressed cluster at {host} lies outside the file"
                )));
            }
            // The last sector may run past the end of the file.
            let len = len.min(self.file_len - host).min(2 * cluster);
            return Ok(Mapping::Compressed { host, len });
        }
        let host = entry & L2_OFFSET_MASK;
        // A cluster may end past the end of the file (QEMU writes only what it must);
        // those bytes read as zeros, as QEMU reads them.
        if host != 0 && (!host.is_multiple_of(cluster) || host >= self.file_len) {
            return Err(self.bad(format!("a data cluster at {host} lies outside the file")));
        }
        if self.extended_l2 {
            let bitmap = table[at + 1];
            let (allocated, zero) = (bitmap as u32, (bitmap >> 32) as u32);
            if allocated & zero != 0 {
                return Err(self.bad("a subcluster is both allocated and zero"));
            }
            if allocated != 0 && host == 0 {
                return Err(self.bad("allocated subclusters without a host cluster"));
            }
            return Ok(Mapping::Subclusters {
                host,
                allocated,
                zero,
            });
        }
        Ok(match (host, entry & L2_ZERO != 0) {
            (_, true) => Mapping::Zero,
            (0, false) => Mapping::Backing,
            (host, false) => Mapping::Data(host),
        })
    }

    /// This file's bytes at `offset`, zeros past its end.
    fn read_host(&self, out: &mut [u8], offset: u64) -> io::Result<()> {
        super::read_or_zeros(&self.file, self.file_len, out, offset)
    }

    /// The backing image's bytes at `offset` (zeros where there is none, or beyond it).
    fn read_backing(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match &self.backing {
            Some(backing) => read_through(backing.as_ref(), offset, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    fn read_compressed(&self, host: u64, len: u64) -> io::Result<Vec<u8>> {
        let cluster = self.cluster_size() as usize;
        let mut packed = vec![0u8; len as usize];
        read_exact_at(&self.file, &mut packed, host)?;
        let unpacked = if self.zstd {
            let mut out = Vec::with_capacity(cluster);
            let decoder = zstd::stream::read::Decoder::with_buffer(&packed[..])
                .map(zstd::stream::read::Decoder::single_frame);
            match decoder {
                Ok(decoder) => {
                    io::Read::read_to_end(&mut io::Read::take(decoder, cluster as u64), &mut out)
                        .map_err(|e| self.bad(format!("a zstd cluster is damaged: {e}")))?;
                }
                Err(e) => return Err(self.bad(format!("a zstd cluster is damaged: {e}"))),
            }
            out
        } else {
            miniz_oxide::inflate::decompress_to_vec_with_limit(&packed, cluster)
                .map_err(|e| self.bad(format!("a deflate cluster is damaged: {e:?}")))?
        };
        if unpacked.len() != cluster {
            return Err(self.bad("a compressed cluster does not decode to one cluster"));
        }
        Ok(unpacked)
    }

    /// Reads guest bytes at `offset` into `out`, cluster by cluster.
    fn read_into(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let cluster = self.cluster_size();
        let mut done = 0usize;
        while done < out.len() {
            let guest = offset + done as u64;
            if guest >= self.size {
                out[done..].fill(0);
                break;
            }
            let within = guest % cluster;
            let take = ((cluster - within) as usize).min(out.len() - done);
            let piece = &mut out[done..done + take];
            match self.mapping(guest / cluster)? {
                Mapping::Backing => self.read_backing(guest, piece)?,
                Mapping::Zero => piece.fill(0),
                Mapping::Data(host) => self.read_host(piece, host + within)?,
                Mapping::Compressed { host, len } => {
                    let unpacked = self.read_compressed(host, len)?;
                    piece.copy_from_slice(&unpacked[within as usize..within as usize + take]);
                }
                Mapping::Subclusters {
                    host,
                    allocated,
                    zero,
                } => {
                    let sub = cluster / 32;
                    let mut at = 0usize;
                    while at < take {
                        let in_cluster = within + at as u64;
                        let bit = 1u32 << (in_cluster / sub);
                        let n = ((sub - in_cluster % sub) as usize).min(take - at);
                        let part = &mut piece[at..at + n];
                        if allocated & bit != 0 {
                            self.read_host(part, host + in_cluster)?;
                        } else if zero & bit != 0 {
                            part.fill(0);
                        } else {
                            self.read_backing(guest + at as u64, part)?;
                        }
                        at += n;
                    }
                }
            }
            done += take;
        }
        Ok(())
    }

    /// The guest ranges this image itself holds data for (data, compressed or allocated
    /// subclusters), merged.
    pub fn own_extents(&self) -> io::Result<Vec<Range<u64>>> {
        self.extents_where(|mapping| match mapping {
            Mapping::Data(_) | Mapping::Compressed { .. } => true,
            Mapping::Subclusters { allocated, .. } => allocated != 0,
            Mapping::Backing | Mapping::Zero => false,
        })
    }

    /// The guest ranges this image maps in any way (data or zeros): where it differs
    /// from its backing image.
    pub fn mapped_extents(&self) -> io::Result<Vec<Range<u64>>> {
        self.extents_where(|mapping| match mapping {
            Mapping::Backing => false,
            Mapping::Subclusters {
                allocated, zero, ..
            } => allocated | zero != 0,
            _ => true,
        })
    }

    /// The clusters whose mapping satisfies `keep`, as merged guest ranges.
    fn extents_where(&self, keep: impl Fn(Mapping) -> bool) -> io::Result<Vec<Range<u64>>> {
        let cluster = self.cluster_size();
        let clusters = self.size.div_ceil(cluster);
        let entry_words = if self.extended_l2 { 2 } else { 1 };
        let l2_entries = cluster / (8 * entry_words);
        let mut out: Vec<Range<u64>> = Vec::new();
        for (l1_index, l1_entry) in self.l1.iter().enumerate() {
            let first = l1_index as u64 * l2_entries;
            if first >= clusters || l1_entry & L1_OFFSET_MASK == 0 {
                continue;
            }
            for index in first..(first + l2_entries).min(clusters) {
                if keep(self.mapping(index)?) {
                    let range = index * cluster..((index + 1) * cluster).min(self.size);
                    super::push_extent(&mut out, range);
                }
            }
        }
        Ok(out)
    }
}

/// The backing format named by a version 3 header extension, if any.
fn read_backing_format(
    file: &File,
    header_len: u64,
    file_len: u64,
    cluster: u64,
) -> io::Result<Option<String>> {
    // Extensions follow the header, within the first cluster.
    let end = cluster.min(file_len);
    let mut at = header_len.div_ceil(8) * 8;
    while at + 8 <= end {
        let mut head = [0u8; 8];
        read_exact_at(file, &mut head, at)?;
        let (kind, len) = (be32(&head, 0), u64::from(be32(&head, 4)));
        if kind == 0 {
            break;
        }
        if at + 8 + len > end {
            return Err(io::Error::other(
                "a header extension runs past the first cluster",
            ));
        }
        if kind == EXT_BACKING_FORMAT {
            let mut name = vec![0u8; len as usize];
            read_exact_at(file, &mut name, at + 8)?;
            return Ok(Some(String::from_utf8_lossy(&name).into_owned()));
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    Ok(None)
}

impl ImageSource for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn layers(&self) -> Vec<PathBuf> {
        super::layers_over(&self.path, self.backing.as_deref())
    }

    fn top_layer_extents(&self) -> Option<io::Result<Vec<Range<u64>>>> {
        // Zero clusters and subclusters are changes too: count every cluster the top
        // layer maps at all.
        self.backing.is_some().then(|| self.mapped_extents())
    }

    fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        let own = self.own_extents()?;
        let below = match &self.backing {
            Some(backing) => backing.data_extents()?,
            None => Vec::new(),
        };
        Ok(super::merge_extents(own, below, self.size))
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
    //! Images made by QEMU's own tools, read back and compared with `qemu-img convert -O
    //! raw`; hostile variants must fail cleanly.
    use super::*;
    use crate::source::{Format, open};
    use crate::testdata::run_tool as qemu;

    fn base(dir: &Path, size: usize) -> PathBuf {
        let mut data = vec![0u8; size];
        for (i, block) in data.chunks_mut(65536).enumerate() {
            if i % 3 != 1 {
                block.fill(i as u8 | 1);
                block[..8].copy_from_slice(&(i as u64).to_le_bytes());
            }
        }
        let path = dir.join("base.raw");
        std::fs::write(&path, data).unwrap();
        path
    }

    fn as_raw(image: &Path, dir: &Path) -> Vec<u8> {
        let out = dir.join("expected.raw");
        let (image, out_s) = (image.to_str().unwrap(), out.to_str().unwrap());
        qemu("qemu-img", &["convert", "-O", "raw", image, out_s]);
        std::fs::read(out).unwrap()
    }

    fn read_all(image: &dyn ImageSource) -> Vec<u8> {
        let mut buf = AlignedBuf::zeroed(1);
        image.read_at(0, image.size() as usize, &mut buf).unwrap();
        buf.to_vec()
    }

    /// A qcow2 overlay made by `qemu-img create` at `path` on `backing` (named relative
    /// to it), with `options` for `-o` unless empty.
    fn overlay_on(path: &Path, backing: &str, backing_format: &str, options: &str) {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend(["-b", backing, "-F", backing_format, path.to_str().unwrap()]);
        qemu("qemu-img", &args);
    }

    fn writes(image: &Path, commands: &[&str]) {
        let mut args = Vec::new();
        for c in commands {
            args.extend(["-c", c]);
        }
        args.push(image.to_str().unwrap());
        qemu("qemu-io", &args);
    }

    fn check(image: &Path, dir: &Path) -> Arc<dyn ImageSource> {
        let opened = open(image, Format::Auto, None).unwrap();
        let expected = as_raw(image, dir);
        assert_eq!(opened.size(), expected.len() as u64);
        assert!(
            read_all(opened.as_ref()) == expected,
            "{} reads differently",
            image.display()
        );
        // Every byte outside the extents is zero.
        let mut at = 0;
        for range in opened.data_extents().unwrap() {
            assert!(
                expected[at as usize..range.start as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
            at = range.end;
        }
        assert!(expected[at as usize..].iter().all(|&b| b == 0));
        opened
    }

    #[test]
    fn overlays_over_raw_and_qcow2_read_as_qemu_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        base(dir.path(), 3 << 20);
        for compat in ["1.1", "0.10"] {
            let overlay = dir.path().join(format!("overlay-{compat}.qcow2"));
            overlay_on(&overlay, "base.raw", "raw", &format!("compat={compat}"));
            writes(
                &overlay,
                &[
                    "write -P 0xab 1M 64k",
                    "write -P 0xcd 1500000 5000",
                    "write -z 2M 128k",
                ],
            );
            check(&overlay, dir.path());
            let own = Qcow2Image::open(&overlay, None)
                .unwrap()
                .own_extents()
                .unwrap();
            assert_eq!(own.first().map(|r| r.start), Some(1 << 20), "{own:?}");
            // Two written clusters, and two zeroed ones that version 2 stores as data.
            assert!(own.iter().map(|r| r.end - r.start).sum::<u64>() <= 256 << 10);
        }
        // A chain: qcow2 over qcow2 over raw, relative names.
        let top = dir.path().join("top.qcow2");
        overlay_on(&top, "overlay-1.1.qcow2", "qcow2", "");
        writes(&top, &["write -P 0x5a 64k 4k"]);
        check(&top, dir.path());
    }

    #[test]
    fn compressed_and_extended_l2_images_read_as_qemu_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path(), 2 << 20);
        let b = base.to_str().unwrap();
        for (name, options) in [
            ("deflate", "compression_type=zlib"),
            ("zstd", "compression_type=zstd"),
        ] {
            let packed = dir.path().join(format!("{name}.qcow2"));
            qemu(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    options,
                    b,
                    packed.to_str().unwrap(),
                ],
            );
            check(&packed, dir.path());
        }
        let sub = dir.path().join("subclusters.qcow2");
        overlay_on(&sub, "base.raw", "raw", "extended_l2=on,cluster_size=128k");
        writes(
            &sub,
            &[
                "write -P 0x11 4k 4k",
                "write -P 0x22 200k 12k",
                "write -z 1M 8k",
            ],
        );
        check(&sub, dir.path());
    }

    #[test]
    fn a_loop_a_missing_backing_file_and_hostile_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path(), 1 << 20);
        let looped = dir.path().join("loop.qcow2");
        qemu(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                looped.to_str().unwrap(),
                "1M",
            ],
        );
        qemu(
            "qemu-img",
            &[
                "rebase",
                "-u",
                "-f",
                "qcow2",
                "-b",
                "loop.qcow2",
                "-F",
                "qcow2",
                looped.to_str().unwrap(),
            ],
        );
        let err = Qcow2Image::open(&looped, None).unwrap_err();
        assert!(matches!(err, ImageError::ChainLoops { .. }), "{err}");
        let orphan = dir.path().join("orphan.qcow2");
        overlay_on(&orphan, "base.raw", "raw", "");
        std::fs::rename(&base, dir.path().join("moved.raw")).unwrap();
        let err = Qcow2Image::open(&orphan, None).unwrap_err();
        assert!(matches!(err, ImageError::ParentMissing { .. }), "{err}");
        // The parent given by the caller wins over the name in the image.
        assert!(Qcow2Image::open(&orphan, Some(&dir.path().join("moved.raw"))).is_ok());

        // Damaged copies of a real image: every byte of the header and tables flipped in
        // turn, and random values in the offset fields. Opening and reading may fail, but
        // cleanly.
        let good = std::fs::read(&orphan).unwrap();
        let victim = dir.path().join("victim.qcow2");
        let rounds = crate::testdata::mutation_rounds(600);
        for (round, seed) in crate::testdata::xorshift(0x2545_f491_4f6c_dd1d)
            .take(rounds)
            .enumerate()
        {
            let mut bytes = good.clone();
            let at = if round < 112 {
                round
            } else {
                (seed as usize) % bytes.len().min(1 << 18)
            };
            bytes[at] ^= (seed >> 40) as u8 | 1;
            std::fs::write(&victim, &bytes).unwrap();
            if let Ok(image) = Qcow2Image::open(&victim, Some(&dir.path().join("moved.raw"))) {
                let len = image.size().min(4 << 20) as usize;
                let mut buf = AlignedBuf::zeroed(1);
                let _ = image.read_at(0, len, &mut buf);
                let _ = image.data_extents();
            }
        }
    }

    #[test]
    fn the_layers_below_are_identified_by_path_size_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let backing = base(dir.path(), 3 << 20);
        let overlay = dir.path().join("overlay.qcow2");
        overlay_on(&overlay, "base.raw", "raw", "");
        writes(&overlay, &["write -P 0xab 1M 64k"]);
        let identify = || {
            let image = open(&overlay, Format::Auto, None).unwrap();
            crate::source::layers_below(image.as_ref()).unwrap()
        };
        let before = identify();
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].path, std::fs::canonicalize(&backing).unwrap());
        assert_eq!(before[0].size, 3 << 20);
        // The top layer's own writes leave the layers below as they were.
        writes(&overlay, &["write -P 0xcd 2M 64k"]);
        assert_eq!(identify(), before);
        // A byte changed near either end of the backing file changes its identity.
        let mut last = before;
        for at in [10u64, (3 << 20) - 10] {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&backing)
                .unwrap();
            crate::source::write_all_at(&file, &[0xee], at).unwrap();
            let after = identify();
            assert_ne!(after, last, "a byte at {at}");
            last = after;
        }
        let raw = open(&backing, Format::Raw, None).unwrap();
        assert!(
            crate::source::layers_below(raw.as_ref())
                .unwrap()
                .is_empty()
        );
    }
}
