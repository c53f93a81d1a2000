//! Restores ops ask an appliance to run (issue 14): nobody touches a
//! keyboard on an appliance, so `levee appliance restore APPLIANCE --to
//! TARGET` stores a [`RestoreRequest`] on the server, the appliance gets it
//! in its heartbeat answer (or `GET` [`PATH`], mutual TLS: only its own),
//! runs it on its job thread and reports each step with a
//! [`RestoreStatus`] (`POST` [`PATH`]) and the run itself as a run of kind
//! `restore` (`POST /api/v1/runs`).
//!
//! The request carries no secret: an SMB target names a host and share,
//! and the appliance takes the account and password from its customer's
//! configuration ([`smb_credentials`]: the source on the same host and
//! share, or the one the request names).
//!
//! ```
//! use levee_proto::restore_api::{RestoreTarget, parse_target};
//! assert!(matches!(parse_target("smb://files.lan/share/restore"),
//!     Ok(RestoreTarget::Smb { .. })));
//! assert!(parse_target("/srv/restore").is_ok());
//! assert!(parse_target("smb://user@files.lan/share").is_err());
//! assert!(parse_target("restore").is_err());
//! assert!(parse_target("/srv/../etc").is_err());
//! ```

use serde::{Deserialize, Serialize};

use crate::config::{SmbUrl, Source};

/// `GET` this appliance's pending requests ([`RestoreList`]); `POST` a
/// [`RestoreStatus`].
pub const PATH: &str = "/api/v1/restore";
/// Largest accepted status body.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest target, path or reason kept (characters).
pub const MAX_TEXT: usize = 2000;

/// One restore ops asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The server's id: a request runs once (the appliance keeps the ids it
    /// ran).
    pub id: i64,
    /// `latest` or a snapshot id (or unique prefix).
    pub snapshot: String,
    /// A path inside the snapshot (default: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `smb://HOST[:PORT]/SHARE[/DIR]` (no account: see the module doc) or
    /// an absolute directory on the appliance.
    pub target: String,
    /// The source whose SMB account writes to the target (default: the
    /// source on the target's host and share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_of: Option<String>,
    /// Ops withdrew it while it runs (`levee appliance restore --cancel`):
    /// the appliance stops between files and reports `cancelled` (older
    /// agents ignore the field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// `POST` [`PATH`] answered: where the request stands now (`cancelling`:
/// ops asked it to stop; the appliance's progress report was taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAnswer {
    pub state: RestoreState,
}

/// `GET` [`PATH`]: this appliance's requests not yet finished, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreList {
    pub requests: Vec<RestoreRequest>,
}

/// Where a request stands. The moves (the store refuses any other):
/// `requested` -> `running` (appliance) or `cancelled` (ops: withdrawn
/// before it started); `running` -> `cancelling` (ops asks it to stop),
/// `done`, `failed` or `cancelled` (appliance); `cancelling` -> `cancelled`
/// (the appliance stopped), `done` or `failed` (it ended first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreState {
    /// Stored by ops; the appliance has not started it.
    Requested,
    Running,
    /// Running, and ops asked it to stop: the appliance stops between
    /// files at its next heartbeat or progress report.
    Cancelling,
    /// Finished; every file restored.
    Done,
    /// Not started (a bad target, no credentials), or finished with files
    /// that could not be restored.
    Failed,
    /// Withdrawn by ops: before it started (nothing written), or stopped
    /// between files (what was written stays).
    Cancelled,
}

impl RestoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreState::Requested => "requested",
            RestoreState::Running => "running",
            RestoreState::Cancelling => "cancelling",
            RestoreState::Done => "done",
            RestoreState::Failed => "failed",
            RestoreState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RestoreState> {
        Some(match s {
            "requested" => RestoreState::Requested,
            "running" => RestoreState::Running,
            "cancelling" => RestoreState::Cancelling,
            "done" => RestoreState::Done,
            "failed" => RestoreState::Failed,
            "cancelled" => RestoreState::Cancelled,
            _ => return None,
        })
    }

    /// Done, failed or cancelled: nothing more happens to it.
    pub fn finished(self) -> bool {
        matches!(
            self,
            RestoreState::Done | RestoreState::Failed | RestoreState::Cancelled
        )
    }
}

/// `POST` [`PATH`]: a step of one request, from the appliance that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreStatus {
    pub id: i64,
    /// `running` (also a progress report), `done`, `failed` or `cancelled`
    /// (an appliance never sets `requested` or `cancelling`).
    pub state: RestoreState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: u64,
}

impl RestoreStatus {
    /// Parses and checks a body from an appliance: a state it may set; the
    /// reason cut to [`MAX_TEXT`] bytes with control characters made
    /// spaces (it is shown to ops).
    pub fn parse(body: &[u8]) -> Result<RestoreStatus, String> {
        let mut s: RestoreStatus =
            serde_json::from_slice(body).map_err(|e| format!("malformed restore status: {e}"))?;
        if matches!(s.state, RestoreState::Requested | RestoreState::Cancelling) {
            return Err(format!(
                "an appliance reports `running`, `done`, `failed` or `cancelled`, not `{}`",
                s.state.as_str()
            ));
        }
        if let Some(r) = s.reason.as_mut() {
            *r = printable(r);
        }
        Ok(s)
    }
}

/// `text` cut to [`MAX_TEXT`] bytes, control characters made spaces.
pub fn printable(text: &str) -> String {
    let mut cut = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A parsed restore target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    Smb {
        host: String,
        port: u16,
        share: String,
        /// Inside the share, without leading `/`; empty: the share's root.
        dir: String,
    },
    /// An absolute directory on the appliance.
    Local(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("restore target `{0}`: {1}; expected smb://HOST[:PORT]/SHARE[/DIR] or an absolute directory on the appliance")]
    Target(String, String),
    #[error("snapshot `{0}`: expected `latest` or a snapshot id (hex, as `levee-agent snapshots` or the runs show)")]
    Snapshot(String),
    #[error("path in the snapshot `{0}`: {1}")]
    Path(String, String),
    #[error("{0}")]
    Credentials(String),
}

/// Path components that are plain names: no `..`, `.`, empty parts in the
/// middle, control characters or backslashes (an SMB server takes `\` as
/// a separator).
fn clean_components(p: &str) -> Result<(), String> {
    if p.chars().count() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} characters"));
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        return Err("control characters and `\\` are not allowed".into());
    }
    let inner = p.trim_matches('/');
    if inner.is_empty() {
        return Ok(());
    }
    for c in inner.split('/') {
        match c {
            "" => return Err("empty path component (`//`)".into()),
            "." | ".." => return Err(format!("`{c}` is not allowed as a path component")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks and parses a restore target (see [`RestoreRequest::target`]).
pub fn parse_target(s: &str) -> Result<RestoreTarget, TargetError> {
    let bad = |why: &str| TargetError::Target(printable(s), why.to_string());
    if let Some(rest) = s.strip_prefix("smb://") {
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no share"))?;
        if path.split('/').next().unwrap_or("").is_empty() {
            return Err(bad("no share"));
        }
        if authority.contains('@') {
            return Err(bad(
                "no account in the URL: the appliance takes it from the customer's configuration \
                 (the source on this host and share, or --credentials-of SOURCE)",
            ));
        }
        // The host and port rules are the sources' (one parser).
        let parsed = SmbUrl::parse(&format!("smb://x@{authority}/{path}"))
            .map_err(|_| bad("not a host name or IPv4 address with an optional port"))?;
        clean_components(path).map_err(|e| bad(&e))?;
        return Ok(RestoreTarget::Smb {
            host: parsed.host,
            port: parsed.port,
            share: parsed.share,
            dir: parsed.path,
        });
    }
    if !s.starts_with('/') {
        return Err(bad("neither an smb:// URL nor an absolute path"));
    }
    clean_components(s).map_err(|e| bad(&e))?;
    if s.trim_matches('/').is_empty() {
        return Err(bad("not the appliance's root directory"));
    }
    Ok(RestoreTarget::Local(s.to_string()))
}

/// Checks a snapshot argument: `latest` or 4-64 lowercase hex digits.
pub fn check_snapshot(s: &str) -> Result<(), TargetError> {
    let hex =
        (4..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if s == "latest" || hex {
        Ok(())
    } else {
        Err(TargetError::Snapshot(printable(s)))
    }
}

/// Checks a path inside the snapshot (`/finance/2026` or `finance/2026`).
pub fn check_path(p: &str) -> Result<(), TargetError> {
    clean_components(p).map_err(|e| TargetError::Path(printable(p), e))
}

impl RestoreRequest {
    /// Every field checked, as the server does before storing and the
    /// appliance before running.
    pub fn check(&self) -> Result<RestoreTarget, TargetError> {
        check_snapshot(&self.snapshot)?;
        if let Some(p) = &self.path {
            check_path(p)?;
        }
        parse_target(&self.target)
    }
}

/// For an SMB target: the full URL with the account of the source that
/// writes there, and that source. `credentials_of` names the source; else
/// the source on the same host, port and share (names compared without
/// case, as SMB does). None fitting is an error naming what would.
pub fn smb_credentials<'a>(
    target: &RestoreTarget,
    sources: &'a [Source],
    credentials_of: Option<&str>,
) -> Result<(String, &'a Source), TargetError> {
    let RestoreTarget::Smb {
        host,
        port,
        share,
        dir,
    } = target
    else {
        return Err(TargetError::Credentials(
            "a local target needs no SMB credentials".into(),
        ));
    };
    let smb: Vec<(&Source, SmbUrl)> = sources
        .iter()
        .filter_map(|s| Some((s, SmbUrl::parse(s.smb.as_deref()?).ok()?)))
        .collect();
    let names = || {
        if smb.is_empty() {
            "the customer has no SMB source".to_string()
        } else {
            let list: Vec<String> = smb
                .iter()
                .map(|(s, u)| format!("{} ({u})", s.name))
                .collect();
            format!("SMB sources: {}", list.join(", "))
        }
    };
    let (source, url) = match credentials_of {
        Some(name) => match smb.iter().find(|(s, _)| s.name == name) {
            Some(found) => found,
            None => {
                return Err(TargetError::Credentials(format!(
                    "--credentials-of {name}: no SMB source of that name; {}",
                    names()
                )))
            }
        },
        None => {
            let same = |u: &SmbUrl| {
                u.host.eq_ignore_ascii_case(host)
                    && u.port == *port
                    && u.share.eq_ignore_ascii_case(share)
            };
            match smb.iter().find(|(_, u)| same(u)) {
                Some(found) => found,
                None => {
                    return Err(TargetError::Credentials(format!(
                        "no SMB source of the customer is on {host}:{port}/{share}, so there is no \
                         account to write there with: give --credentials-of SOURCE; {}",
                        names()
                    )))
                }
            }
        }
    };
    let mut full = format!("smb://{}@{host}:{port}/{share}", url.user);
    if !dir.is_empty() {
        full.push('/');
        full.push_str(dir);
    }
    Ok((full, *source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, smb: &str) -> Source {
        serde_json::from_value(serde_json::json!({"name": name, "smb": smb, "password": "pw"}))
            .unwrap()
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("smb://10.99.0.1/restore/r1").unwrap(),
            RestoreTarget::Smb {
                host: "10.99.0.1".into(),
                port: 445,
                share: "restore".into(),
                dir: "r1".into()
            }
        );
        assert_eq!(
            parse_target("smb://files:1445/Share").unwrap(),
            RestoreTarget::Smb {
                host: "files".into(),
                port: 1445,
                share: "Share".into(),
                dir: String::new()
            }
        );
        for (bad, says) in [
            ("smb://u@h/s", "no account"),
            ("smb://h", "no share"),
            ("smb://h/", "no share"),
            ("smb://h:0/s", "not a host"),
            ("smb://h/s/../x", "`..`"),
            ("smb://h/s/a\\b", "`\\`"),
            ("smb://h/s/a\nb", "control"),
            ("relative/dir", "absolute"),
            ("/", "root"),
            ("/srv//x", "empty path component"),
            ("/srv/./x", "`.`"),
        ] {
            let e = parse_target(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("expected smb://HOST"), "{bad}: {e}");
        }
        assert_eq!(
            parse_target("/srv/restore/").unwrap(),
            RestoreTarget::Local("/srv/restore/".into())
        );
    }

    #[test]
    fn snapshots_and_paths() {
        assert!(check_snapshot("latest").is_ok());
        assert!(check_snapshot("0a1b2c3d").is_ok());
        assert!(check_snapshot("newest").is_err());
        assert!(check_snapshot("ABCD").is_err());
        assert!(check_path("/finance/2026").is_ok());
        assert!(check_path("finance").is_ok());
        assert!(check_path("../etc").is_err());
    }

    #[test]
    fn credentials_come_from_the_matching_source_or_the_named_one() {
        let sources = vec![
            source("files", "smb://backup@10.99.0.1/files"),
            source("other", "smb://clerk@nas.lan:1445/docs/sub"),
            serde_json::from_value(serde_json::json!({"name": "logs", "path": "/srv/logs"}))
                .unwrap(),
        ];
        let t = parse_target("smb://10.99.0.1/FILES/restore/r1").unwrap();
        let (url, s) = smb_credentials(&t, &sources, None).unwrap();
        assert_eq!(url, "smb://backup@10.99.0.1:445/FILES/restore/r1");
        assert_eq!(s.name, "files");
        let t = parse_target("smb://10.99.0.1/restore").unwrap();
        let e = smb_credentials(&t, &sources, None).unwrap_err().to_string();
        assert!(
            e.contains("--credentials-of")
                && e.contains("files (smb://backup@10.99.0.1:445/files)"),
            "{e}"
        );
        let (url, s) = smb_credentials(&t, &sources, Some("files")).unwrap();
        assert_eq!(
            (url.as_str(), s.name.as_str()),
            ("smb://backup@10.99.0.1:445/restore", "files")
        );
        let e = smb_credentials(&t, &sources, Some("logs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SMB source of that name"), "{e}");
        // A port is part of the match.
        let t = parse_target("smb://nas.lan/docs").unwrap();
        assert!(smb_credentials(&t, &sources, None).is_err());
    }

    #[test]
    fn statuses_from_outside() {
        let s = RestoreStatus::parse(br#"{"id":3,"state":"failed","reason":"a\nb"}"#).unwrap();
        assert_eq!(s.reason.as_deref(), Some("a b"));
        assert!(RestoreStatus::parse(br#"{"id":3,"state":"requested"}"#).is_err());
        assert!(RestoreStatus::parse(br#"{"id":3,"state":"cancelling"}"#).is_err());
        assert!(RestoreStatus::parse(br#"{"id":3,"state":"cancelled"}"#).is_ok());
        for s in [
            "requested",
            "running",
            "cancelling",
            "done",
            "failed",
            "cancelled",
        ] {
            assert_eq!(RestoreState::parse(s).map(RestoreState::as_str), Some(s));
        }
        assert!(RestoreStatus::parse(br#"{"id":3,"state":"done","extra":1}"#).is_err());
    }
}
