//! Windows ACLs (issue 5): a backup keeps each entry's security descriptor
//! (owner, group, DACL) and a restore onto SMB writes it back. Set and
//! checked with smbcacls, a client independent of ours.

use std::fs;

use crate::samba::{Samba, PASSWORD};
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

fn levee(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = env
        .cmd(&a)
        .env("LEVEE_SMB_PASSWORD", PASSWORD)
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("json")
}

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

    let env = Env::new();
    levee(&env, &["backup", &samba.url("share")]);
    let r = levee(
        &env,
        &[
            "restore",
            "latest",
            "/share/acl",
            "--target",
            &samba.url("restore/r1"),
        ],
    );
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
    let l = levee(
        &env,
        &[
            "restore",
            "latest",
            "/share/acl",
            "--target",
            &out.to_string_lossy(),
        ],
    );
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
