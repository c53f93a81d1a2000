//! The customer configuration schema: what ops writes in YAML
//! (`levee customer apply -f acme.yaml`) and what an appliance receives.
//!
//! These types mirror the file: durations, sizes and rates stay the strings
//! ops wrote (`5m`, `32GiB`, `20Mbit/s`) and [`parse_duration`],
//! [`parse_size`] and [`parse_rate`] read them, so the server's validation
//! and the agent agree by construction. Unknown keys are refused everywhere,
//! so a typo is an error instead of a silently ignored setting.
//!
//! ```
//! let c: levee_proto::config::CustomerConfig = serde_json::from_value(serde_json::json!({
//!     "customer": "acme", "sources": [{"name": "scans", "path": "/srv/scans"}]
//! })).unwrap();
//! assert_eq!(c.heartbeat_interval, "5m");
//! ```

use serde::{Deserialize, Serialize};

/// A secret (SMB password, offsite credential). The server keeps it
/// encrypted at rest and never prints it; `Debug` hides it too.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// One customer's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    /// Customer name: 1-64 letters, digits, `-`, `_`, `.`; the key that
    /// `levee appliance register --customer NAME` refers to.
    pub customer: String,
    /// Human-readable name for listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What to back up.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// When to back up. No schedule means backups run only by hand.
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    /// Which snapshots to keep.
    #[serde(default)]
    pub retention: Retention,
    /// Offsite targets: each holds a complete copy of every repository
    /// (see [`OffsiteTarget`]).
    #[serde(default)]
    pub offsite: Vec<OffsiteTarget>,
    /// Release channel the appliance follows (`stable`, `beta`, ...).
    #[serde(default = "default_channel")]
    pub update_channel: String,
    /// When the appliance may reboot into an update, `HH:MM-HH:MM` in UTC
    /// (may cross midnight, e.g. `22:00-04:00`); none means any time.
    /// Downloads happen at any time; only the switch waits for the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_window: Option<String>,
    /// Cap for offsite replication uploads and for update downloads (one
    /// token bucket each), e.g. `20Mbit/s` or `2MiB/s`; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<String>,
    /// The customer's recovery public key (`x25519:` and 64 hex digits,
    /// printed by `levee customer recovery-key init`). Each appliance adds
    /// a key slot to its repository that only the matching paper key opens
    /// (proto/src/recovery.rs); none means no recovery slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
    /// How often the appliance reports in, e.g. `5m`. An appliance is shown
    /// offline after three intervals without a report.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: String,
    /// Whether and where the appliance installs itself.
    #[serde(default)]
    pub install: InstallSettings,
}

fn default_channel() -> String {
    "stable".into()
}

fn default_heartbeat() -> String {
    "5m".into()
}

/// A backup source: an SMB share or a local path (exactly one of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Name used by schedules and in snapshot listings.
    pub name: String,
    /// `smb://user@host[:port]/share[/path]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smb: Option<String>,
    /// A local directory on the appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SMB password. In the YAML, give either this or `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the SMB password (read by `levee customer apply`,
    /// relative to the YAML file; the password is stored, not the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Glob patterns to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// When backups run: `at` a time of day (on `days`, default every day), or
/// `every` interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Name for logs.
    pub name: String,
    /// Sources this schedule backs up; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Time of day, `HH:MM` (appliance local time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Days for `at`: `mon` ... `sun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Interval, e.g. `4h` (at least `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

/// Snapshots kept after each backup (the `forget` policy). Zero keeps none
/// of that kind; at least one must be non-zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: 3,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
        }
    }
}

/// An offsite target: one complete copy of the repository. Every target
/// gets every file; there is no spreading of packs over targets.
///
/// A Levee offsite store lists its nodes in `urls` (one store, several
/// endpoints: uploads are spread over the healthy ones and fail over);
/// the older single `url:` is still read as one endpoint. An S3 target is
/// `url: s3://bucket[/prefix]` with `endpoint`, `region` and keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsiteTarget {
    pub name: String,
    /// One endpoint: `https://host[:port]` (a Levee offsite store, reached
    /// with the appliance's certificate) or `s3://bucket[/prefix]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The nodes of one Levee offsite store, `https://host[:port]` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// S3 endpoint, e.g. `https://s3.eu-central-1.example.com` (s3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region, e.g. `eu-central-1` (s3 only; default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3 access key id (s3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// S3 secret access key (s3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// PEM file with the CA that signed the S3 endpoint's certificate, on
    /// the appliance (s3 only; default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Share of what the target holds that the appliance reads back and
    /// checks against the names each week, e.g. `10%` (default; `0%`
    /// turns verification off, `100%` reads everything every week). The
    /// appliance downloads the files itself: a target is not trusted to
    /// vouch for its own contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_per_week: Option<String>,
    /// Files uploaded to this target at the same time, 1 to
    /// [`MAX_STREAMS`] (default [`DEFAULT_STREAMS`]): more streams fill a
    /// long fat link or a store with several nodes; `bandwidth_limit`
    /// caps their total either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<u32>,
    /// Gone: every target is a complete copy. Still read, so a stored
    /// configuration with it stays readable; `levee customer apply` refuses
    /// it by name.
    #[serde(default, skip_serializing)]
    pub weight: Option<u32>,
}

impl OffsiteTarget {
    /// The endpoints in order: `urls`, or the one `url`.
    pub fn endpoints(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            self.url.iter().map(String::as_str).collect()
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }

    /// Whether this is a direct S3 target (`s3://`).
    pub fn is_s3(&self) -> bool {
        self.endpoints().iter().any(|u| u.starts_with("s3://"))
    }

    /// `verify_per_week` as a fraction (default
    /// [`DEFAULT_VERIFY_PER_WEEK`]); `None` when it is not a percentage
    /// from 0% to 100%.
    pub fn verify_share_per_week(&self) -> Option<f64> {
        match &self.verify_per_week {
            None => Some(DEFAULT_VERIFY_PER_WEEK),
            Some(s) => parse_percent(s),
        }
    }
}

/// Files uploaded at the same time per target unless its `streams` says
/// otherwise (as many as rclone's default `--transfers`).
pub const DEFAULT_STREAMS: u32 = 4;
/// Most `streams` a target may ask for: each is a thread and a connection
/// on the appliance.
pub const MAX_STREAMS: u32 = 32;

/// What a target gets read back each week unless its `verify_per_week`
/// says otherwise: every file comes round in about ten weeks, at a tenth
/// of the repository's size in downloads a week.
pub const DEFAULT_VERIFY_PER_WEEK: f64 = 0.10;

/// `10%`, `0.5%`, `100%` -> 0.1, 0.005, 1.0; `None` outside 0-100%.
pub fn parse_percent(s: &str) -> Option<f64> {
    let n: f64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
    (n.is_finite() && (0.0..=100.0).contains(&n)).then_some(n / 100.0)
}

/// Install-to-disk settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSettings {
    /// Install to the local disk after enrollment (otherwise the appliance
    /// keeps booting from the network).
    #[serde(default = "yes")]
    pub to_disk: bool,
    /// Smallest disk the installer may pick, e.g. `32GiB`.
    #[serde(default = "default_min_disk")]
    pub min_disk_size: String,
}

fn yes() -> bool {
    true
}

fn default_min_disk() -> String {
    "16GiB".into()
}

impl Default for InstallSettings {
    fn default() -> Self {
        InstallSettings {
            to_disk: true,
            min_disk_size: default_min_disk(),
        }
    }
}

/// `30s`, `5m`, `4h`, `2d` -> seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `1536` -> `1.5 KiB`, for people; exact bytes below a KiB.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `512MiB`, `32GiB`, `1TB`, `4096` -> bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `20Mbit/s`, `500kbit/s`, `2MiB/s`, `1MB/s` -> bytes per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().strip_suffix("/s")?;
    for (unit, bits) in [
        ("kbit", 1000_u64),
        ("Mbit", 1_000_000),
        ("Gbit", 1_000_000_000),
    ] {
        if let Some(num) = s.strip_suffix(unit) {
            let n: u64 = num.trim().parse().ok()?;
            return n.checked_mul(bits).map(|b| b / 8);
        }
    }
    parse_size(s)
}

/// `smb://user@host[:port]/share[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub share: String,
    /// Inside the share, without leading `/`; empty for the whole share.
    pub path: String,
}

impl SmbUrl {
    pub fn parse(s: &str) -> Result<SmbUrl, String> {
        let expected = "expected smb://user@host[:port]/share[/path]";
        let rest = s
            .strip_prefix("smb://")
            .ok_or_else(|| format!("`{s}` is not an smb:// URL; {expected}"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{s}` names no share; {expected}"))?;
        let (user, hostport) = authority
            .split_once('@')
            .ok_or_else(|| format!("`{s}` names no user; {expected}"))?;
        if user.is_empty() || user.contains(':') {
            return Err(format!(
                "`{s}`: the user must be non-empty and carry no password (give `password` instead); {expected}"
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: port `{p}` is not a number 1-65535"))?,
            ),
            None => (hostport, 445),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !host_ok {
            return Err(format!(
                "`{s}`: `{host}` is not a host name or IPv4 address; {expected}"
            ));
        }
        let (share, inner) = path.split_once('/').unwrap_or((path, ""));
        if share.is_empty() {
            return Err(format!("`{s}` names no share; {expected}"));
        }
        Ok(SmbUrl {
            user: user.to_string(),
            host: host.to_string(),
            port,
            share: share.to_string(),
            path: inner.trim_matches('/').to_string(),
        })
    }
}

/// Prints the URL without any secret, as `smb://user@host:port/share/path`.
impl std::fmt::Display for SmbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "smb://{}@{}:{}/{}",
            self.user, self.host, self.port, self.share
        )?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5y"), None);
        assert_eq!(parse_size("32GiB"), Some(32 << 30));
        assert_eq!(parse_size("1TB"), Some(1_000_000_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_rate("20Mbit/s"), Some(2_500_000));
        assert_eq!(parse_rate("2MiB/s"), Some(2 << 20));
        assert_eq!(parse_rate("2MiB"), None);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
