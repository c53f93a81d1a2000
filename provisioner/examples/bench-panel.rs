//! Load benchmark of the web panel's fleet API (issue 15): a real `levee
//! serve` with `--ui` (in process, 127.0.0.1, TLS) over a store holding
//! 10,000 appliances and 1,000,000 run reports, answering
//! `GET /ui/api/fleet` (a page of 50, sorts, filters and pages varied)
//! while heartbeats keep changing the fleet, so the rows are recomputed
//! for nearly every request; and the size of the panel's first load.
//!
//! ```sh
//! cargo build --release -p levee-provisioner --examples
//! target/release/examples/bench-panel [--store sqlite|postgres|both] [--appliances 10000] [--runs 1000000] [--requests 300] [--heartbeats 50]
//! ```
//!
//! A measurement, not a test: it prints figures (the target is a p95
//! under 100 ms) and fails only when a step cannot run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use levee_provisioner::serve::{self, Listeners, ServeConfig};
use levee_provisioner::store::testing::PgServer;
use levee_provisioner::store::{Heartbeat, PgStore, Registration, SqliteStore, Store};
use levee_provisioner::ui::{self, password, UiOptions, UiTls};
use tokio_util::sync::CancellationToken;

struct Args {
    stores: Vec<&'static str>,
    appliances: usize,
    runs: usize,
    requests: usize,
    heartbeats: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        stores: vec!["sqlite", "postgres"],
        appliances: 10_000,
        runs: 1_000_000,
        requests: 300,
        heartbeats: 50,
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
            "--appliances" => a.appliances = value("--appliances")?.parse()?,
            "--runs" => a.runs = value("--runs")?.parse()?,
            "--requests" => a.requests = value("--requests")?.parse()?,
            "--heartbeats" => a.heartbeats = value("--heartbeats")?.parse()?,
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(a)
}

/// The run reports, inserted in one statement (through the store they
/// would take minutes); `series` is the dialect's row generator.
fn runs_sql(series: &str, first_id: i64, appliances: usize, runs: usize) -> String {
    let now = levee_provisioner::store::now() as i64;
    format!(
        "{series}
         INSERT INTO runs (appliance_id, received_at, report_id, kind, job, sources, started_at,
           ended_at, result, files_new, files_total, bytes_new, bytes_total, snapshot, errors,
           error_count, repo_bytes)
         SELECT {first_id} + (n % {appliances}), {now} - ({runs} - n), 'r' || n,
           CASE WHEN n % 10 = 0 THEN 'prune' ELSE 'backup' END, 'daily', '[\"docs\"]',
           {now} - ({runs} - n) * 8, {now} - ({runs} - n) * 8 + 60,
           CASE WHEN n % 17 = 0 THEN 'failed' ELSE 'success' END, 3, 1000, 4096, 1048576,
           'snap' || n, '[]', 0, n
         FROM g"
    )
}

fn fill(store: &dyn Store, data: &std::path::Path, a: &Args) -> anyhow::Result<i64> {
    let key = levee_provisioner::secrets::ServerKey::load_or_create(data)?;
    let config = serde_json::from_value(serde_json::json!({
        "customer": "acme",
        "sources": [{"name": "docs", "path": "/srv/docs"}],
        "schedules": [{"name": "daily", "every": "1d"}],
    }))?;
    store.put_customer(&key.seal_config(&config))?;
    let mut first = None;
    for i in 0..a.appliances {
        let mac = format!(
            "52:54:{:02x}:{:02x}:{:02x}:01",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let ap = store.register_appliance(
            mac.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            &Registration {
                customer: Some("acme"),
                ..Default::default()
            },
        )?;
        store.record_certificate(
            ap.id,
            &format!("{:064x}", ap.id),
            levee_provisioner::store::now() + 86_400 * 300,
            true,
        )?;
        first.get_or_insert(ap.id);
    }
    first.context("no appliances")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(
    name: &str,
    store: Arc<dyn Store>,
    data: std::path::PathBuf,
    a: &Args,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let stop = CancellationToken::new();
    let url = rt.block_on(async {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let panel = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}", panel.local_addr()?.port());
        let config = ServeConfig {
            data_dir: data.clone(),
            ipxe_dir: data.join("ipxe"),
            public_url: format!("http://{}", http.local_addr()?),
            tftp_host: "127.0.0.1".into(),
            dhcp: None,
            grace: Duration::from_secs(1),
            alerts: Default::default(),
            limits: Default::default(),
            allow_pending: true,
            offsite: Default::default(),
            fleet_url: None,
        };
        let options = UiOptions {
            tls: UiTls::Ca {
                hosts: vec!["127.0.0.1".into()],
            },
        };
        let services = vec![("ui", ui::service(panel, options))];
        let listeners = Listeners {
            http,
            https: None,
            tftp: None,
            store: None,
        };
        tokio::spawn(serve::run_with(
            store.clone(),
            listeners,
            config,
            stop.clone(),
            services,
        ));
        anyhow::Ok(url)
    })?;
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&url).send().is_err() {
        if Instant::now() > deadline {
            bail!("the panel did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first_load = 0;
    for path in ["/", "/app.js", "/app.css"] {
        first_load += client.get(format!("{url}{path}")).send()?.bytes()?.len();
    }
    let hash = password::hash("benchmark password").map_err(|e| anyhow::anyhow!(e))?;
    store.add_operator("bench", &hash, true)?;
    store.set_operator_password("bench", &hash, false)?;
    let login = client
        .post(format!("{url}/ui/api/login"))
        .json(&serde_json::json!({"name": "bench", "password": "benchmark password"}))
        .send()?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .context("no session cookie")?
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let get = |q: &str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let r = client
            .get(format!("{url}/ui/api/fleet?{q}"))
            .header("cookie", &cookie)
            .send()?;
        if !r.status().is_success() {
            bail!("fleet: {}", r.status());
        }
        let body: serde_json::Value = r.json()?;
        if body["total"].as_u64().unwrap_or(0) == 0 && (q.is_empty() || q == "page=1") {
            bail!("fleet: empty answer {body}");
        }
        Ok(t.elapsed())
    };
    let cold = get("")?;
    // Heartbeats keep changing the fleet while the API is asked.
    let running = Arc::new(AtomicBool::new(true));
    let beats = {
        let (store, running, n, per_sec) = (
            store.clone(),
            running.clone(),
            a.appliances as i64,
            a.heartbeats,
        );
        std::thread::spawn(move || {
            let mut i = 0i64;
            while running.load(Ordering::Relaxed) {
                let _ = store.record_heartbeat(
                    1 + (i * 7919) % n,
                    &Heartbeat {
                        image_version: Some("2026.12.1"),
                        slot: Some("a"),
                    },
                );
                i += 1;
                std::thread::sleep(Duration::from_micros(1_000_000 / per_sec.max(1)));
            }
        })
    };
    let queries = [
        "page=1",
        "sort=last_heartbeat&desc=true",
        "sort=customer&page=37",
        "overdue=true&sort=last_backup_at",
        "q=52:54:00:1f&sort=mac",
        "state=enrolled&online=false&per_page=100&page=3",
        "sort=last_result&desc=true&page=150",
    ];
    let mut times = Vec::with_capacity(a.requests);
    for i in 0..a.requests {
        times.push(get(queries[i % queries.len()])?);
    }
    running.store(false, Ordering::Relaxed);
    let _ = beats.join();
    times.sort();
    println!(
        "{name}: {} appliances, {} runs: cold first page {:.0} ms; {} requests under {} heartbeats/s: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; first load {} bytes",
        a.appliances,
        a.runs,
        cold.as_secs_f64() * 1e3,
        times.len(),
        a.heartbeats,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        first_load
    );
    stop.cancel();
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    for name in a.stores.clone() {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let t = Instant::now();
        let (store, _pg): (Arc<dyn Store>, Option<PgServer>) = match name {
            "sqlite" => (Arc::new(SqliteStore::open(&data)?), None),
            _ => {
                let pg = PgServer::start();
                (
                    Arc::new(PgStore::connect(&pg.create_db("bench"))?),
                    Some(pg),
                )
            }
        };
        let first = fill(store.as_ref(), &data, &a)?;
        match &_pg {
            None => {
                let conn = rusqlite::Connection::open(data.join("levee.sqlite"))?;
                let series = format!(
                    "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {})",
                    a.runs
                );
                conn.execute_batch(&runs_sql(&series, first, a.appliances, a.runs))?;
            }
            Some(pg) => {
                let url = pg.url("bench");
                let rt = tokio::runtime::Runtime::new()?;
                rt.block_on(async {
                    let (client, conn) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    let series = format!("WITH g(n) AS (SELECT generate_series(1, {}))", a.runs);
                    client
                        .batch_execute(&runs_sql(&series, first, a.appliances, a.runs))
                        .await?;
                    client.batch_execute("ANALYZE runs").await?;
                    anyhow::Ok(())
                })?;
            }
        }
        eprintln!("{name}: store filled in {:.1} s", t.elapsed().as_secs_f64());
        measure(name, store, data, &a)?;
    }
    Ok(())
}
