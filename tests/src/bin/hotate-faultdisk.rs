//! A disk with a volatile write cache and injectable faults, for the durability tests: a
//! FUSE file system holding one file, `disk`, that a loop device turns into a block
//! device (ext4 on top holds a server's data dir), and a control file, `ctl`.
//!
//! Writes land in a cache in this process's memory; a flush (the loop device's fsync,
//! which ext4 sends for its journal commits and for every fsync) moves them to the
//! platter, a file on the host. A power cut (`cut`) throws the cache away, or with
//! `cut-half SEED` lets a random half of its pages reach the platter, as a disk that
//! reorders its cache would; from then on every read and write fails until `revive`.
//! `fail-write START LEN COUNT` makes the next COUNT writes that touch bytes
//! `START..START+LEN` of the disk fail with EIO (`fail-read` likewise), a transient
//! error after which the disk works again; `fail-write-with HEX COUNT` fails the next
//! COUNT writes whose data holds the bytes HEX (a test names what it wants to lose, such
//! as a database row, without knowing where the file system will put it). Reading `ctl`
//! tells the counters.
//!
//! `hotate-faultdisk PLATTER MOUNTPOINT` serves until the mount point is unmounted.
//! Linux only, as root (the mount is a plain mount(2)).

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let [platter, mountpoint] = args.as_slice() else {
        eprintln!("usage: hotate-faultdisk PLATTER MOUNTPOINT");
        return std::process::ExitCode::from(2);
    };
    match linux::serve(platter, mountpoint) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotate-faultdisk: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("hotate-faultdisk runs on Linux only");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::ops::Range;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, UNIX_EPOCH};

    use fuser::{
        Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
        KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
        ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
    };
    use rand::{Rng, SeedableRng};

    const PAGE: u64 = 4096;
    const DISK: INodeNo = INodeNo(2);
    const CTL: INodeNo = INodeNo(3);
    const TTL: Duration = Duration::ZERO;

    pub fn serve(platter: &Path, mountpoint: &Path) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(platter)?;
        let size = file.metadata()?.len();
        let disk = FaultDisk {
            state: Mutex::new(State {
                platter: file,
                size,
                cache: BTreeMap::new(),
                dead: false,
                faults: Vec::new(),
                counters: Counters::default(),
            }),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("hotate-faultdisk".into()),
            MountOption::RW,
        ];
        fuser::mount(disk, mountpoint, &config)
    }

    #[derive(Debug)]
    struct FaultDisk {
        state: Mutex<State>,
    }

    #[derive(Debug)]
    struct State {
        /// What survives a power cut.
        platter: File,
        size: u64,
        /// Pages written since the last flush, by page index.
        cache: BTreeMap<u64, Vec<u8>>,
        /// Cut off: every read and write fails until `revive`.
        dead: bool,
        faults: Vec<Fault>,
        counters: Counters,
    }

    #[derive(Debug, Default)]
    struct Counters {
        writes: u64,
        flushes: u64,
        failed_writes: u64,
        failed_reads: u64,
        cuts: u64,
        pages_lost: u64,
    }

    #[derive(Debug)]
    struct Fault {
        write: bool,
        range: Range<u64>,
        /// Only accesses whose data holds these bytes (writes).
        holding: Option<Vec<u8>>,
        left: u64,
    }

    impl FaultDisk {
        fn state(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl State {
        /// Whether an armed fault takes this access (and counts it).
        fn faulted(&mut self, write: bool, range: &Range<u64>, data: &[u8]) -> bool {
            let hit = self.faults.iter_mut().find(|f| {
                f.write == write
                    && f.left > 0
                    && f.range.start < range.end
                    && range.start < f.range.end
                    && f.holding.as_ref().is_none_or(|text| {
                        data.windows(text.len())
                            .any(|window| window == text.as_slice())
                    })
            });
            match hit {
                Some(fault) => {
                    fault.left -= 1;
                    self.faults.retain(|f| f.left > 0);
                    true
                }
                None => false,
            }
        }

        fn page(&self, index: u64) -> io::Result<Vec<u8>> {
            if let Some(page) = self.cache.get(&index) {
                return Ok(page.clone());
            }
            let mut page = vec![0; PAGE as usize];
            let start = index * PAGE;
            let len = (self.size - start).min(PAGE) as usize;
            self.platter.read_exact_at(&mut page[..len], start)?;
            Ok(page)
        }

        fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            let end = (offset + len).min(self.size);
            let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
            let mut at = offset;
            while at < end {
                let index = at / PAGE;
                let within = (at % PAGE) as usize;
                let take = ((PAGE - at % PAGE).min(end - at)) as usize;
                out.extend_from_slice(&self.page(index)?[within..within + take]);
                at += take as u64;
            }
            Ok(out)
        }

        fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut at = offset;
            let mut rest = data;
            while !rest.is_empty() {
                let index = at / PAGE;
                let within = (at % PAGE) as usize;
                let take = (PAGE as usize - within).min(rest.len());
                let mut page = self.page(index)?;
                page[within..within + take].copy_from_slice(&rest[..take]);
                self.cache.insert(index, page);
                rest = &rest[take..];
                at += take as u64;
            }
            Ok(())
        }

        /// Moves `pages` of the cache to the platter.
        fn settle(&mut self, pages: impl IntoIterator<Item = u64>) -> io::Result<()> {
            for index in pages {
                if let Some(page) = self.cache.remove(&index) {
                    let start = index * PAGE;
                    let len = (self.size - start).min(PAGE) as usize;
                    self.platter.write_all_at(&page[..len], start)?;
                }
            }
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            let pages: Vec<u64> = self.cache.keys().copied().collect();
            self.settle(pages)?;
            self.counters.flushes += 1;
            Ok(())
        }

        /// A power cut: the cache is lost but for a random half of it when `seed` is set.
        fn cut(&mut self, seed: Option<u64>) -> io::Result<()> {
            let pages: Vec<u64> = self.cache.keys().copied().collect();
            let survivors: Vec<u64> = match seed {
                Some(seed) => {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    pages
                        .iter()
                        .copied()
                        .filter(|_| rng.random_bool(0.5))
                        .collect()
                }
                None => Vec::new(),
            };
            self.counters.pages_lost += (pages.len() - survivors.len()) as u64;
            self.settle(survivors)?;
            self.cache.clear();
            self.dead = true;
            self.counters.cuts += 1;
            Ok(())
        }

        fn command(&mut self, line: &str) -> Result<(), String> {
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| -> Result<u64, String> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("{line:?}: argument {i} must be a number"))
            };
            match words.first().copied() {
                None => Ok(()),
                Some("cut") => self.cut(None).map_err(|e| e.to_string()),
                Some("cut-half") => self.cut(Some(number(1)?)).map_err(|e| e.to_string()),
                Some("revive") => {
                    self.dead = false;
                    Ok(())
                }
                Some(kind @ ("fail-write" | "fail-read")) => {
                    let start = number(1)?;
                    self.faults.push(Fault {
                        write: kind == "fail-write",
                        range: start..start + number(2)?,
                        holding: None,
                        left: number(3)?,
                    });
                    Ok(())
                }
                Some("fail-write-with") => {
                    let bytes = words
                        .get(1)
                        .and_then(|hex| from_hex(hex))
                        .ok_or_else(|| format!("{line:?}: name the bytes in hex"))?;
                    self.faults.push(Fault {
                        write: true,
                        range: 0..u64::MAX,
                        holding: Some(bytes),
                        left: number(2)?,
                    });
                    Ok(())
                }
                Some("clear") => {
                    self.faults.clear();
                    Ok(())
                }
                Some(other) => Err(format!("unknown command {other:?}")),
            }
        }

        fn report(&self) -> String {
            let c = &self.counters;
            format!(
                "writes {}\nflushes {}\nfailed_writes {}\nfailed_reads {}\ncuts {}\npages_lost {}\ndirty_pages {}\ndead {}\narmed {}\n",
                c.writes,
                c.flushes,
                c.failed_writes,
                c.failed_reads,
                c.cuts,
                c.pages_lost,
                self.cache.len(),
                u8::from(self.dead),
                self.faults.len()
            )
        }
    }

    /// Bytes from an even number of hex digits; `None` for anything else or nothing.
    fn from_hex(hex: &str) -> Option<Vec<u8>> {
        if hex.is_empty() || !hex.len().is_multiple_of(2) {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect()
    }

    fn attr(ino: INodeNo, size: u64) -> FileAttr {
        let dir = ino == INodeNo::ROOT;
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o600 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: PAGE as u32,
        }
    }

    impl Filesystem for FaultDisk {
        fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
            let _ = config.set_max_write(1 << 20);
            Ok(())
        }

        fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            let size = self.state().size;
            match (parent, name.to_str()) {
                (INodeNo::ROOT, Some("disk")) => {
                    reply.entry(&TTL, &attr(DISK, size), fuser::Generation(0));
                }
                (INodeNo::ROOT, Some("ctl")) => {
                    reply.entry(&TTL, &attr(CTL, PAGE), fuser::Generation(0));
                }
                _ => reply.error(Errno::ENOENT),
            }
        }

        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            match ino {
                INodeNo::ROOT => reply.attr(&TTL, &attr(ino, 0)),
                DISK => reply.attr(&TTL, &attr(ino, self.state().size)),
                CTL => reply.attr(&TTL, &attr(ino, PAGE)),
                _ => reply.error(Errno::ENOENT),
            }
        }

        /// Only `ctl` may be truncated (as `echo cmd > ctl` does); nothing changes.
        fn setattr(
            &self,
            _req: &Request,
            ino: INodeNo,
            _mode: Option<u32>,
            _uid: Option<u32>,
            _gid: Option<u32>,
            _size: Option<u64>,
            _atime: Option<fuser::TimeOrNow>,
            _mtime: Option<fuser::TimeOrNow>,
            _ctime: Option<std::time::SystemTime>,
            _fh: Option<FileHandle>,
            _crtime: Option<std::time::SystemTime>,
            _chgtime: Option<std::time::SystemTime>,
            _bkuptime: Option<std::time::SystemTime>,
            _flags: Option<fuser::BsdFileFlags>,
            reply: ReplyAttr,
        ) {
            match ino {
                CTL => reply.attr(&TTL, &attr(ino, PAGE)),
                DISK => reply.attr(&TTL, &attr(ino, self.state().size)),
                _ => reply.error(Errno::EPERM),
            }
        }

        fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
            // Nothing cached in the kernel: every access reaches this process.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }

        fn read(
            &self,
            _req: &Request,
            ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            size: u32,
            _flags: OpenFlags,
            _lock_owner: Option<LockOwner>,
            reply: ReplyData,
        ) {
            let mut state = self.state();
            if ino == CTL {
                let report = state.report().into_bytes();
                let start = (offset as usize).min(report.len());
                let end = (start + size as usize).min(report.len());
                return reply.data(&report[start..end]);
            }
            let range = offset..offset + u64::from(size);
            if state.dead || state.faulted(false, &range, &[]) {
                state.counters.failed_reads += 1;
                return reply.error(Errno::EIO);
            }
            match state.read(offset, u64::from(size)) {
                Ok(data) => reply.data(&data),
                Err(_) => reply.error(Errno::EIO),
            }
        }

        fn write(
            &self,
            _req: &Request,
            ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            data: &[u8],
            _write_flags: WriteFlags,
            _flags: OpenFlags,
            _lock_owner: Option<LockOwner>,
            reply: ReplyWrite,
        ) {
            let mut state = self.state();
            if ino == CTL {
                let text = String::from_utf8_lossy(data);
                for line in text.lines() {
                    if let Err(e) = state.command(line) {
                        eprintln!("hotate-faultdisk: {e}");
                        return reply.error(Errno::EINVAL);
                    }
                }
                return reply.written(data.len() as u32);
            }
            let range = offset..offset + data.len() as u64;
            if range.end > state.size {
                return reply.error(Errno::ENOSPC);
            }
            if state.dead || state.faulted(true, &range, data) {
                state.counters.failed_writes += 1;
                return reply.error(Errno::EIO);
            }
            state.counters.writes += 1;
            match state.write(offset, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(_) => reply.error(Errno::EIO),
            }
        }

        fn flush(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            _lock_owner: LockOwner,
            reply: ReplyEmpty,
        ) {
            reply.ok();
        }

        fn fsync(
            &self,
            _req: &Request,
            ino: INodeNo,
            _fh: FileHandle,
            _datasync: bool,
            reply: ReplyEmpty,
        ) {
            let mut state = self.state();
            if ino != DISK {
                return reply.ok();
            }
            if state.dead {
                return reply.error(Errno::EIO);
            }
            match state.flush() {
                Ok(()) => reply.ok(),
                Err(_) => reply.error(Errno::EIO),
            }
        }

        fn readdir(
            &self,
            _req: &Request,
            ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            mut reply: ReplyDirectory,
        ) {
            if ino != INodeNo::ROOT {
                return reply.error(Errno::ENOTDIR);
            }
            let entries = [
                (INodeNo::ROOT, FileType::Directory, "."),
                (INodeNo::ROOT, FileType::Directory, ".."),
                (DISK, FileType::RegularFile, "disk"),
                (CTL, FileType::RegularFile, "ctl"),
            ];
            for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(*ino, (i + 1) as u64, *kind, name) {
                    break;
                }
            }
            reply.ok();
        }
    }
}
