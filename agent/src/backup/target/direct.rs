//! Large restored files written with O_DIRECT from an aligned staging
//! buffer, the small tail through the page cache.
//!
//! Why: a buffered write copies every byte into the page cache (ext4's
//! buffered write path, the copy included, was ~25% of a restore's samples
//! and the largest single cost) and the final `syncfs` then writes it all
//! back at once. A direct write hands the aligned buffer to the device: no
//! page-cache copy, and the data is on its way while the next blobs are
//! decoded instead of at the end. Blobs have any length, so they are
//! gathered into a buffer aligned for O_DIRECT (address, length and file
//! offset in whole 4 KiB blocks) and written when it is full.
//!
//! A file system that refuses O_DIRECT (tmpfs on older kernels, some FUSE
//! ones) refuses it at `fcntl` or at the first write with EINVAL; the file
//! is then finished through the page cache, nothing lost.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;

use aligned_vec::{AVec, ConstAlign};

use crate::backup::backend::local::DIRECT_ALIGN;

/// Files at least this large are written directly; below it the two
/// `fcntl`s and the separate tail cost more than the copy they save.
pub const DIRECT_MIN_FILE: u64 = 256 * 1024;

/// Staging buffer: one device write per 4 MiB.
const STAGE: usize = 4 << 20;

const BLOCK: u64 = DIRECT_ALIGN as u64;

type Buf = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

thread_local! {
    /// One staging buffer per restore worker, reused file after file (a
    /// fresh 4 MiB per file would be page faults and zeroing every time).
    static SPARE: RefCell<Option<Buf>> = const { RefCell::new(None) };
}

/// A file being written front to back through an aligned buffer.
pub struct Staged {
    buf: Buf,
    /// File offset of `buf[0]`: a whole number of blocks while `direct`.
    start: u64,
    /// Whether the descriptor still has O_DIRECT (cleared after an EINVAL).
    direct: bool,
    /// End of the last byte handed to the kernel (a trailing hole beyond it
    /// needs a `set_len`).
    written: u64,
}

impl Staged {
    /// Puts `f` (a new, empty file) in O_DIRECT mode; `None` if refused.
    pub fn new(f: &File) -> Option<Self> {
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on an open descriptor; no pointers involved.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
            return None;
        }
        let mut buf = SPARE
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(|| AVec::with_capacity(DIRECT_ALIGN, STAGE));
        buf.clear();
        Some(Self {
            buf,
            start: 0,
            direct: true,
            written: 0,
        })
    }

    /// Appends `data` at the current end.
    pub fn write(&mut self, f: &File, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let room = STAGE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == STAGE {
                self.flush(f)?;
            }
        }
        Ok(())
    }

    /// `n` zero bytes at the current end: a hole, except for the parts of
    /// the two blocks it shares with data (written as zeros, as those
    /// blocks are allocated anyway).
    pub fn zeros(&mut self, f: &File, n: u64) -> std::io::Result<()> {
        let end = self.start + self.buf.len() as u64 + n;
        let mut pos = self.start + self.buf.len() as u64;
        let to_block = (pos.next_multiple_of(BLOCK)).min(end);
        self.fill_zeros(f, to_block - pos)?;
        pos = to_block;
        if pos == end {
            return Ok(());
        }
        // The staged data now ends on a block boundary: write it, skip
        // the whole blocks of the hole, stage the zeros of the last one.
        self.flush(f)?;
        self.start = end - end % BLOCK;
        self.fill_zeros(f, end - self.start)
    }

    fn fill_zeros(&mut self, f: &File, mut n: u64) -> std::io::Result<()> {
        while n > 0 {
            let room = (STAGE - self.buf.len()) as u64;
            let k = room.min(n) as usize;
            self.buf.resize(self.buf.len() + k, 0);
            n -= k as u64;
            if self.buf.len() == STAGE {
                self.flush(f)?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes (a whole number of blocks, or anything once
    /// O_DIRECT is off) and empties the buffer.
    fn flush(&mut self, f: &File) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.put(f, 0, self.buf.len())?;
        self.start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// `buf[from..to]` at its offset, directly if possible.
    fn put(&mut self, f: &File, from: usize, to: usize) -> std::io::Result<()> {
        let at = self.start + from as u64;
        match f.write_all_at(&self.buf[from..to], at) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // This file system takes no direct writes after all.
                self.buffered(f)?;
                f.write_all_at(&self.buf[from..to], at)?;
            }
            r => r?,
        }
        self.written = at + (to - from) as u64;
        Ok(())
    }

    fn buffered(&mut self, f: &File) -> std::io::Result<()> {
        if !self.direct {
            return Ok(());
        }
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on an open descriptor; no pointers involved.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    /// Writes what is staged: the whole blocks directly, the last partial
    /// block through the page cache. Returns the end of the data written.
    pub fn finish(&mut self, f: &File) -> std::io::Result<u64> {
        let len = self.buf.len();
        let whole = len - len % DIRECT_ALIGN;
        if whole > 0 {
            self.put(f, 0, whole)?;
        }
        if whole < len {
            self.buffered(f)?;
            self.put(f, whole, len)?;
        }
        self.start += len as u64;
        self.buf.clear();
        Ok(self.written)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let buf = std::mem::replace(&mut self.buf, AVec::new(DIRECT_ALIGN));
        SPARE.with(|s| *s.borrow_mut() = Some(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Data, holes and tails of every alignment come out byte for byte
    /// (whether or not the test's file system takes O_DIRECT), and a long
    /// hole stays a hole.
    #[test]
    fn staged_writes_match_and_holes_stay_sparse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pieces: Vec<Vec<(bool, usize)>> = vec![
            vec![(false, 5_000_000), (false, 1)],
            vec![(false, 4096 * 3)],
            vec![(true, 10), (false, 100)],
            vec![(false, 700_001), (true, 9_000_000), (false, 3), (true, 5)],
            vec![(false, STAGE), (true, 4096), (false, STAGE - 1)],
        ];
        for (i, list) in pieces.iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            let f = File::create(&p).expect("create");
            let mut s = Staged::new(&f);
            let mut want = Vec::new();
            let mut pos = 0u64;
            for (k, (zero, n)) in list.iter().enumerate() {
                if *zero {
                    want.resize(want.len() + n, 0);
                    if let Some(s) = &mut s {
                        s.zeros(&f, *n as u64).expect("zeros");
                    }
                } else {
                    let d: Vec<u8> = (0..*n).map(|j| (j * 7 + k + 1) as u8 | 1).collect();
                    match &mut s {
                        Some(s) => s.write(&f, &d).expect("write"),
                        None => f.write_all_at(&d, pos).expect("write"),
                    }
                    want.extend_from_slice(&d);
                }
                pos += *n as u64;
            }
            let end = match &mut s {
                Some(s) => s.finish(&f).expect("finish"),
                None => pos,
            };
            if end < pos {
                f.set_len(pos).expect("set_len");
            }
            drop(s);
            drop(f);
            let got = std::fs::read(&p).expect("read");
            assert_eq!(got.len(), want.len(), "file {i}");
            assert!(got == want, "file {i} differs");
            if i == 3 {
                let blocks = std::fs::metadata(&p).expect("stat").blocks() * 512;
                assert!(blocks < 4_000_000, "the hole was written: {blocks} bytes");
            }
        }
    }
}
