//! Windows ACLs (issue 5): a backup keeps each entry's security descriptor
//! (owner, group, DACL) and a restore onto SMB writes it back. Set and
//! checked with smbcacls, a client independent of ours.

use std::fs;

use crate::samba::{Samba, PASSWORD, PLAIN_USER};
use crate::util::Env;

/// A deny ACE for a SID no account here has, an allow for Everyone, full
/// control for root: nothing a new file would get by inheritance.
const FILE_DACL: &str = "ACL:S-1-5-21-1-2-3-1001:DENIED/0x0/0x00000002,\
                         ACL:S-1-1-0:ALLOWED/0x0/READ,ACL:S-1-22-1-0:ALLOWED/0x0/FULL";
/// Inheritable ACEs (OI|CI, one inherit-only) on a folder.
const DIR_DACL: &str = "ACL:S-1-1-0:ALLOWED/OI|CI/READ,ACL:S-1-22-1-0:ALLOWED/OI|CI/FULL,\
                        ACL:S-1-5-21-1-2-3-1002:ALLOWED/OI|CI|IO/CHANGE";
/// An owner other than the restoring user (Unix nobody).
const OWNER: &str = "S-1-22-1-65534";

/// smbcacls' owner, group and ACE lines.
fn descriptor(samba: &Samba, share: &str, path: &str) -> Vec<String> {
    samba
        .smbcacls(share, path, &[])
        .lines()
        .filter(|l| {
            ["OWNER:", "GROUP:", "ACL:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn smb_acl_round_trip_onto_smb() {
    let samba = Samba::start();
    let share = samba.share_dir();
    fs::create_dir_all(share.join("acl/sub")).expect("mkdir");
    fs::write(share.join("acl/secret.txt"), "payroll\n").expect("write");
    fs::write(share.join("acl/sub/plain.txt"), "plain\n").expect("write");
    samba.smbcacls("share", "acl/secret.txt", &["--set", FILE_DACL]);
    samba.smbcacls("share", "acl/secret.txt", &["--chown", OWNER]);
    samba.smbcacls("share", "acl/sub", &["--set", DIR_DACL]);
    let secret = descriptor(&samba, "share", "acl/secret.txt");
    assert!(
        secret.contains(&"ACL:S-1-5-21-1-2-3-1001:1/0x0/0x00000002".to_string())
            && secret.contains(&format!("OWNER:{OWNER}")),
        "smbcacls did not set the test ACL: {secret:?}"
    );

    let env = Env::new().with_smb_password(PASSWORD);
    env.json(&["backup", &samba.url("share")]);
    let r = env.json(&[
        "restore",
        "latest",
        "/share/acl",
        "--target",
        &samba.url("restore/r1"),
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["warnings"], 0, "{r}");
    // acl, acl/secret.txt, acl/sub, acl/sub/plain.txt
    assert_eq!(r["security_descriptors"], 4, "{r}");

    for p in ["acl", "acl/secret.txt", "acl/sub", "acl/sub/plain.txt"] {
        let want = descriptor(&samba, "share", p);
        let got = descriptor(&samba, "restore", &format!("r1/{p}"));
        assert_eq!(got, want, "descriptor of {p}");
    }
    assert_eq!(
        fs::read(samba.dir.path().join("restore/r1/acl/secret.txt")).ok(),
        Some(b"payroll\n".to_vec())
    );

    // A local directory has nowhere to put a Windows ACL: data only, and
    // the descriptors stay in the repository.
    let out = env.path("out");
    let l = env.json(&[
        "restore",
        "latest",
        "/share/acl",
        "--target",
        &out.to_string_lossy(),
    ]);
    assert_eq!(
        (l["errors"].as_u64(), l["security_descriptors"].as_u64()),
        (Some(0), Some(0)),
        "{l}"
    );
    assert_eq!(
        fs::read(out.join("acl/secret.txt")).ok(),
        Some(b"payroll\n".to_vec())
    );
}

/// Restoring as an account that may not give files to another owner: the
/// server refuses owner and group (STATUS_INVALID_OWNER), the DACL is still
/// written back, and each such path is a warning, not an error.
#[test]
fn smb_acl_owner_refused_keeps_dacl() {
    let samba = Samba::start();
    let share = samba.share_dir();
    fs::create_dir_all(share.join("acl")).expect("mkdir");
    fs::write(share.join("acl/secret.txt"), "payroll\n").expect("write");
    samba.smbcacls("share", "acl/secret.txt", &["--set", FILE_DACL]);
    // A folder the plain account may write into (Unix and NT permissions).
    let plain = samba.dir.path().join("restore/plain");
    fs::create_dir_all(&plain).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o777)).expect("chmod");
    }

    let env = Env::new().with_smb_password(PASSWORD);
    env.json(&["backup", &samba.url("share")]);
    let target = samba.url_as(PLAIN_USER, "restore/plain");
    let r = env.json(&["restore", "latest", "/share/acl", "--target", &target]);
    assert_eq!(
        (r["errors"].as_u64(), r["files"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    // acl and acl/secret.txt: DACLs written, owners refused.
    assert_eq!(r["security_descriptors"], 2, "{r}");
    assert_eq!(r["warnings"], 2, "{r}");
    let msgs = r["warning_messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        msgs.iter().all(|m| {
            let m = m.as_str().unwrap_or("");
            m.contains("owner and group not restored") && m.contains("INVALID_OWNER")
        }),
        "{r}"
    );

    for p in ["acl", "acl/secret.txt"] {
        let acl = |share: &str, path: &str| -> Vec<String> {
            descriptor(&samba, share, path)
                .into_iter()
                .filter(|l| l.starts_with("ACL:"))
                .collect()
        };
        assert_eq!(
            acl("restore", &format!("plain/{p}")),
            acl("share", p),
            "DACL of {p}"
        );
    }
    let owner = |share: &str, path: &str| {
        descriptor(&samba, share, path)
            .into_iter()
            .find(|l| l.starts_with("OWNER:"))
    };
    assert_ne!(
        owner("restore", "plain/acl/secret.txt"),
        owner("share", "acl/secret.txt"),
        "the plain account should not have been able to set the owner"
    );
}
