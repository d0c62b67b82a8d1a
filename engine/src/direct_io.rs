//! Unbuffered positional reads into aligned buffers, memory-backed files mapped in place,
//! and a file's data extents.
//!
//! Images are read with `O_DIRECT` (Linux) or `FILE_FLAG_NO_BUFFERING` (Windows) so that
//! uploading gigabytes does not evict the machine's page cache, and with positional reads
//! so that several reads can be in flight on one handle from plain threads. Where the
//! filesystem refuses direct IO, reads fall back to the page cache with one warning.
//! A file on a memory filesystem (tmpfs, ramfs) has no device to bypass: its page cache
//! is the file, and any read is a copy out of it, so its spans are mapped and used in
//! place.
//! A mapped file that shrinks under its reader raises SIGBUS instead of a read error;
//! [`on_mapped_file_shrunk`] turns that into a clear message and exit code 1.
//! On Windows a volume or physical disk (`\\.\C:`, `\\.\PhysicalDrive1`) reads like a
//! file: opened read-only and shared with the system that has it mounted, its size asked
//! of the device (`IOCTL_DISK_GET_LENGTH_INFO`), its reads kept within whole sectors.
//! This is the only module with `unsafe` code: the aligned allocation, the mapping,
//! the SIGBUS handler, the allocator's arena cap, `lseek`, `statfs` and `DeviceIoControl`.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::ptr::NonNull;

/// Alignment of buffers, offsets and lengths for unbuffered IO: one page, which covers
/// every logical sector size in use.
pub const ALIGN: usize = 4096;

/// A heap buffer aligned to [`ALIGN`], with a capacity that is a multiple of it and a
/// length (the bytes filled) within that capacity.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer holding at least `capacity` bytes (rounded up to [`ALIGN`]), with
    /// length `capacity`.
    pub fn zeroed(capacity: usize) -> Self {
        let rounded = capacity.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Self::layout(rounded);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        Self {
            ptr,
            capacity: rounded,
            len: capacity,
        }
    }

    fn layout(capacity: usize) -> Layout {
        match Layout::from_size_align(capacity, ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("aligned buffer of {capacity} bytes exceeds the address space"),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length; it must not exceed the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "length beyond capacity");
        self.len = len;
    }

    /// The whole capacity, for reading into.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `capacity` initialized (zeroed) bytes, and `&mut self`
        // guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `capacity >= len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A file opened for positional reads, unbuffered where the filesystem allows it.
#[derive(Debug)]
pub struct PositionalFile {
    file: File,
    direct: bool,
    in_memory: bool,
    /// A device's size, asked of it once (a device's metadata has none).
    device_len: Option<u64>,
}

impl PositionalFile {
    /// Opens `path` for unbuffered reads, or buffered ones (with one warning) where the
    /// filesystem refuses direct IO.
    ///
    /// # Errors
    /// When the file cannot be opened at all.
    pub fn open(path: &Path) -> io::Result<Self> {
        if is_device_path(path) {
            let file = open_device(path)?;
            let len = device_len(&file)?;
            return Ok(Self {
                file,
                direct: true,
                in_memory: false,
                device_len: Some(len),
            });
        }
        let file = File::open(path)?;
        if is_memory_backed(&file) {
            // No device to bypass: reads come from memory either way.
            return Ok(Self {
                file,
                direct: false,
                in_memory: true,
                device_len: None,
            });
        }
        Self::open_with(path, open_unbuffered)
    }

    fn open_with(path: &Path, unbuffered: impl Fn(&Path) -> io::Result<File>) -> io::Result<Self> {
        match unbuffered(path) {
            Ok(file) => {
                let probe = Self {
                    file,
                    direct: true,
                    in_memory: false,
                    device_len: None,
                };
                // Some filesystems accept the flag but refuse the read: probe once.
                let mut buf = AlignedBuf::zeroed(ALIGN);
                match probe.read_raw(0, buf.spare_mut()) {
                    Ok(_) => Ok(probe),
                    Err(e) if refuses_direct_io(&e) => Self::buffered(path, &e),
                    Err(e) => Err(e),
                }
            }
            Err(e) if refuses_direct_io(&e) => Self::buffered(path, &e),
            Err(e) => Err(e),
        }
    }

    fn buffered(path: &Path, cause: &io::Error) -> io::Result<Self> {
        tracing::warn!(
            path = %path.display(),
            %cause,
            "the filesystem refuses direct IO; reading through the page cache"
        );
        Ok(Self {
            file: File::open(path)?,
            direct: false,
            in_memory: false,
            device_len: None,
        })
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether the file lives in memory ([`is_memory_backed`]), so that mapping it
    /// ([`PositionalFile::map_at`]) beats reading copies of it.
    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    /// Maps `len` bytes at `offset` (a multiple of [`ALIGN`]), which must lie within the
    /// file.
    ///
    /// # Errors
    /// When the range passes the end of the file or the system refuses the mapping.
    pub fn map_at(&self, offset: u64, len: usize) -> io::Result<MappedFile> {
        let size = self.file_len()?;
        if offset.saturating_add(len as u64) > size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends at byte {size}, before {len} bytes at {offset}"),
            ));
        }
        MappedFile::map(&self.file, offset, len)
    }

    /// Length of the file.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn file_len(&self) -> io::Result<u64> {
        match self.device_len {
            Some(len) => Ok(len),
            None => Ok(self.file.metadata()?.len()),
        }
    }

    /// Reads up to `len` bytes at `offset` (which must be a multiple of [`ALIGN`]) into
    /// `buf`, stopping early only at the end of the file; sets and returns the length read.
    ///
    /// # Errors
    /// On an IO error.
    pub fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<usize> {
        debug_assert_eq!(offset % ALIGN as u64, 0, "unaligned offset");
        // Unbuffered reads need an aligned length: read the tail rounded up, then trim;
        // a device ends on a whole sector, which may fall short of that.
        let mut want = len.div_ceil(ALIGN) * ALIGN;
        if let Some(end) = self.device_len {
            want = want.min(usize::try_from(end.saturating_sub(offset)).unwrap_or(want));
        }
        if buf.capacity() < want {
            *buf = AlignedBuf::zeroed(want);
        }
        let mut done = 0;
        let target = &mut buf.spare_mut()[..want];
        while done < len {
            match self.read_raw(offset + done as u64, &mut target[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // A short unbuffered read that is not sector aligned means end of file.
            if self.direct && done % ALIGN != 0 {
                break;
            }
        }
        let done = done.min(len);
        buf.set_len(done);
        Ok(done)
    }

    #[cfg(unix)]
    fn read_raw(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }

    #[cfg(windows)]
    fn read_raw(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)
    }

    /// The byte ranges of the file that may hold data; holes in between read as zeros.
    /// Where the system cannot tell, the whole file.
    ///
    /// # Errors
    /// On an IO error while probing.
    pub fn data_extents(&self) -> io::Result<Vec<Range<u64>>> {
        let size = self.file_len()?;
        if self.device_len.is_some() {
            return Ok(std::iter::once(0..size).filter(|r| !r.is_empty()).collect());
        }
        data_extents(&self.file, size)
    }
}

/// A range of a file mapped read-only, for files that live in memory anyway
/// ([`is_memory_backed`]); unmapped on drop, so a mapping lives only as long as its
/// blocks are in use.
///
/// The mapping is private and never written. Like every mapping it assumes the file is
/// not truncated while mapped (pages past the new end would fault); a differential disk
/// does not change while it is uploaded, and a change in its content is caught by the
/// server, which verifies every chunk against its hash.
pub struct MappedFile {
    ptr: NonNull<u8>,
    len: usize,
}

/// Caps the C allocator's arenas (glibc makes up to eight per core). A server frees
/// block-sized buffers on whichever of its many worker threads ran a job; with an arena
/// per thread each keeps its own high-water mark, and a burst of large jobs leaves the
/// process hundreds of MiB larger than it needs. A few shared arenas reuse that memory.
/// Elsewhere (musl, Windows, macOS) this does nothing.
pub fn cap_allocator_arenas(arenas: u16) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, libc::c_int::from(arenas));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// The message printed when a mapped file shrinks under its reader (set once).
static SHRUNK_MESSAGE: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();

/// Installs a SIGBUS handler that prints `message` on stderr and exits with code 1: the
/// only way a mapped file that was truncated while it is read can be reported (reading
/// its vanished pages raises SIGBUS). Later calls keep the first message.
#[cfg(unix)]
pub fn on_mapped_file_shrunk(message: &str) {
    let mut text = message.as_bytes().to_vec();
    text.push(b'\n');
    if SHRUNK_MESSAGE.set(text.into_boxed_slice()).is_err() {
        return;
    }
    extern "C" fn handler(_signal: libc::c_int) {
        if let Some(message) = SHRUNK_MESSAGE.get() {
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is a
            // static byte slice that is never freed.
            unsafe {
                libc::write(2, message.as_ptr().cast(), message.len());
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// See the Unix version; without mappings there is nothing to report.
#[cfg(not(unix))]
pub fn on_mapped_file_shrunk(message: &str) {
    let _ = SHRUNK_MESSAGE.set(message.as_bytes().into());
}

// SAFETY: the mapping is read-only and owned exclusively, like a `Box<[u8]>`.
unsafe impl Send for MappedFile {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `len` bytes of `file` at `offset`, a multiple of [`ALIGN`]; the range must lie
    /// within the file.
    ///
    /// # Errors
    /// When the offset is unaligned or the system refuses the mapping.
    #[cfg(unix)]
    pub fn map(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        if !offset.is_multiple_of(ALIGN as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned mapping offset",
            ));
        }
        if len == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len,
            });
        }
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh read-only private mapping of a valid descriptor at an aligned
        // offset; the kernel picks the address, and the result is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                offset,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(ptr) = NonNull::new(raw.cast::<u8>()) else {
            return Err(io::Error::other("mmap returned a null mapping"));
        };
        Ok(Self { ptr, len })
    }

    /// See the Unix version.
    ///
    /// # Errors
    /// Always `Unsupported`.
    #[cfg(not(unix))]
    pub fn map(_file: &File, _offset: u64, _len: usize) -> io::Result<Self> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` readable bytes while the mapping lives (or
        // dangling with `len` 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        #[cfg(unix)]
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `map`, after its last use.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("len", &self.len)
            .finish()
    }
}

/// Whether `file` lives on a memory filesystem (tmpfs, ramfs), where reading it through
/// a device is impossible and mapping it copies nothing.
#[cfg(target_os = "linux")]
pub fn is_memory_backed(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the descriptor is valid for the life of `file`, and `stat` has room for
    // the structure fstatfs fills.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it initialized `stat`.
    let kind = unsafe { stat.assume_init() }.f_type;
    // The magic numbers are 32-bit; `f_type`'s width varies by platform.
    matches!(kind as u32, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// See the Linux version: elsewhere no file is known to live in memory.
#[cfg(not(target_os = "linux"))]
pub fn is_memory_backed(_file: &File) -> bool {
    false
}

/// Whether `path` names a Windows volume or physical disk (`\\.\C:`,
/// `\\.\PhysicalDrive1`) rather than a file; never elsewhere.
pub fn is_device_path(path: &Path) -> bool {
    cfg!(windows) && names_device(path)
}

fn names_device(path: &Path) -> bool {
    let text = path.as_os_str().to_string_lossy();
    text.len() > 4 && (text.starts_with(r"\\.\") || text.starts_with(r"//./"))
}

/// Opens a volume or disk read-only and unbuffered, shared with whoever has it mounted.
#[cfg(windows)]
fn open_device(path: &Path) -> io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    const FILE_FLAG_NO_BUFFERING: u32 = 0x2000_0000;
    const FILE_SHARE_READ: u32 = 1;
    const FILE_SHARE_WRITE: u32 = 2;
    std::fs::OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_NO_BUFFERING)
        .open(path)
}

#[cfg(not(windows))]
fn open_device(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// A volume's or disk's size in bytes, as the device reports it.
#[cfg(windows)]
fn device_len(file: &File) -> io::Result<u64> {
    use std::ffi::c_void;
    use std::os::windows::io::AsRawHandle;
    const IOCTL_DISK_GET_LENGTH_INFO: u32 = 0x0007_405c;
    #[link(name = "kernel32")]
    unsafe extern "system" {
        fn DeviceIoControl(
            device: *mut c_void,
            code: u32,
            input: *const c_void,
            input_len: u32,
            output: *mut c_void,
            output_len: u32,
            returned: *mut u32,
            overlapped: *mut c_void,
        ) -> i32;
    }
    let mut len: i64 = 0;
    let mut returned: u32 = 0;
    // SAFETY: the handle is valid for the life of `file`; the output buffer is an i64
    // (GET_LENGTH_INFORMATION) of the size given, and the call is synchronous.
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle().cast(),
            IOCTL_DISK_GET_LENGTH_INFO,
            std::ptr::null(),
            0,
            (&raw mut len).cast(),
            std::mem::size_of::<i64>() as u32,
            &raw mut returned,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(len).map_err(io::Error::other)
}

#[cfg(not(windows))]
fn device_len(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

fn refuses_direct_io(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::InvalidInput
}

#[cfg(target_os = "linux")]
fn open_unbuffered(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(windows)]
fn open_unbuffered(path: &Path) -> io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    const FILE_FLAG_NO_BUFFERING: u32 = 0x2000_0000;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_NO_BUFFERING)
        .open(path)
}

#[cfg(not(any(target_os = "linux", windows)))]
fn open_unbuffered(path: &Path) -> io::Result<File> {
    File::open(path)
}

#[cfg(target_os = "linux")]
fn data_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: `fd` is a valid open descriptor for the life of `file`; lseek has no
        // memory effects.
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        }
    };
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            // The filesystem cannot tell holes: all of it may hold data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(std::iter::once(0..size).collect());
            }
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        extents.push(start..end);
        at = end;
    }
    Ok(extents)
}

#[cfg(not(target_os = "linux"))]
fn data_extents(_file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    Ok(if size == 0 {
        Vec::new()
    } else {
        std::iter::once(0..size).collect()
    })
}

/// A watch over the filesystem holding a path, for group commits: [`sync`](Self::sync)
/// makes every write to that filesystem durable with one call (`syncfs`), and fails if any
/// writeback on it failed since the watch began, even when another process or another
/// watch was told first. (Linux reports a failed writeback to each open descriptor once,
/// from the moment it was opened, and marks the lost pages clean: a descriptor opened
/// after the failure, or one that already reported it, would see nothing.) So a group
/// begins its watch before it writes anything.
#[derive(Debug)]
pub struct FilesystemSync {
    #[cfg(target_os = "linux")]
    watched: File,
}

impl FilesystemSync {
    /// Begins watching the filesystem holding `path` (a file or directory). Where the
    /// system has no such call, `None` (and `path` is not opened: Windows opens no
    /// directory as a file): sync the files one by one instead.
    ///
    /// # Errors
    /// When `path` cannot be opened.
    #[cfg(target_os = "linux")]
    pub fn watch(path: &Path) -> io::Result<Option<Self>> {
        Ok(Some(Self {
            watched: File::open(path)?,
        }))
    }

    /// See the Linux version.
    ///
    /// # Errors
    /// Never.
    #[cfg(not(target_os = "linux"))]
    pub fn watch(_path: &Path) -> io::Result<Option<Self>> {
        Ok(None)
    }

    /// Makes every write to the filesystem durable.
    ///
    /// # Errors
    /// On an IO error, or when a writeback failed since the watch began.
    #[cfg(target_os = "linux")]
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is valid for the life of `watched`; syncfs has no memory
        // effects.
        if unsafe { libc::syncfs(self.watched.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// See the Linux version.
    ///
    /// # Errors
    /// Never: no watch is made here.
    #[cfg(not(target_os = "linux"))]
    pub fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{SIZES, pattern};
    use std::io::Write;

    #[test]
    fn volumes_and_disks_are_told_from_files() {
        for device in [r"\\.\C:", r"\\.\PhysicalDrive1", "//./PhysicalDrive0"] {
            assert!(names_device(Path::new(device)), "{device}");
        }
        for file in [
            r"C:\images\disk.vhdx",
            "/var/lib/disk.img",
            r"\\server\share\disk.img",
            r"\\.\",
        ] {
            assert!(!names_device(Path::new(file)), "{file}");
        }
        assert_eq!(is_device_path(Path::new(r"\\.\C:")), cfg!(windows));
    }

    #[test]
    fn buffers_are_aligned() {
        for size in [1, ALIGN - 1, ALIGN, ALIGN + 1, 1 << 20] {
            let buf = AlignedBuf::zeroed(size);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
            assert_eq!(buf.len(), size);
            assert!(buf.capacity() >= size && buf.capacity().is_multiple_of(ALIGN));
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn reads_every_interesting_size_at_every_block() {
        let dir = tempfile::tempdir().unwrap();
        for &size in SIZES {
            let path = dir.path().join(format!("f{size}"));
            let data = pattern(size, 3);
            std::fs::write(&path, &data).unwrap();
            let file = PositionalFile::open(&path).unwrap();
            let block = 1 << 16;
            let mut got = Vec::new();
            let mut buf = AlignedBuf::zeroed(block);
            for offset in (0..size.max(1)).step_by(block) {
                let n = file.read_at(offset as u64, block, &mut buf).unwrap();
                assert_eq!(n, block.min(size - offset.min(size)), "size {size}");
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, data, "size {size}");
        }
    }

    #[test]
    fn falls_back_to_buffered_reads_when_direct_io_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&pattern(10_000, 1))
            .unwrap();
        // What the system says to a flag or read it cannot do unbuffered.
        #[cfg(unix)]
        let refused = libc::EINVAL;
        #[cfg(windows)]
        let refused = 87; // ERROR_INVALID_PARAMETER
        let refuse = |_: &Path| -> io::Result<File> { Err(io::Error::from_raw_os_error(refused)) };
        let file = PositionalFile::open_with(&path, refuse).unwrap();
        assert!(!file.is_direct());
        let mut buf = AlignedBuf::zeroed(16_384);
        assert_eq!(file.read_at(0, 16_384, &mut buf).unwrap(), 10_000);
        assert_eq!(&buf[..], &pattern(10_000, 1)[..]);
        // Other errors are not swallowed.
        let denied = |_: &Path| -> io::Result<File> { Err(io::ErrorKind::PermissionDenied.into()) };
        assert!(PositionalFile::open_with(&path, denied).is_err());
    }

    #[test]
    fn files_in_memory_are_mapped_in_place_and_others_are_not() {
        if let Some(dir) = crate::testdata::memory_dir() {
            for &size in SIZES {
                let path = dir.path().join(format!("m{size}"));
                let data = pattern(size, 4);
                std::fs::write(&path, &data).unwrap();
                let file = PositionalFile::open(&path).unwrap();
                assert!(file.is_in_memory());
                for offset in (0..size).step_by(ALIGN * 3) {
                    let len = (size - offset).min(ALIGN * 5 + 7);
                    let mapped = file.map_at(offset as u64, len).unwrap();
                    assert_eq!(&mapped[..], &data[offset..offset + len], "size {size}");
                }
                let past_end = file.map_at(0, size + 1).unwrap_err();
                assert_eq!(past_end.kind(), io::ErrorKind::UnexpectedEof);
                assert!(file.map_at(1, 1).is_err(), "unaligned or past the end");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, pattern(5000, 4)).unwrap();
        let file = PositionalFile::open(&path).unwrap();
        assert_eq!(
            file.is_in_memory(),
            is_memory_backed(&File::open(&path).unwrap())
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn holes_are_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, &[1u8; 4096], 32 << 20).unwrap();
        drop(file);
        let extents = PositionalFile::open(&path).unwrap().data_extents().unwrap();
        let covered: u64 = extents.iter().map(|r| r.end - r.start).sum();
        assert!((4096..64 << 20).contains(&covered), "{extents:?}");
        assert!(extents.iter().any(|r| r.contains(&(32 << 20))));
    }
}
