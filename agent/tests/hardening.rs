//! Issue 12, item 9: repository files are the owner's alone, and names
//! with control characters never reach the terminal raw.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::Env;

fn walk(p: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in fs::read_dir(p).expect("read_dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("stat");
        out.push((
            e.path().display().to_string(),
            m.permissions().mode() & 0o777,
            m.is_dir(),
        ));
        if m.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn r12_repository_files_are_0600_and_directories_0700() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), vec![7u8; 3_000_000]).expect("write");
    fs::write(src.join("small"), b"small").expect("write");
    env.ok(&["backup", &src.to_string_lossy()]);
    let mut all = Vec::new();
    walk(&env.repo, &mut all);
    assert!(all.iter().any(|(p, _, d)| !d && p.contains("/keys/")));
    assert!(all.iter().any(|(p, _, d)| !d && p.contains("/data/")));
    for (p, mode, dir) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{p}: {mode:o}");
    }
    let root = fs::metadata(&env.repo).expect("root").permissions().mode() & 0o777;
    assert_eq!(root, 0o700);
}

#[test]
fn r12_control_characters_in_names_are_escaped() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let evil = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\nname\u{202e}txt.exe";
    fs::write(src.join(evil), b"x").expect("write");
    let a = env.json(&["backup", &src.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    fs::write(src.join(evil), b"changed").expect("write");
    let b = env.json(&["backup", &src.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for out in [env.ok(&["ls", "latest"]), env.ok(&["diff", &a, &b])] {
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(!out.contains('\u{202e}'), "{out:?}");
        assert!(
            out.contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\nname\\u{202e}txt.exe"),
            "{out:?}"
        );
        assert!(out.lines().all(|l| !l.starts_with("name")), "{out:?}");
    }
    // JSON keeps the exact name (it escapes by itself).
    let j = env.json(&["ls", "latest"]);
    assert!(j.to_string().contains("evil\\u001b]0;owned"), "{j}");
}
