//! A deterministic `newc` cpio writer: entries in the order given, inode
//! numbers counted from 1, owner root, one fixed mtime. Nothing of the
//! build host (inode numbers, times, user ids) reaches the archive.

/// One archive member.
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    // Stage 1 has no symlinks today (busybox installs its own at boot).
    #[allow(dead_code)]
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

/// Serialises `entries` sorted by path (parents sort before children).
pub fn write(mut entries: Vec<Entry>, mtime: u64) -> Vec<u8> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
            Entry::Dir { mode, .. } => (0o040000 | mode, &[], (0, 0)),
            Entry::File { mode, data, .. } => (0o100000 | mode, data, (0, 0)),
            Entry::Symlink { target, .. } => (0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev {
                mode, major, minor, ..
            } => (0o020000 | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        header(
            &mut out,
            i as u32 + 1,
            mode,
            nlink,
            mtime,
            data.len(),
            rdev,
            e.path(),
        );
        out.extend_from_slice(data);
        pad(&mut out);
    }
    header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!");
    // The kernel reads the archive in 512-byte blocks.
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime as u32,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_what_gnu_cpio_reads() {
        let archive = write(
            vec![
                Entry::File {
                    path: "a/x".into(),
                    mode: 0o755,
                    data: b"hello".to_vec(),
                },
                Entry::Dir {
                    path: "a".into(),
                    mode: 0o755,
                },
                Entry::Symlink {
                    path: "l".into(),
                    target: "a/x".into(),
                },
            ],
            7,
        );
        assert_eq!(&archive[..6], b"070701");
        assert_eq!(archive.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .current_dir(dir.path())
            .spawn()
            .expect("cpio (Debian package cpio) must be installed");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a\na/x\nl\n");
        // Same input, same bytes.
        assert_eq!(
            archive,
            write(
                vec![
                    Entry::Dir {
                        path: "a".into(),
                        mode: 0o755
                    },
                    Entry::File {
                        path: "a/x".into(),
                        mode: 0o755,
                        data: b"hello".to_vec()
                    },
                    Entry::Symlink {
                        path: "l".into(),
                        target: "a/x".into()
                    }
                ],
                7
            )
        );
    }
}
