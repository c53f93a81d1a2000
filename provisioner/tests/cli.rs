//! The `levee` binary against a temp data dir: customers, validation
//! errors, secrets at rest, and the appliance lifecycle.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

struct Levee {
    dir: tempfile::TempDir,
}

impl Levee {
    fn new() -> Result<Levee> {
        Ok(Levee {
            dir: tempfile::tempdir()?,
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        common::Cli::new(&self.data()).ok(args)
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        common::Cli::new(&self.data()).fails(args)
    }

    fn write(&self, name: &str, text: &str) -> Result<String> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ok(args)?)?)
    }
}

const ACME: &str = "\
customer: acme
sources:
  - name: finance
    smb: smb://backup@files.acme.lan/finance
    password: Sup3r-Secret-Finance
  - name: scans
    path: /srv/scans
offsite:
  - name: cold
    url: s3://acme-backups/levee
    access_key_id: AKIAEXAMPLE
    secret_access_key: S3-Secret-Key-Value
heartbeat_interval: 1m
";

fn apply(levee: &Levee, name: &str, text: &str) -> Result<String> {
    let f = levee.write(name, text)?;
    levee.fails(&["customer", "apply", "-f", &f])
}

#[test]
fn broken_yaml_is_refused_with_file_line_and_column() -> Result<()> {
    let levee = Levee::new()?;
    let cases = [
        ("syntax.yaml", "customer: acme\nsources:\n  - name: a\n   path: [x\n", "syntax.yaml:4:", ""),
        (
            "unknown.yaml",
            "customer: acme\nsources:\n  - name: a\n    path: /x\n    paswd: y\n",
            "unknown.yaml:5:5: sources[0]: unknown field `paswd`",
            "expected one of",
        ),
        (
            "type.yaml",
            "customer: acme\nretention:\n  keep_daily: lots\n",
            "type.yaml:3:15: retention.keep_daily: invalid type: string \"lots\"",
            "u32",
        ),
        (
            "nopw.yaml",
            "customer: acme\nsources:\n  - name: a\n    path: /x\n  - name: b\n    smb: smb://u@h/share\n",
            "nopw.yaml:5:5: sources[1].password: missing; an SMB source needs a password (or password_file)",
            "",
        ),
        (
            "smb.yaml",
            "customer: acme\nsources:\n  - name: b\n    smb: smb://files.acme.lan/share\n    password: x\n",
            "smb.yaml:4:10: sources[0].smb: `smb://files.acme.lan/share` names no user",
            "smb://user@host[:port]/share[/path]",
        ),
        (
            "schedule.yaml",
            "customer: acme\nschedules:\n  - name: n\n    at: \"25:00\"\n",
            "schedule.yaml:4:9: schedules[0].at: `25:00` is not a time of day; expected HH:MM",
            "",
        ),
    ];
    for (file, text, want, also) in cases {
        let err = apply(&levee, file, text)?;
        let path = levee.dir.path().join(file).display().to_string();
        let want = want.replacen(file, &path, 1);
        ensure!(err.contains(&want), "{file}: want `{want}` in:\n{err}");
        ensure!(err.contains(also), "{file}: want `{also}` in:\n{err}");
    }
    // Nothing was stored.
    ensure!(levee.json(&["customer", "list", "--json"])? == serde_json::json!([]));
    Ok(())
}

#[test]
fn secrets_are_never_shown_nor_stored_in_clear() -> Result<()> {
    let levee = Levee::new()?;
    let f = levee.write("acme.yaml", ACME)?;
    let out = levee.ok(&["customer", "apply", "-f", &f])?;
    ensure!(out.contains("customer acme created"), "{out}");
    let secrets = ["Sup3r-Secret-Finance", "S3-Secret-Key-Value"];
    for args in [
        &["customer", "show", "acme"][..],
        &["customer", "show", "acme", "--json"],
        &["customer", "list", "--json"],
        &["customer", "list"],
    ] {
        let out = levee.ok(args)?;
        for s in secrets {
            ensure!(!out.contains(s), "{args:?} printed a secret:\n{out}");
        }
        if args[1] == "show" {
            ensure!(out.contains("********"), "{args:?}:\n{out}");
        }
    }
    let shown = levee.json(&["customer", "show", "acme", "--json"])?;
    ensure!(
        shown["config"]["sources"][0]["password"] == "********",
        "{shown}"
    );
    ensure!(
        shown["config"]["offsite"][0]["access_key_id"] == "AKIAEXAMPLE",
        "{shown}"
    );

    // Re-applying unchanged changes nothing; a new password is reported
    // without its value.
    ensure!(levee
        .ok(&["customer", "apply", "-f", &f])?
        .contains("customer acme unchanged"));
    let f2 = levee.write(
        "acme2.yaml",
        &ACME
            .replace("Sup3r-Secret-Finance", "Another-Secret-42")
            .replace("1m", "2m"),
    )?;
    let out = levee.ok(&["customer", "apply", "-f", &f2])?;
    ensure!(out.contains("~ sources[0].password: (changed)"), "{out}");
    ensure!(out.contains("~ heartbeat_interval: 1m -> 2m"), "{out}");
    ensure!(!out.contains("Another-Secret-42"), "{out}");

    // Not in any file of the data dir (database, WAL) either.
    let key = std::fs::metadata(levee.data().join("server.key"))?;
    ensure!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777 == 0o600);
    for entry in std::fs::read_dir(levee.data())? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        for s in secrets.iter().chain(&["Another-Secret-42"]) {
            ensure!(
                !contains(&bytes, s.as_bytes()),
                "{} holds `{s}` in clear",
                path.display()
            );
        }
    }
    Ok(())
}

#[test]
fn password_files_are_read_relative_to_the_yaml() -> Result<()> {
    let levee = Levee::new()?;
    levee.write("pw", "From-A-File\n")?;
    let f = levee.write(
        "c.yaml",
        "customer: filed\nsources:\n  - name: s\n    smb: smb://u@h/s\n    password_file: pw\n",
    )?;
    levee.ok(&["customer", "apply", "-f", &f])?;
    let shown = levee.json(&["customer", "show", "filed", "--json"])?;
    ensure!(
        shown["config"]["sources"][0]["password"] == "********",
        "{shown}"
    );
    ensure!(
        shown["config"]["sources"][0].get("password_file").is_none(),
        "{shown}"
    );
    Ok(())
}

#[test]
fn the_example_configuration_applies() -> Result<()> {
    let levee = Levee::new()?;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/acme.yaml");
    let out = levee.ok(&[
        "customer",
        "apply",
        "-f",
        &example.display().to_string(),
        "--dry-run",
    ])?;
    ensure!(out.contains("customer acme would be created"), "{out}");
    ensure!(
        levee.json(&["customer", "list", "--json"])? == serde_json::json!([]),
        "dry run stored"
    );
    Ok(())
}

#[test]
fn appliance_lifecycle_register_approve_replace_retire() -> Result<()> {
    let levee = Levee::new()?;
    let f = levee.write("acme.yaml", ACME)?;
    levee.ok(&["customer", "apply", "-f", &f])?;
    const A: &str = "52:54:00:00:00:a1";
    const B: &str = "52:54:00:00:00:b2";
    const C: &str = "52:54:00:00:00:c3";

    let err = levee.fails(&["appliance", "register", "--mac", A, "--customer", "nobody"])?;
    ensure!(err.contains("customer `nobody` does not exist"), "{err}");
    let out = levee.ok(&[
        "appliance",
        "register",
        "--mac",
        A,
        "--customer",
        "acme",
        "--serial",
        "SN-1",
    ])?;
    ensure!(
        out.contains("registered") && out.contains("customer acme"),
        "{out}"
    );

    // `add` is still there, for scripts that use it.
    levee.ok(&["appliance", "add", "--mac", B])?;
    let b = levee.json(&["appliance", "show", B, "--json"])?;
    ensure!(
        b["appliance"]["customer"].is_null() && b["appliance"]["state"] == "pending",
        "{b}"
    );
    let out = levee.ok(&["appliance", "show", B])?;
    ensure!(out.contains("waiting for approval"), "{out}");
    levee.ok(&["appliance", "approve", B, "--customer", "acme"])?;
    let b = levee.json(&["appliance", "show", B, "--json"])?;
    ensure!(b["appliance"]["customer"] == "acme", "{b}");
    let steps: Vec<&str> = b["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    ensure!(steps == ["registered", "approved"], "{steps:?}");

    let list = levee.ok(&["appliance", "list"])?;
    for col in [
        "MAC",
        "SERIAL",
        "CUSTOMER",
        "STATE",
        "IMAGE",
        "SLOT",
        "LAST HEARTBEAT",
        "STATUS",
    ] {
        ensure!(list.contains(col), "no {col} in:\n{list}");
    }
    let row = list.lines().find(|l| l.contains(A)).context("A listed")?;
    ensure!(
        row.contains("SN-1")
            && row.contains("acme")
            && row.contains("pending")
            && row.contains("offline"),
        "{row}"
    );

    // Replace A (by id) with C: C takes over, A is revoked.
    let a_id = levee.json(&["appliance", "show", A, "--json"])?["appliance"]["id"].to_string();
    let out = levee.ok(&["appliance", "replace", &a_id, "--with", C])?;
    ensure!(out.contains("revoked"), "{out}");
    let a = levee.json(&["appliance", "show", A, "--json"])?;
    ensure!(
        a["appliance"]["state"] == "retired" && a["appliance"]["revoked_at"].is_u64(),
        "{a}"
    );
    let c = levee.json(&["appliance", "show", C, "--json"])?;
    ensure!(c["appliance"]["customer"] == "acme", "{c}");
    ensure!(
        c["appliance"]["replaces"] == a_id.parse::<serde_json::Value>()?,
        "{c}"
    );
    let err = levee.fails(&["appliance", "replace", A, "--with", "52:54:00:00:00:d4"])?;
    ensure!(err.contains("already retired or replaced"), "{err}");

    // Retire B by MAC; it shows as retired with its reason.
    levee.ok(&["appliance", "retire", B, "--reason", "stolen"])?;
    let out = levee.ok(&["appliance", "show", B])?;
    ensure!(
        out.contains("state:          retired (stolen)") && out.contains("revoked:"),
        "{out}"
    );
    let err = levee.fails(&["appliance", "retire", B])?;
    ensure!(err.contains("already retired"), "{err}");

    let all = levee.json(&["appliance", "list", "--json"])?;
    let states: Vec<(String, String, bool)> = all
        .as_array()
        .context("list")?
        .iter()
        .map(|a| {
            (
                a["mac"].as_str().unwrap_or("").to_string(),
                a["state"].as_str().unwrap_or("").to_string(),
                a["online"] == true,
            )
        })
        .collect();
    ensure!(
        states
            == [
                (A.to_string(), "retired".to_string(), false),
                (B.to_string(), "retired".to_string(), false),
                (C.to_string(), "pending".to_string(), false),
            ],
        "{states:?}"
    );
    let only = levee.json(&["appliance", "list", "--customer", "acme", "--json"])?;
    ensure!(only.as_array().map(|a| a.len()) == Some(3));
    let err = levee.fails(&["appliance", "show", "nope"])?;
    ensure!(err.contains("neither a MAC"), "{err}");
    Ok(())
}

#[test]
fn help_has_examples() -> Result<()> {
    let levee = Levee::new()?;
    for cmd in [
        &["customer", "apply", "--help"][..],
        &["appliance", "register", "--help"],
        &["appliance", "approve", "--help"],
        &["appliance", "replace", "--help"],
        &["appliance", "restore", "--help"],
        &["appliance", "retire", "--help"],
        &["appliance", "list", "--help"],
    ] {
        let out = levee.ok(cmd)?;
        ensure!(out.contains("Example"), "{cmd:?}:\n{out}");
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn r14_recovery_key_init_prints_a_paper_key_and_check_matches_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let levee = Levee::new()?;
    let paper = levee.dir.path().join("acme-recovery.txt");
    let paper_arg = paper.display().to_string();
    let out = levee.ok(&[
        "customer",
        "recovery-key",
        "init",
        "acme",
        "--out",
        &paper_arg,
    ])?;
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("recovery_key: x25519:"))
        .context("no recovery_key line printed")?
        .to_string();
    let mode = std::fs::metadata(&paper)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "paper key file mode {mode:o}");
    let text = std::fs::read_to_string(&paper)?;
    ensure!(text.contains("keep it offline"), "{text}");
    // Never overwritten.
    let err = levee.fails(&[
        "customer",
        "recovery-key",
        "init",
        "acme",
        "--out",
        &paper_arg,
    ])?;
    ensure!(err.contains("never overwritten"), "{err}");
    ensure!(
        std::fs::read_to_string(&paper)? == text,
        "the paper key file changed"
    );

    let f = levee.write("acme.yaml", &format!("customer: acme\n{line}\n"))?;
    levee.ok(&["customer", "apply", "-f", &f])?;
    let ok = levee.ok(&[
        "customer",
        "recovery-key",
        "check",
        "acme",
        "--key",
        &paper_arg,
    ])?;
    ensure!(ok.starts_with("ok:"), "{ok}");
    // The public key is shown; the paper key never is.
    let shown = levee.ok(&["customer", "show", "acme"])?;
    let paper_line = text.lines().last().context("paper line")?;
    ensure!(
        shown.contains("x25519:") && !shown.contains(paper_line),
        "{shown}"
    );

    let other = levee.dir.path().join("other.txt");
    let other_arg = other.display().to_string();
    levee.ok(&[
        "customer",
        "recovery-key",
        "init",
        "acme",
        "--out",
        &other_arg,
    ])?;
    let err = levee.fails(&[
        "customer",
        "recovery-key",
        "check",
        "acme",
        "--key",
        &other_arg,
    ])?;
    ensure!(err.contains("not acme's configured recovery key"), "{err}");
    // A bad key in the YAML is named with its line.
    let bad = levee.write("bad.yaml", "customer: acme\nrecovery_key: x25519:abc\n")?;
    let err = levee.fails(&["customer", "apply", "-f", &bad])?;
    ensure!(
        err.contains("bad.yaml:2:") && err.contains("recovery_key"),
        "{err}"
    );
    Ok(())
}
