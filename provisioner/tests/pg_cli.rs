//! The operator CLI on PostgreSQL (`--database`), against a server the test
//! starts itself: the same commands as on SQLite, nothing in --data-dir but
//! the server key.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use levee_provisioner::store::testing::PgServer;

#[test]
fn customers_and_appliances_live_in_postgres() -> Result<()> {
    let pg = PgServer::start();
    let url = pg.create_db("cli");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let levee = |args: &[&str]| -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env("LEVEE_DATABASE", &url)
            .output()
            .context("cannot run levee")?;
        let stdout = String::from_utf8(out.stdout)?;
        ensure!(
            out.status.success(),
            "levee {args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    };
    let yaml = dir.path().join("acme.yaml");
    std::fs::write(
        &yaml,
        "customer: acme\nsources:\n  - name: f\n    smb: smb://u@h/s\n    password: Pg-Secret-1\n",
    )?;
    levee(&["customer", "apply", "-f", yaml.to_str().context("UTF-8")?])?;
    levee(&[
        "appliance",
        "register",
        "--mac",
        "52:54:00:00:00:0a",
        "--customer",
        "acme",
    ])?;
    let list = levee(&["appliance", "list"])?;
    ensure!(
        list.contains("52:54:00:00:00:0a") && list.contains("acme"),
        "{list}"
    );
    let shown = levee(&["customer", "show", "acme"])?;
    ensure!(
        shown.contains("********") && !shown.contains("Pg-Secret-1"),
        "{shown}"
    );

    // The rows are in PostgreSQL, the secret sealed; no SQLite file appeared.
    let config = pg.query("cli", "SELECT config FROM customers WHERE name = 'acme'");
    ensure!(
        !config.contains("Pg-Secret-1") && config.contains("sealed:v2:"),
        "{config}"
    );
    ensure!(
        !data.join("levee.sqlite").exists(),
        "the SQLite store was opened too"
    );
    ensure!(data.join("server.key").exists());
    Ok(())
}
