//! Load benchmark of the enrollment endpoint and the mutual-TLS
//! configuration endpoint of a real `levee serve` (issue 4), beside nginx
//! serving a static file of the same size with client-certificate
//! verification, measured in the same run with the same load generator.
//!
//! ```sh
//! cargo build --release -p levee-provisioner --bins --examples
//! target/release/examples/bench-api [--store sqlite|postgres|both] [--clients 64] [--seconds 10] [--enrollments 2000]
//! ```
//!
//! A measurement, not a test: it prints figures and fails only when a step
//! cannot run (a tool missing, a request refused). Every connection is on
//! 127.0.0.1. The load generator shares the machine's cores with the
//! servers, the same way for levee and nginx.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use levee_proto::enroll::{paths, EnrollmentResponse};
use levee_provisioner::enroll::{ca::ServerCa, token};
use levee_provisioner::secrets::ServerKey;
use levee_provisioner::store::testing::PgServer;
use levee_provisioner::store::{PgStore, Registration, SqliteStore, Store};
use levee_pxe::boot::MacAddr;

#[derive(Debug, Clone)]
struct Args {
    stores: Vec<&'static str>,
    clients: usize,
    seconds: u64,
    enrollments: usize,
    enroll_concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        stores: vec!["sqlite", "postgres"],
        clients: 64,
        seconds: 10,
        enrollments: 2000,
        enroll_concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--store" => {
                a.stores = match value("--store")?.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "both" => vec!["sqlite", "postgres"],
                    other => bail!("--store sqlite|postgres|both, not `{other}`"),
                }
            }
            "--clients" => a.clients = value("--clients")?.parse()?,
            "--seconds" => a.seconds = value("--seconds")?.parse()?,
            "--enrollments" => a.enrollments = value("--enrollments")?.parse()?,
            "--enroll-concurrency" => {
                a.enroll_concurrency = value("--enroll-concurrency")?.parse()?
            }
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("bench-api.rs")
                        .lines()
                        .take(10)
                        .map(|l| l.trim_start_matches("//!").trim_start())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    if a.clients == 0 || a.enrollments < a.clients {
        bail!("--enrollments must be at least --clients (the config clients use enrolled certificates)");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let levee = sibling_binary("levee")?;
    require("nginx", "nginx-light")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores; load average at start: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "levee: {}; {} config clients on kept-alive HTTP/1.1 mTLS connections for {} s; {} enrollments, {} at a time",
        levee.display(),
        args.clients,
        args.seconds,
        args.enrollments,
        args.enroll_concurrency
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for store in &args.stores {
        rows.push(rt.block_on(run_store(store, &levee, &args))?);
    }
    println!();
    println!("store     enroll/s   config pulls/s   nginx pulls/s   levee/nginx   body bytes");
    for r in &rows {
        println!(
            "{:<9} {:>8.0}   {:>14.0}   {:>13.0}   {:>11.2}   {:>10}",
            r.store,
            r.enrollments_per_sec,
            r.pulls_per_sec,
            r.nginx_per_sec,
            r.pulls_per_sec / r.nginx_per_sec,
            r.body_bytes
        );
    }
    // Issue 16's targets for both stores (docs/BENCHMARKS.md).
    println!("targets: >= 20000 config pulls/s and >= 0.5 of nginx; >= 1000 enrollments/s");
    Ok(())
}

struct Row {
    store: &'static str,
    enrollments_per_sec: f64,
    pulls_per_sec: f64,
    nginx_per_sec: f64,
    body_bytes: usize,
}

async fn run_store(kind: &'static str, levee: &Path, args: &Args) -> anyhow::Result<Row> {
    println!("\n== {kind}");
    let dir = tempfile::Builder::new()
        .prefix("levee-bench-api")
        .tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    // The set-up is synchronous (the PostgreSQL client runs its own
    // runtime), so it runs outside this one.
    let (pg, db_url, ca, jobs) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        // PostgreSQL as deployed: durable (fsync on), unlike the unit tests'.
        let pg = (kind == "postgres").then(PgServer::start_durable);
        let db_url = pg.as_ref().map(|p| p.create_db("levee_bench"));
        let store: Arc<dyn Store> = match &db_url {
            Some(url) => Arc::new(PgStore::connect(url)?),
            None => Arc::new(SqliteStore::open(&data)?),
        };
        // The CA and server key exist before the server starts, so this process
        // and `levee serve` use the same ones.
        let ca = ServerCa::open_or_create(&data.join("ca"))?;
        let key = ServerKey::load_or_create(&data)?;
        let config = serde_json::from_value(serde_json::json!({
            "customer": "bench",
            "display_name": "Benchmark Customer Ltd",
            "heartbeat_interval": "5m",
            "sources": [
                {"name": "finance", "smb": "smb://backup@files.bench.lan/finance/2026", "password": "finance-secret"},
                {"name": "scans", "smb": "smb://scanner@10.20.0.15:445/scans", "password": "scans-secret", "exclude": ["*.tmp"]},
                {"name": "logs", "path": "/srv/logs"}
            ],
            "schedules": [{"name": "nightly", "at": "02:30"}],
            "retention": {"keep_last": 3, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 24},
            "update_channel": "stable",
            "bandwidth_limit": "20Mbit/s",
        }))?;
        store.put_customer(&key.seal_config(&config))?;

        let t = Instant::now();
        let now = now_unix();
        let mut jobs = Vec::with_capacity(args.enrollments);
        for i in 0..args.enrollments {
            let mac: MacAddr = format!(
                "52:54:01:{:02x}:{:02x}:{:02x}",
                i >> 16 & 0xff,
                i >> 8 & 0xff,
                i & 0xff
            )
            .parse()?;
            store.register_appliance(
                mac,
                &Registration {
                    customer: Some("bench"),
                    ..Default::default()
                },
            )?;
            let token = token::mint(store.as_ref(), mac, now, None)?;
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .pem()?;
            jobs.push(EnrollJob {
                mac: mac.to_string(),
                token,
                csr,
                key_pem: key.serialize_pem(),
            });
        }
        println!(
            "set-up: {} appliances registered, tokens minted, keys made in {:.1} s",
            jobs.len(),
            t.elapsed().as_secs_f64()
        );
        Ok((pg, db_url, ca, jobs))
    })?;

    let http_port = free_port()?;
    let https_port = free_port()?;
    let mut cmd = Command::new(levee);
    cmd.arg("--data-dir").arg(&data);
    if let Some(url) = &db_url {
        cmd.arg("--database").arg(url);
    }
    // All clients come from 127.0.0.1: lift the per-address cap (16 by
    // default, against one LAN host taking the listener), as nginx has none.
    cmd.args(["serve", "--no-tftp", "--no-ra"])
        .args(["--max-conns", "4096", "--max-conns-per-ip", "4096"])
        .arg("--http")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--https")
        .arg(format!("127.0.0.1:{https_port}"))
        .arg("--public-url")
        .arg(format!("http://127.0.0.1:{http_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("levee.log"))?)
        .process_group(0);
    let server = Guard(cmd.spawn().context("starting levee serve")?);
    wait_port(http_port).await?;
    wait_port(https_port).await?;

    // Enrollments: plain HTTP, kept-alive, `enroll_concurrency` at a time.
    let plain = reqwest::Client::builder().no_proxy().build()?;
    let enroll_url = format!("http://127.0.0.1:{http_port}{}", paths::ENROLL);
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.enroll_concurrency {
        let (jobs, next, plain, url) = (
            jobs.clone(),
            next.clone(),
            plain.clone(),
            enroll_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut issued = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(job) = jobs.get(i) else {
                    return Ok::<_, anyhow::Error>(issued);
                };
                let resp = plain
                    .post(&url)
                    .json(&serde_json::json!({
                        "token": job.token, "mac": job.mac, "csr_pem": job.csr,
                        "facts": {"macs": [job.mac], "dmi_serial": "BENCH", "disks": []},
                    }))
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.text().await?;
                if !status.is_success() {
                    bail!("enrollment of {} refused: HTTP {status}: {body}", job.mac);
                }
                let r: EnrollmentResponse = serde_json::from_str(&body)?;
                issued.push((i, r));
            }
        }));
    }
    let mut certs = Vec::new();
    for task in tasks {
        certs.extend(task.await??);
    }
    let enroll_secs = t.elapsed().as_secs_f64();
    let enrollments_per_sec = jobs.len() as f64 / enroll_secs;
    println!(
        "enrollments: {} in {:.2} s = {:.0}/s",
        jobs.len(),
        enroll_secs,
        enrollments_per_sec
    );
    certs.sort_by_key(|(i, _)| *i);
    let https_url = certs
        .first()
        .map(|(_, r)| r.https_url.clone())
        .context("no enrollment")?;
    let identities: Vec<(String, String)> = certs
        .iter()
        .take(args.clients)
        .map(|(i, r)| (r.certificate_pem.clone(), jobs[*i].key_pem.clone()))
        .collect();

    // The body levee serves, for nginx to serve the same bytes.
    let probe = mtls_client(&identities[0], ca.pem())?;
    let body = probe
        .get(format!("{https_url}{}", paths::CONFIG))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let levee_rate = pull_load(
        &identities,
        ca.pem(),
        &format!("{https_url}{}", paths::CONFIG),
        args.seconds,
    )
    .await?;
    println!(
        "levee config pulls: {levee_rate:.0}/s ({} bytes each)",
        body.len()
    );
    drop(server);

    let nginx_rate = {
        let root = dir.path().join("nginx");
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::write(root.join("www/config.json"), &body)?;
        let (cert, key) = ca.server_cert("127.0.0.1")?;
        std::fs::write(root.join("server.pem"), format!("{cert}{}", ca.pem()))?;
        std::fs::write(root.join("server.key"), key)?;
        std::fs::write(root.join("ca.pem"), ca.pem())?;
        let port = free_port()?;
        let conf = format!(
            "worker_processes auto;\npid {r}/nginx.pid;\nerror_log {r}/error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  default_type application/json;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {r}/server.pem;\n    ssl_certificate_key {r}/server.key;\n\
             ssl_client_certificate {r}/ca.pem;\n    ssl_verify_client on;\n    root {r}/www;\n  }}\n}}\n",
            r = root.display()
        );
        std::fs::write(root.join("nginx.conf"), conf)?;
        // Its own process group: killing only the master would leave its
        // workers running (and listening) after the benchmark.
        let nginx = Guard(
            Command::new("nginx")
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting nginx")?,
        );
        wait_port(port).await?;
        let rate = pull_load(
            &identities,
            ca.pem(),
            &format!("https://127.0.0.1:{port}/config.json"),
            args.seconds,
        )
        .await?;
        drop(nginx);
        rate
    };
    println!("nginx static file with client-certificate verification: {nginx_rate:.0}/s");
    drop(pg);
    Ok(Row {
        store: kind,
        enrollments_per_sec,
        pulls_per_sec: levee_rate,
        nginx_per_sec: nginx_rate,
        body_bytes: body.len(),
    })
}

struct EnrollJob {
    mac: String,
    token: String,
    csr: String,
    key_pem: String,
}

fn mtls_client((cert, key): &(String, String), ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .identity(reqwest::Identity::from_pem(
            format!("{cert}{key}").as_bytes(),
        )?)
        .pool_max_idle_per_host(1)
        .build()?)
}

/// `clients` tasks, each on its own kept-alive connection with its own
/// certificate, GET `url` in a loop for `seconds`; returns full (200)
/// responses per second over the measured window (after a 1 s warm-up that
/// opens every connection).
async fn pull_load(
    identities: &[(String, String)],
    ca_pem: &str,
    url: &str,
    seconds: u64,
) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in identities {
        let client = mtls_client(id, ca_pem)?;
        let (count, measuring, stop, url) = (
            count.clone(),
            measuring.clone(),
            stop.clone(),
            url.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let resp = client.get(&url).send().await?;
                if resp.status() != reqwest::StatusCode::OK {
                    bail!("GET {url}: HTTP {}", resp.status());
                }
                resp.bytes().await?;
                if measuring.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::SeqCst);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = count.load(Ordering::SeqCst);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / secs)
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    /// SIGTERM to the child's process group (nginx's master then stops its
    /// workers), then SIGKILL to whatever of the group is left after 5 s.
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        // SAFETY: signalling a process group this benchmark started.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group is gone or ours.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    // target/<profile>/examples/bench-api -> target/<profile>/<name>
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .context("cannot locate the target directory")?;
    if !bin.is_file() {
        bail!(
            "{} is not built: run `cargo build --release -p levee-provisioner --bins --examples`",
            bin.display()
        );
    }
    Ok(bin)
}

fn require(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    if !found {
        bail!("{tool} is missing: apt-get install -y --no-install-recommends {package}");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let t = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("nothing listens on 127.0.0.1:{port} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
