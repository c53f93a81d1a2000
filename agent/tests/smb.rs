//! Backups of a real Samba share on loopback: nested folders, long and
//! Unicode names, a 0-byte file, a >1 GiB sparse file, DOS attributes;
//! restored byte-identical with times, locally and back onto SMB.

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use levee_agent::backup::source::smb::SmbSource;
use levee_agent::backup::source::Source;

use crate::samba::{Samba, PASSWORD};
use crate::util::{assert_same_tree, assert_same_tree_but_mode, rand_bytes, Env};

const BIG: u64 = 1100 * 1024 * 1024;

#[test]
fn smb_backup_and_restore_round_trip() {
    let samba = Samba::start();
    let share = samba.share_dir();
    fs::create_dir_all(share.join("Company/Accounts/2024/Q1")).expect("mkdir");
    fs::write(
        share.join("Company/Accounts/2024/Q1/ledger.xlsx"),
        rand_bytes(10, 2_500_000),
    )
    .expect("write");
    fs::write(
        share.join("Company/Accounts/report.docx"),
        rand_bytes(11, 700_000),
    )
    .expect("write");
    fs::write(share.join("Company/empty.txt"), b"").expect("write");
    fs::write(
        share.join("Company/Ünïcødé – 日本語 ✓.txt"),
        "unicode name\n",
    )
    .expect("write");
    let long = format!("{}.txt", "a very long file name ".repeat(10).trim());
    fs::write(share.join("Company").join(&long), "long\n").expect("write");
    fs::create_dir_all(share.join("Company/attrs")).expect("mkdir");
    fs::write(share.join("Company/attrs/hidden.txt"), "hidden\n").expect("write");
    fs::write(share.join("Company/attrs/readonly.txt"), "readonly\n").expect("write");
    {
        let mut f = fs::File::create(share.join("big-sparse.vhd")).expect("create");
        f.write_all(b"head of a sparse disk image").expect("write");
        f.seek(SeekFrom::Start(BIG / 2)).expect("seek");
        f.write_all(&rand_bytes(12, 100_000)).expect("write");
        f.set_len(BIG).expect("set_len");
    }
    samba.smbclient(
        "share",
        "setmode Company/attrs/hidden.txt +h; setmode Company/attrs/readonly.txt +r",
    );

    let env = Env::new();
    let url = samba.url("share");
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", url.as_str(), "--json"];
        args.extend_from_slice(extra);
        let o = env
            .cmd(&args)
            .env("LEVEE_SMB_PASSWORD", PASSWORD)
            .output()
            .expect("spawn");
        assert!(
            o.status.success(),
            "backup failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let first = backup(&[]);
    assert_eq!(first["files"], 8, "{first}");
    assert_eq!(first["errors"], 0, "{first}");
    assert!(first["bytes_total"].as_u64().unwrap_or(0) > BIG);
    // The sparse file's zeros dedup to almost nothing.
    assert!(
        first["bytes_stored"].as_u64().unwrap_or(u64::MAX) < 20_000_000,
        "{first}"
    );

    // Windows security descriptors (owner, group, DACL) come along.
    let ls = env.json(&["ls", "latest", "/share/Company/attrs"]);
    let sds: Vec<&str> = ls
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["security_descriptor"].as_str())
        .collect();
    assert_eq!(sds.len(), 3, "{ls}");
    // Self-relative SECURITY_DESCRIPTOR: revision 1, SE_SELF_RELATIVE set.
    assert!(
        sds.iter().all(|sd| sd.starts_with("01") && sd.len() > 40),
        "{sds:?}"
    );

    // Unchanged: same size, times and file id: nothing is read again.
    let second = backup(&[]);
    assert_eq!(second["files_unchanged"], 8, "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");

    // Local restore: bytes and times (SMB carries 100 ns).
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_same_tree(&share, &out.join("share"), 100);
    let blocks = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(out.join("share/big-sparse.vhd"))
            .expect("stat")
            .blocks()
    };
    assert!(
        blocks * 512 < 64 * 1024 * 1024,
        "restored sparse file is not sparse ({blocks} blocks)"
    );

    // Restore onto SMB: times, DOS attributes and security descriptors
    // come back too (the Unix modes on the server's disk are Samba's
    // projection of the descriptor, so the descriptors are compared).
    let target = samba.url("restore/r1");
    let o = env
        .cmd(&["restore", "latest", "/share/Company", "--target", &target])
        .env("LEVEE_SMB_PASSWORD", PASSWORD)
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "smb restore: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_tree_but_mode(
        &share.join("Company"),
        &samba.dir.path().join("restore/r1/Company"),
        100,
    );
    let src =
        SmbSource::connect(&samba.url("share/Company/attrs"), Some(PASSWORD)).expect("connect");
    let dst = SmbSource::connect(&samba.url("restore/r1/Company/attrs"), Some(PASSWORD))
        .expect("connect");
    let mut a = src.list("").expect("list");
    let mut b = dst.list("").expect("list");
    a.sort_by(|x, y| x.name.cmp(&y.name));
    b.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(a.len(), 2);
    const HIDDEN: u32 = 0x2;
    const READONLY: u32 = 0x1;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.mtime_ns, y.mtime_ns, "{}", x.name);
        assert_eq!(x.btime_ns, y.btime_ns, "creation time of {}", x.name);
        assert_eq!(
            x.attributes & (HIDDEN | READONLY),
            y.attributes & (HIDDEN | READONLY),
            "attributes of {}",
            x.name
        );
        assert!(x.security_descriptor.is_some(), "{}", x.name);
        assert_eq!(
            x.security_descriptor, y.security_descriptor,
            "security descriptor of {}",
            x.name
        );
    }
    assert!(
        a.iter().any(|e| e.attributes & HIDDEN != 0)
            && a.iter().any(|e| e.attributes & READONLY != 0),
        "setmode did not take: {a:?}"
    );

    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
}

#[test]
fn smb_wrong_password_is_a_clear_error() {
    let samba = Samba::start();
    let env = Env::new();
    let o = env
        .cmd(&["backup", &samba.url("share")])
        .env("LEVEE_SMB_PASSWORD", "wrong")
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("connecting to smb://root@127.0.0.1"), "{err}");
}

/// A file another client holds open without sharing (what Windows does for
/// an open Office or database file) is reported and skipped; the backup
/// still completes (exit 3) with everything else.
#[test]
fn smb_locked_file_is_skipped_and_reported() {
    let samba = Samba::start();
    fs::create_dir_all(samba.share_dir().join("docs")).expect("mkdir");
    fs::write(samba.share_dir().join("docs/free.txt"), "free\n").expect("write");
    // smb2's write opens ask for no sharing at all: a second open fails
    // with STATUS_SHARING_VIOLATION until this writer closes.
    let holder =
        levee_agent::backup::source::smb::SmbConn::connect(&samba.url("share"), Some(PASSWORD))
            .expect("connect");
    let mut writer = holder
        .rt
        .block_on(async {
            holder
                .client
                .lock()
                .await
                .create_file_writer(&holder.tree, "docs/locked.db")
                .await
        })
        .expect("open for writing");
    holder
        .rt
        .block_on(writer.write_chunk(b"in use"))
        .expect("write");

    let env = Env::new();
    let o = env
        .cmd(&["backup", &samba.url("share"), "--json"])
        .env("LEVEE_SMB_PASSWORD", PASSWORD)
        .output()
        .expect("spawn");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(s["errors"], 1, "{s}");
    let msg = s["error_messages"][0].as_str().unwrap_or("");
    assert!(
        msg.contains("locked.db") && msg.contains("sharing violation"),
        "{msg}"
    );
    let ls = env.ok(&["ls", "latest"]);
    assert!(
        ls.contains("/share/docs/free.txt") && !ls.contains("locked.db"),
        "{ls}"
    );
    let _ = holder.rt.block_on(writer.finish());
}

/// A snapshot of a local directory (nanosecond times) restored onto a
/// share (100 ns steps) and again with `--overwrite if-changed` (as a
/// resumed restore ops asked for runs): every file it restored is known
/// again and skipped; one changed on the share is written again.
#[test]
fn smb_if_changed_knows_the_files_it_restored_from_a_local_snapshot() {
    let samba = Samba::start();
    let env = crate::util::Env::new().with_smb_password(PASSWORD);
    let src = env.path("local");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    for (i, name) in ["a.txt", "sub/b.bin", "sub/c.bin"].iter().enumerate() {
        fs::write(src.join(name), rand_bytes(40 + i as u64, 50_000)).expect("write");
    }
    // Times with nanoseconds that are not whole 100 ns steps.
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_767_225_600, 123_456_789);
    for name in ["a.txt", "sub/b.bin", "sub/c.bin"] {
        let f = fs::File::options()
            .write(true)
            .open(src.join(name))
            .expect("open");
        f.set_modified(t).expect("set mtime");
    }
    env.ok(&["backup", &src.to_string_lossy()]);
    let target = samba.url("restore/ifc");
    let first = env.json(&["restore", "latest", "--target", &target]);
    assert_eq!(
        (&first["files"], &first["skipped"]),
        (&3.into(), &0.into()),
        "{first}"
    );
    fs::write(samba.dir.path().join("restore/ifc/local/a.txt"), b"changed").expect("write");
    let again = env.json(&[
        "restore",
        "latest",
        "--target",
        &target,
        "--overwrite",
        "if-changed",
    ]);
    assert_eq!(
        (&again["files"], &again["skipped"]),
        (&1.into(), &2.into()),
        "{again}"
    );
    assert_eq!(
        fs::read(samba.dir.path().join("restore/ifc/local/a.txt")).expect("read"),
        rand_bytes(40, 50_000)
    );
}
