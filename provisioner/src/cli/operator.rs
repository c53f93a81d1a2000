//! `levee operator ...`: who may log in to the web panel, and what they did.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::store::validate_name;
use crate::ui::password;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator and print their one-time password, or issue them a
    /// client certificate instead (--cert-out).
    ///
    /// The first login with the one-time password must choose a new
    /// password before anything else. Passwords are stored as argon2id
    /// hashes. With --cert-out the operator has no password: their client
    /// certificate (from the Levee CA, `levee:operator:<name>`) logs them
    /// in. A --read-only operator sees every page and changes nothing
    /// (enforced by the API).
    #[command(
        after_help = "Examples:\n  levee operator add ann\n  levee operator add auditor --read-only\n  levee operator add bot --cert-out /root/levee-bot   # bot.crt, bot.key"
    )]
    Add {
        name: String,
        #[arg(long)]
        read_only: bool,
        /// Issue a client certificate into this directory (NAME.crt, and
        /// NAME.key made 0600) instead of a one-time password.
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
    },
    /// Issue an operator a (new) client certificate for the panel, or
    /// revoke theirs. One certificate per operator: a new one revokes the
    /// previous at once, sessions opened with it included.
    ///
    /// The certificate is issued by the Levee CA for `levee:operator:<name>`
    /// (client authentication only, one year). Import NAME.crt and NAME.key
    /// into a browser (as PKCS#12: `openssl pkcs12 -export -in NAME.crt
    /// -inkey NAME.key -out NAME.p12`), or give them to a script; then log
    /// in with `POST /ui/api/login {"certificate": true}`.
    #[command(
        after_help = "Examples:\n  levee operator cert ann --out /media/usb/ann\n  levee operator cert ann --revoke\n  curl --cacert DATA_DIR/ca/ca.crt --cert ann.crt --key ann.key -c jar -H 'Content-Type: application/json' -d '{\"certificate\":true}' https://panel:8443/ui/api/login"
    )]
    Cert {
        name: String,
        /// Where to write NAME.crt and NAME.key (created if missing; the
        /// key 0600; existing files are not overwritten).
        #[arg(long, value_name = "DIR", required_unless_present = "revoke")]
        out: Option<PathBuf>,
        /// Revoke the operator's certificate instead.
        #[arg(long, conflicts_with = "out")]
        revoke: bool,
    },
    /// List operators.
    #[command(after_help = "Example:\n  levee operator list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator; their open sessions end at their next request.
    #[command(after_help = "Example:\n  levee operator remove ann")]
    Remove { name: String },
    /// Give an operator a new one-time password (a forgotten password).
    #[command(after_help = "Example:\n  levee operator reset ann")]
    Reset { name: String },
    /// The audit log: every action taken in the panel, newest first.
    #[command(
        after_help = "Examples:\n  levee operator log\n  levee operator log --target appliance:7 --json"
    )]
    Log {
        /// Only entries on this: `appliance:ID`, `customer:NAME`, `operator:NAME`.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &super::Ctx, cmd: OperatorCommand) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    match cmd {
        OperatorCommand::Add {
            name,
            read_only,
            cert_out: Some(dir),
        } => {
            validate_name("operator", &name)?;
            // No password: nothing matches an empty hash.
            store.add_operator(&name, "", read_only)?;
            store.set_operator_password(&name, "", false)?;
            super::audit(
                store.as_ref(),
                "operator-add",
                &format!("operator:{name}"),
                if read_only {
                    "read-only, certificate"
                } else {
                    "full, certificate"
                },
            );
            println!(
                "operator {name} added{}",
                if read_only { " (read-only)" } else { "" }
            );
            issue_cert(ctx, store.as_ref(), &name, &dir)
        }
        OperatorCommand::Add {
            name, read_only, ..
        } => {
            validate_name("operator", &name)?;
            let otp = password::one_time();
            let hash = password::hash(&otp).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.add_operator(&name, &hash, read_only)?;
            super::audit(
                store.as_ref(),
                "operator-add",
                &format!("operator:{name}"),
                if read_only { "read-only" } else { "full" },
            );
            println!(
                "operator {name} added{}",
                if read_only { " (read-only)" } else { "" }
            );
            println!("one-time password: {otp}");
            println!("log in to the panel (the URL `levee serve --ui` printed) and choose a new password; this one works once");
            Ok(())
        }
        OperatorCommand::List { json } => {
            let ops = store.operators()?;
            if json {
                return super::print_json(&ops);
            }
            let rows: Vec<Vec<String>> = ops
                .iter()
                .map(|o| {
                    vec![
                        o.name.clone(),
                        if o.read_only { "read-only" } else { "full" }.into(),
                        if o.password_hash.is_empty() {
                            "none (certificate only)"
                        } else if o.must_change {
                            "one-time (not used yet)"
                        } else {
                            "set"
                        }
                        .into(),
                        match &o.cert_sha256 {
                            Some(fp) => format!("sha256:{}", &fp[..fp.len().min(16)]),
                            None => "-".into(),
                        },
                        super::ago(Some(o.created_at)),
                    ]
                })
                .collect();
            super::print_table(
                &["OPERATOR", "ACCESS", "PASSWORD", "CERTIFICATE", "ADDED"],
                &rows,
            );
            Ok(())
        }
        OperatorCommand::Remove { name } => {
            if !store.remove_operator(&name)? {
                anyhow::bail!("no operator `{name}`: `levee operator list` shows them");
            }
            super::audit(
                store.as_ref(),
                "operator-remove",
                &format!("operator:{name}"),
                "",
            );
            println!("operator {name} removed");
            Ok(())
        }
        OperatorCommand::Cert {
            name,
            out: Some(dir),
            ..
        } => issue_cert(ctx, store.as_ref(), &name, &dir),
        OperatorCommand::Cert { name, .. } => {
            let op = store.operator(&name)?.with_context(|| {
                format!("no operator `{name}`: `levee operator list` shows them")
            })?;
            if op.cert_sha256.is_none() {
                println!("operator {name} has no certificate");
                return Ok(());
            }
            store.set_operator_cert(&name, None)?;
            super::audit(
                store.as_ref(),
                "operator-cert-revoke",
                &format!("operator:{name}"),
                "",
            );
            println!(
                "operator {name}: certificate revoked (its sessions end at their next request)"
            );
            Ok(())
        }
        OperatorCommand::Reset { name } => {
            store.operator(&name)?.with_context(|| {
                format!("no operator `{name}`: `levee operator list` shows them")
            })?;
            let otp = password::one_time();
            let hash = password::hash(&otp).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.set_operator_password(&name, &hash, true)?;
            super::audit(
                store.as_ref(),
                "operator-reset",
                &format!("operator:{name}"),
                "",
            );
            println!("operator {name}: new one-time password: {otp}");
            Ok(())
        }
        OperatorCommand::Log {
            target,
            limit,
            json,
        } => {
            let entries = store.audit(target.as_deref(), limit)?;
            if json {
                return super::print_json(&entries);
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        super::ago(Some(e.at)),
                        e.operator.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            super::print_table(&["WHEN", "OPERATOR", "ACTION", "TARGET", "DETAIL"], &rows);
            Ok(())
        }
    }
}

/// Issues `name` a client certificate into `dir` (NAME.crt, NAME.key 0600)
/// and makes it the only one that logs them in.
fn issue_cert(
    ctx: &super::Ctx,
    store: &dyn crate::store::Store,
    name: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    store.operator(name)?.with_context(|| {
        format!("no operator `{name}`: add them first (`levee operator add {name} --cert-out DIR`)")
    })?;
    let (crt_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    for p in [&crt_path, &key_path] {
        if p.exists() {
            anyhow::bail!(
                "{} exists: choose another --out directory (an operator certificate is never overwritten)",
                p.display()
            );
        }
    }
    let ca = crate::fleet::existing_ca(store, ctx.data_dir())?;
    let (issued, key_pem) = ca.issue_operator(name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    write_new(
        &crt_path,
        format!("{}{}", issued.pem, ca.pem()).as_bytes(),
        0o644,
    )?;
    store.set_operator_cert(name, Some(&issued.fingerprint))?;
    super::audit(
        store,
        "operator-cert",
        &format!("operator:{name}"),
        &issued.fingerprint[..16],
    );
    println!("certificate for operator {name}: {}", crt_path.display());
    println!("key (keep it private):         {}", key_path.display());
    println!("fingerprint: sha256:{}", issued.fingerprint);
    println!("valid one year; a newer `levee operator cert {name}` or `--revoke` ends it at once");
    println!("log in: POST /ui/api/login {{\"certificate\": true}} with it on the connection (browsers: import it as PKCS#12, see `levee operator cert --help`)");
    Ok(())
}

/// Creates `path` with `mode`, refusing to replace anything.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
