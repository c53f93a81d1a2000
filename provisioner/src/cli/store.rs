//! `levee store ...`: the offsite store alone on its machine (`serve`,
//! with a certificate from `cert`), and operating its files directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Run the offsite store alone, on a machine of its own: appliances
    /// replicate to it over mutual TLS with their certificates. It shares
    /// the fleet's database (--database, or the SQLite --data-dir) to know
    /// the appliances: a retired or replaced appliance is refused at its
    /// next request. Its certificate comes from `levee store cert`; the
    /// machine never holds the Levee CA's key.
    #[command(
        after_help = "Example (on the store machine, which reaches the fleet's PostgreSQL):\n  levee --database postgres://levee@db.example/levee store serve \\\n      --listen 0.0.0.0:8443 --cert /etc/levee/store.crt --key /etc/levee/store.key \\\n      --dir /srv/levee-offsite\n  # customers' YAML then names it: offsite: [{name: hq, urls: [https://offsite1.example:8443]}]"
    )]
    Serve(Box<ServeArgs>),
    /// Make the certificate of a store that runs alone (`levee store
    /// serve`), signed by the Levee CA the appliances already trust. Run it
    /// on a machine of the fleet (it reads the CA from --database or
    /// --data-dir), then copy both files to the store machine. The key file
    /// is created with mode 0600; neither file is ever overwritten. Valid
    /// for a year: make a new one before then and restart the store.
    #[command(
        after_help = "Examples:\n  levee store cert offsite1.example --cert store.crt --key store.key\n  levee store cert offsite1.example 10.20.0.5   # a name and an address\n  scp store.crt store.key offsite1.example:/etc/levee/ && rm store.key"
    )]
    Cert {
        /// Host names or IP addresses the appliances reach the store by
        /// (the host of each URL in the customers' `offsite: urls:`); the
        /// agent refuses a store whose certificate does not name its URL's
        /// host.
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// Where to write the certificate chain (the store's, then the CA's).
        #[arg(long, value_name = "FILE", default_value = "store.crt")]
        cert: PathBuf,
        /// Where to write the private key (mode 0600).
        #[arg(long, value_name = "FILE", default_value = "store.key")]
        key: PathBuf,
    },
    /// Carry out appliances' deletion requests older than the grace period,
    /// and drop uploads abandoned that long. `levee serve --store` does
    /// this hourly by itself; `--grace 0s` acts on every request now.
    #[command(
        after_help = "Examples:\n  levee store prune --dry-run\n  levee store prune --grace 0s   # carry out every request now\n  levee store prune --dir /srv/offsite --json\n  LEVEE_STORE_S3_ACCESS_KEY_ID=... LEVEE_STORE_S3_SECRET_ACCESS_KEY=... \\\n      levee store prune --store-backend s3://offsite/levee --store-s3-endpoint https://s3.example"
    )]
    Prune {
        /// The store's directory (default DATA_DIR/offsite).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        backend: BackendArgs,
        /// Requests younger than this wait, e.g. 14d, 36h, 0s.
        #[arg(long, default_value = "14d", value_parser = parse_grace)]
        grace: Duration,
        /// Say what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Where the store keeps its files when not in a directory: an S3 bucket.
/// The keys come from these options (or their environment variables)
/// only: no AWS profile, `AWS_*` variable or instance-metadata address is
/// ever read.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Keep the store's files in S3 instead of a directory: s3://BUCKET[/PREFIX].
    /// Store nodes on one bucket and prefix are endpoints of one target.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    store_backend: Option<String>,
    /// The S3 endpoint (MinIO, Ceph, ...: path-style); default AWS,
    /// https://s3.REGION.amazonaws.com.
    #[arg(long, value_name = "URL", requires = "store_backend")]
    store_s3_endpoint: Option<String>,
    /// The bucket's region (default us-east-1).
    #[arg(long, value_name = "REGION", requires = "store_backend")]
    store_s3_region: Option<String>,
    /// The access key id.
    #[arg(
        long,
        value_name = "ID",
        env = "LEVEE_STORE_S3_ACCESS_KEY_ID",
        requires = "store_backend"
    )]
    store_s3_access_key_id: Option<String>,
    /// The secret key (prefer the environment variable: a command line is
    /// visible to every user of the machine).
    #[arg(
        long,
        value_name = "SECRET",
        env = "LEVEE_STORE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "store_backend"
    )]
    store_s3_secret_access_key: Option<String>,
    /// The only CA trusted for the endpoint (PEM).
    #[arg(long, value_name = "FILE", requires = "store_backend")]
    store_s3_ca_file: Option<String>,
}

impl BackendArgs {
    /// The S3 settings, if the store is in S3; refused beside a directory.
    pub fn s3(
        &self,
        dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<crate::offsite::S3Options>> {
        let Some(url) = &self.store_backend else {
            return Ok(None);
        };
        if let Some(d) = dir {
            anyhow::bail!(
                "--store-backend {url} and the directory {} both given: the store keeps its files in one place",
                d.display()
            );
        }
        levee_proto::s3::S3Url::parse(url).map_err(|e| anyhow::anyhow!("--store-backend: {e}"))?;
        if self.store_s3_access_key_id.is_none() || self.store_s3_secret_access_key.is_none() {
            anyhow::bail!(
                "--store-backend {url}: give the keys with --store-s3-access-key-id and --store-s3-secret-access-key \
                 (or LEVEE_STORE_S3_ACCESS_KEY_ID and LEVEE_STORE_S3_SECRET_ACCESS_KEY)"
            );
        }
        Ok(Some(crate::offsite::S3Options {
            url: url.clone(),
            endpoint: self.store_s3_endpoint.clone(),
            region: self.store_s3_region.clone(),
            access_key_id: self.store_s3_access_key_id.clone(),
            secret_access_key: self.store_s3_secret_access_key.clone(),
            ca_file: self.store_s3_ca_file.clone(),
        }))
    }
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    levee_proto::config::parse_duration(s)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a duration; expected e.g. 14d, 36h or 0s"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (mutual TLS), e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The certificate chain from `levee store cert` (default
    /// DATA_DIR/store.crt).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Its private key, readable by its owner only (default
    /// DATA_DIR/store.key).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Where the files live (default DATA_DIR/offsite). Several store
    /// nodes may share one directory (a shared file system): then they are
    /// endpoints of one target.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// How long an appliance's request to delete offsite files waits
    /// before the store carries it out, e.g. 14d or 36h.
    #[arg(long, default_value = "14d", value_parser = super::serve::parse_interval)]
    deletion_grace: Duration,
    /// On SIGTERM or SIGINT, requests in flight get this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    grace_period: u64,
}

fn serve(ctx: &super::Ctx, args: ServeArgs) -> anyhow::Result<()> {
    let store = ctx.open_store()?;
    let data_dir = ctx.data_dir();
    let cert = args.cert.unwrap_or_else(|| data_dir.join("store.crt"));
    let key = args.key.unwrap_or_else(|| data_dir.join("store.key"));
    let fleet_ca = crate::offsite::fleet_ca_pem(store.as_ref(), data_dir)?.with_context(|| {
        format!(
            "no Levee CA in the database or in {}: point --database (or --data-dir) at the fleet's",
            data_dir.join("ca").display()
        )
    })?;
    let loaded = crate::offsite::tls::load(&cert, &key, &fleet_ca)?;
    let tls = crate::offsite::tls::server_config(&loaded)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    let s3 = args.backend.s3(args.dir.as_deref())?;
    let dir = args.dir.unwrap_or_else(|| data_dir.join("offsite"));
    let files = crate::offsite::files(dir, s3.as_ref())?;
    let state = crate::offsite::state(store.clone(), files);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        super::serve::watch_signals(shutdown.clone(), Duration::from_secs(args.grace_period))?;
        println!(
            "offsite store: https://{}  (certificate {})",
            listener.local_addr()?,
            cert.display()
        );
        crate::offsite::serve(
            listener,
            tls,
            state,
            args.deletion_grace,
            Default::default(),
            shutdown,
        )
        .await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    store.close();
    served
}

/// The fleet's CA with its key (see [`crate::fleet::existing_ca`]).
fn fleet_ca(ctx: &super::Ctx) -> anyhow::Result<crate::enroll::ca::ServerCa> {
    let store = ctx.open_store()?;
    crate::fleet::existing_ca(store.as_ref(), ctx.data_dir())
}

pub fn run(ctx: &super::Ctx, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Serve(args) => serve(ctx, *args),
        StoreCommand::Cert { hosts, cert, key } => {
            let ca = fleet_ca(ctx)?;
            crate::offsite::tls::issue(&ca, &hosts, &cert, &key)?;
            println!(
                "wrote {} (for {}, valid 365 days, signed by the Levee CA {}) and {} (mode 0600)\n\
                 copy both to the store machine and run `levee store serve --cert FILE --key FILE`; then delete this copy of the key",
                cert.display(),
                hosts.join(", "),
                &ca.fingerprint()[..16],
                key.display()
            );
            Ok(())
        }
        StoreCommand::Prune {
            dir,
            backend,
            grace,
            dry_run,
            json,
        } => {
            let s3 = backend.s3(dir.as_deref())?;
            let dir = dir.unwrap_or_else(|| ctx.data_dir().join("offsite"));
            let files = crate::offsite::files(dir, s3.as_ref())?;
            let r = crate::offsite::prune(&files, crate::store::now(), grace.as_secs(), dry_run)
                .map_err(|e| anyhow::anyhow!("{}: {e}", files.describe()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} {} file(s), {} bytes, from {} deletion request(s); {} request(s) still in their grace period; {} abandoned upload(s) dropped",
                    r.files_deleted, r.bytes_freed, r.requests_done, r.requests_waiting, r.partials_dropped
                );
            }
            Ok(())
        }
    }
}
