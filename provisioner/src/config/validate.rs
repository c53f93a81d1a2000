//! The second phase: raw schema -> checked, typed customer configuration.

use levee_proto::config::SmbUrl;
use std::collections::HashSet;
use std::path::Path;

use levee_proto::config::{
    parse_duration, parse_rate, parse_size, CustomerConfig, OffsiteTarget, Secret,
};

use super::{Problem, Seg};

/// A validated customer configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    /// The configuration as the agent receives it: `password_file`s are
    /// read into `password`.
    pub config: CustomerConfig,
    /// `config.sources`, typed, in the same order.
    pub sources: Vec<SourceKind>,
    /// `config.schedules`, typed, in the same order.
    pub schedules: Vec<Schedule>,
    pub heartbeat_secs: u64,
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub min_disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    Smb(SmbUrl),
    Local(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    fn parse(s: &str) -> Option<Weekday> {
        Some(match s.to_ascii_lowercase().as_str() {
            "mon" => Weekday::Mon,
            "tue" => Weekday::Tue,
            "wed" => Weekday::Wed,
            "thu" => Weekday::Thu,
            "fri" => Weekday::Fri,
            "sat" => Weekday::Sat,
            "sun" => Weekday::Sun,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Daily at `hour:minute` on `days` (all days when empty).
    At {
        hour: u8,
        minute: u8,
        days: Vec<Weekday>,
    },
    Every {
        secs: u64,
    },
}

/// Shortest `every` interval: backups more often than this only churn.
const MIN_EVERY_SECS: u64 = 300;

fn problem(path: Vec<Seg>, message: impl Into<String>) -> Problem {
    Problem {
        path,
        message: message.into(),
    }
}

fn check_name(path: Vec<Seg>, name: &str) -> Result<(), Problem> {
    crate::store::validate_name("", name).map_err(|_| {
        problem(path, format!("`{name}` is not a valid name; expected 1-64 letters, digits, `-`, `_` or `.` (not leading)"))
    })
}

pub fn validate(mut c: CustomerConfig, base_dir: &Path) -> Result<Customer, Problem> {
    use Seg::{Index, Key};
    check_name(vec![Key("customer")], &c.customer)?;

    let mut sources = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in c.sources.iter_mut().enumerate() {
        let at = |k: &'static str| vec![Key("sources"), Index(i), Key(k)];
        check_name(at("name"), &s.name)?;
        if !names.insert(s.name.clone()) {
            return Err(problem(
                at("name"),
                format!("duplicate source name `{}`", s.name),
            ));
        }
        let kind = match (&s.smb, &s.path) {
            (Some(url), None) => {
                SourceKind::Smb(SmbUrl::parse(url).map_err(|e| problem(at("smb"), e))?)
            }
            (None, Some(p)) => {
                if !p.starts_with('/') {
                    return Err(problem(
                        at("path"),
                        format!("`{p}` is not an absolute path; expected /dir/on/the/appliance"),
                    ));
                }
                SourceKind::Local(p.clone())
            }
            (Some(_), Some(_)) => {
                return Err(problem(
                    at("path"),
                    "a source is either `smb` or `path`, not both",
                ));
            }
            (None, None) => {
                return Err(problem(
                    vec![Key("sources"), Index(i)],
                    "needs `smb: smb://user@host/share` or `path: /dir`",
                ));
            }
        };
        match (&kind, &s.password, &s.password_file) {
            (SourceKind::Smb(_), Some(_), Some(_)) => {
                return Err(problem(
                    at("password_file"),
                    "give `password` or `password_file`, not both",
                ));
            }
            (SourceKind::Smb(_), None, Some(file)) => {
                let full = base_dir.join(file);
                let pw = std::fs::read_to_string(&full).map_err(|e| {
                    problem(
                        at("password_file"),
                        format!("cannot read {}: {e}", full.display()),
                    )
                })?;
                let pw = pw.trim_end_matches(['\n', '\r']).to_string();
                if pw.is_empty() {
                    return Err(problem(
                        at("password_file"),
                        format!("{} is empty", full.display()),
                    ));
                }
                s.password = Some(Secret(pw));
                s.password_file = None;
            }
            (SourceKind::Smb(_), Some(pw), None) if pw.0.is_empty() => {
                return Err(problem(
                    at("password"),
                    "empty; an SMB source needs a password",
                ));
            }
            (SourceKind::Smb(_), Some(_), None) => {}
            (SourceKind::Smb(_), None, None) => {
                return Err(problem(
                    at("password"),
                    "missing; an SMB source needs a password (or password_file)",
                ));
            }
            (SourceKind::Local(_), None, None) => {}
            (SourceKind::Local(_), _, _) => {
                let k = if s.password.is_some() {
                    "password"
                } else {
                    "password_file"
                };
                return Err(problem(at(k), "only SMB sources take a password"));
            }
        }
        sources.push(kind);
    }

    let mut schedules = Vec::new();
    let mut schedule_names = HashSet::new();
    for (i, s) in c.schedules.iter().enumerate() {
        let at = |k: &'static str| vec![Key("schedules"), Index(i), Key(k)];
        check_name(at("name"), &s.name)?;
        if !schedule_names.insert(s.name.clone()) {
            return Err(problem(
                at("name"),
                format!("duplicate schedule name `{}`", s.name),
            ));
        }
        for (j, src) in s.sources.iter().enumerate() {
            if !names.contains(src) {
                return Err(problem(
                    vec![Key("schedules"), Index(i), Key("sources"), Index(j)],
                    format!("no source named `{src}`; expected one of the names under `sources`"),
                ));
            }
        }
        let kind = match (&s.at, &s.every) {
            (Some(t), None) => {
                let (hour, minute) = parse_time(t).ok_or_else(|| {
                    problem(
                        at("at"),
                        format!("`{t}` is not a time of day; expected HH:MM, e.g. 02:30"),
                    )
                })?;
                let mut days = Vec::new();
                for (j, d) in s.days.iter().enumerate() {
                    days.push(Weekday::parse(d).ok_or_else(|| {
                        problem(
                            vec![Key("schedules"), Index(i), Key("days"), Index(j)],
                            format!(
                                "`{d}` is not a day; expected mon, tue, wed, thu, fri, sat or sun"
                            ),
                        )
                    })?);
                }
                Schedule::At { hour, minute, days }
            }
            (None, Some(e)) => {
                if !s.days.is_empty() {
                    return Err(problem(at("days"), "`days` goes with `at`, not `every`"));
                }
                let secs = parse_duration(e).ok_or_else(|| {
                    problem(
                        at("every"),
                        format!("`{e}` is not a duration; expected e.g. 30m, 4h, 1d"),
                    )
                })?;
                if secs < MIN_EVERY_SECS {
                    return Err(problem(
                        at("every"),
                        format!("`{e}` is too often; expected at least 5m"),
                    ));
                }
                Schedule::Every { secs }
            }
            (Some(_), Some(_)) => {
                return Err(problem(
                    at("every"),
                    "a schedule has `at` or `every`, not both",
                ));
            }
            (None, None) => {
                return Err(problem(
                    vec![Key("schedules"), Index(i)],
                    "needs `at: HH:MM` or `every: DURATION`",
                ));
            }
        };
        schedules.push(kind);
    }

    let r = &c.retention;
    if r.keep_last == 0 && r.keep_daily == 0 && r.keep_weekly == 0 && r.keep_monthly == 0 {
        return Err(problem(
            vec![Key("retention")],
            "keeps nothing; expected at least one of keep_last, keep_daily, keep_weekly, keep_monthly above 0",
        ));
    }

    let mut offsite_names = HashSet::new();
    for (i, o) in c.offsite.iter().enumerate() {
        check_offsite(i, o)?;
        if !offsite_names.insert(o.name.clone()) {
            return Err(problem(
                vec![Key("offsite"), Index(i), Key("name")],
                format!("duplicate offsite name `{}`", o.name),
            ));
        }
    }

    check_name(vec![Key("update_channel")], &c.update_channel)?;

    let bandwidth_bytes_per_sec = match &c.bandwidth_limit {
        None => None,
        Some(b) => Some(parse_rate(b).filter(|r| *r > 0).ok_or_else(|| {
            problem(
                vec![Key("bandwidth_limit")],
                format!("`{b}` is not a rate; expected e.g. 20Mbit/s, 500kbit/s or 2MiB/s"),
            )
        })?),
    };
    if let Some(k) = &c.recovery_key {
        levee_proto::recovery::RecoveryPublicKey::parse(k)
            .map_err(|e| problem(vec![Key("recovery_key")], e.to_string()))?;
    }
    if let Some(w) = &c.update_window {
        levee_proto::update::UpdateWindow::parse(w)
            .map_err(|e| problem(vec![Key("update_window")], e))?;
    }
    let heartbeat_secs = parse_duration(&c.heartbeat_interval)
        .filter(|s| (10..=86_400).contains(s))
        .ok_or_else(|| {
            problem(
                vec![Key("heartbeat_interval")],
                format!(
                    "`{}`: expected a duration from 10s to 1d, e.g. 5m",
                    c.heartbeat_interval
                ),
            )
        })?;
    let min_disk_bytes = parse_size(&c.install.min_disk_size)
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            problem(
                vec![Key("install"), Key("min_disk_size")],
                format!(
                    "`{}` is not a size; expected e.g. 32GiB",
                    c.install.min_disk_size
                ),
            )
        })?;

    Ok(Customer {
        config: c,
        sources,
        schedules,
        heartbeat_secs,
        bandwidth_bytes_per_sec,
        min_disk_bytes,
    })
}

/// One offsite target: `url` or `urls` (not both), every endpoint of one
/// kind, S3 settings only on an S3 target and all it needs there.
fn check_offsite(i: usize, o: &OffsiteTarget) -> Result<(), Problem> {
    use Seg::{Index, Key};
    let at = |k: &'static str| vec![Key("offsite"), Index(i), Key(k)];
    check_name(at("name"), &o.name)?;
    if let Some(v) = &o.verify_per_week {
        if o.verify_share_per_week().is_none() {
            return Err(problem(
                at("verify_per_week"),
                format!("`{v}` is not a share; expected a percentage from 0% to 100%, e.g. 10%"),
            ));
        }
    }
    if let Some(n) = o.streams {
        if !(1..=levee_proto::config::MAX_STREAMS).contains(&n) {
            return Err(problem(
                at("streams"),
                format!(
                    "`{n}`: expected 1 to {} files uploaded at the same time (default {})",
                    levee_proto::config::MAX_STREAMS,
                    levee_proto::config::DEFAULT_STREAMS
                ),
            ));
        }
    }
    if o.weight.is_some() {
        return Err(problem(
            at("weight"),
            "is gone: every offsite target is a complete copy; list a store's nodes in `urls` instead",
        ));
    }
    let endpoints: Vec<(Vec<Seg>, &str)> = match (&o.url, o.urls.is_empty()) {
        (Some(_), false) => {
            return Err(problem(
                at("urls"),
                "give `url` (one endpoint) or `urls` (the nodes of one store), not both",
            ))
        }
        (None, true) => return Err(problem(
            at("urls"),
            "missing; expected `urls: [https://node1:8443, ...]` or `url: s3://bucket[/prefix]`",
        )),
        (Some(u), true) => vec![(at("url"), u.as_str())],
        (None, false) => o
            .urls
            .iter()
            .enumerate()
            .map(|(j, u)| {
                (
                    vec![Key("offsite"), Index(i), Key("urls"), Index(j)],
                    u.as_str(),
                )
            })
            .collect(),
    };
    let s3 = endpoints.iter().any(|(_, u)| u.starts_with("s3://"));
    let mut seen = HashSet::new();
    for (path, u) in &endpoints {
        if !seen.insert(*u) {
            return Err(problem(path.clone(), format!("`{u}` is listed twice")));
        }
        if u.starts_with("s3://") {
            if endpoints.len() > 1 {
                return Err(problem(
                    path.clone(),
                    "an s3:// target has one `url`; its nodes are behind the S3 `endpoint`",
                ));
            }
            // The agent reads it the same way (levee_proto::s3).
            if let Err(e) = levee_proto::s3::S3Url::parse(u) {
                return Err(problem(path.clone(), e.to_string()));
            }
        } else if let Some(rest) = u.strip_prefix("https://") {
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() {
                return Err(problem(path.clone(), format!("`{u}` names no host")));
            }
        } else {
            return Err(problem(
                path.clone(),
                format!("`{u}`: expected https://host[:port] (Levee offsite store) or s3://bucket[/prefix]"),
            ));
        }
    }
    if s3 {
        // No endpoint: AWS itself, `https://s3.<region>.amazonaws.com`.
        if let Some(endpoint) = o.endpoint.as_deref() {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(problem(
                    at("endpoint"),
                    format!("`{endpoint}` is not an http(s):// URL"),
                ));
            }
        }
        if o.access_key_id.as_deref().is_none_or(str::is_empty) {
            return Err(problem(
                at("access_key_id"),
                "missing; an s3:// target needs access_key_id and secret_access_key",
            ));
        }
        if o.secret_access_key.as_ref().is_none_or(|s| s.0.is_empty()) {
            return Err(problem(
                at("secret_access_key"),
                "missing; an s3:// target needs access_key_id and secret_access_key",
            ));
        }
        if let Some(r) = &o.region {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(problem(
                    at("region"),
                    format!("`{r}` is not a region name; expected e.g. eu-central-1"),
                ));
            }
        }
        if let Some(f) = &o.ca_file {
            if !f.starts_with('/') {
                return Err(problem(
                    at("ca_file"),
                    format!("`{f}` is not an absolute path on the appliance"),
                ));
            }
        }
    } else {
        for (k, set) in [
            ("endpoint", o.endpoint.is_some()),
            ("region", o.region.is_some()),
            ("access_key_id", o.access_key_id.is_some()),
            ("secret_access_key", o.secret_access_key.is_some()),
            ("ca_file", o.ca_file.is_some()),
        ] {
            if set {
                return Err(problem(at(k), "only s3:// targets take S3 settings; a Levee offsite store (https://) uses the appliance certificate and the Levee CA"));
            }
        }
    }
    Ok(())
}

fn parse_time(t: &str) -> Option<(u8, u8)> {
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smb_urls_parse() {
        let u = SmbUrl::parse("smb://backup@files.acme.lan:1445/finance/2026/q1").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("backup", "files.acme.lan", 1445)
        );
        assert_eq!((u.share.as_str(), u.path.as_str()), ("finance", "2026/q1"));
        assert_eq!(SmbUrl::parse("smb://u@h/s").unwrap().port, 445);
        for bad in [
            "smb://h/s",
            "smb://u@h",
            "smb://u:pw@h/s",
            "http://u@h/s",
            "smb://u@h:x/s",
            "smb://u@/s",
            "smb://u@h/",
        ] {
            assert!(SmbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn offsite(target: serde_json::Value) -> Result<Customer, Problem> {
        let c = serde_json::from_value(serde_json::json!({
            "customer": "acme", "offsite": [target],
        }))
        .map_err(|e| problem(vec![], e.to_string()))?;
        validate(c, Path::new("."))
    }

    fn refused(target: serde_json::Value) -> String {
        let p = offsite(target).expect_err("refused");
        format!("{}: {}", crate::config::display_path(&p.path), p.message)
    }

    #[test]
    fn verification_share_is_a_percentage() {
        let t = |v: &str| {
            offsite(
                serde_json::json!({"name": "hq", "url": "https://a:8443", "verify_per_week": v}),
            )
        };
        let c = t("25%").expect("25%");
        assert_eq!(c.config.offsite[0].verify_share_per_week(), Some(0.25));
        assert!(t("0%").is_ok() && t("100%").is_ok());
        for bad in ["150%", "-1%", "10", "ten%", "NaN%"] {
            let p = t(bad).expect_err(bad);
            assert!(
                p.path.contains(&Seg::Key("verify_per_week")) && p.message.contains("percentage"),
                "{bad}: {p:?}"
            );
        }
        let c =
            offsite(serde_json::json!({"name": "hq", "url": "https://a:8443"})).expect("default");
        assert_eq!(c.config.offsite[0].verify_share_per_week(), Some(0.10));
    }

    #[test]
    fn streams_are_one_to_the_most() {
        let t = |v: serde_json::Value| {
            offsite(serde_json::json!({"name": "hq", "url": "https://a:8443", "streams": v}))
        };
        assert_eq!(t(8.into()).expect("8").config.offsite[0].streams, Some(8));
        assert!(t(1.into()).is_ok() && t(32.into()).is_ok());
        for bad in [0, 33, 1000] {
            let p = t(bad.into()).expect_err("refused");
            assert!(
                p.path.contains(&Seg::Key("streams")) && p.message.contains("1 to 32"),
                "{bad}: {p:?}"
            );
        }
        // Not a number: serde names the field.
        let p = t("many".into()).expect_err("a word");
        assert!(p.message.contains("invalid type"), "{p:?}");
    }

    #[test]
    fn offsite_targets_list_nodes_and_old_urls_still_read() {
        let c = offsite(
            serde_json::json!({"name": "hq", "urls": ["https://a:8443", "https://b:8443"]}),
        )
        .expect("urls");
        assert_eq!(
            c.config.offsite[0].endpoints(),
            ["https://a:8443", "https://b:8443"]
        );
        let c = offsite(serde_json::json!({"name": "hq", "url": "https://a:8443"})).expect("url");
        assert_eq!(c.config.offsite[0].endpoints(), ["https://a:8443"]);
        let c = offsite(serde_json::json!({
            "name": "cold", "url": "s3://bucket/p", "endpoint": "https://s3.example",
            "region": "eu-central-1", "access_key_id": "A", "secret_access_key": "S",
            "ca_file": "/etc/levee/s3-ca.pem",
        }))
        .expect("s3");
        assert!(c.config.offsite[0].is_s3());
    }

    #[test]
    fn offsite_errors_name_the_field() {
        let cases = [
            (
                serde_json::json!({"name": "hq", "url": "https://a", "weight": 2}),
                "offsite[0].weight",
            ),
            (
                serde_json::json!({"name": "hq", "url": "https://a", "urls": ["https://b"]}),
                "offsite[0].urls",
            ),
            (serde_json::json!({"name": "hq"}), "offsite[0].urls"),
            (
                serde_json::json!({"name": "hq", "urls": ["https://a", "ftp://b"]}),
                "offsite[0].urls[1]",
            ),
            (
                serde_json::json!({"name": "hq", "urls": ["https://a", "https://a"]}),
                "offsite[0].urls[1]",
            ),
            (
                serde_json::json!({"name": "hq", "urls": ["https://"]}),
                "offsite[0].urls[0]",
            ),
            (
                serde_json::json!({"name": "hq", "url": "https://a", "region": "x"}),
                "offsite[0].region",
            ),
            (
                serde_json::json!({"name": "hq", "url": "https://a", "ca_file": "/x"}),
                "offsite[0].ca_file",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://", "access_key_id": "A", "secret_access_key": "S"}),
                "offsite[0].url",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://bkt", "secret_access_key": "S"}),
                "offsite[0].access_key_id",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://bkt", "access_key_id": "A"}),
                "offsite[0].secret_access_key",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://bkt", "endpoint": "s3.example", "access_key_id": "A", "secret_access_key": "S"}),
                "offsite[0].endpoint",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://bkt", "region": "eu central", "access_key_id": "A", "secret_access_key": "S"}),
                "offsite[0].region",
            ),
            (
                serde_json::json!({"name": "c", "url": "s3://bkt", "ca_file": "ca.pem", "access_key_id": "A", "secret_access_key": "S"}),
                "offsite[0].ca_file",
            ),
            (
                serde_json::json!({"name": "c", "urls": ["s3://b", "s3://c"], "access_key_id": "A", "secret_access_key": "S"}),
                "offsite[0].urls[0]",
            ),
        ];
        for (target, field) in cases {
            let msg = refused(target.clone());
            assert!(msg.starts_with(&format!("{field}: ")), "{target}: {msg}");
        }
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("02:30"), Some((2, 30)));
        assert_eq!(parse_time("24:00"), None);
        assert_eq!(parse_time("2:30"), None);
    }
}
