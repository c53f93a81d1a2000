//! Customer configuration files: YAML in, a validated [`Customer`] out.
//!
//! Two phases, as in ripgrep's low-level and high-level arguments:
//! serde_norway parses the text into the raw schema of
//! [`levee_proto::config`] (syntax, unknown keys and wrong types fail here,
//! with serde_norway's position), then [`validate`] checks the meaning
//! (missing password, bad `smb://` URL, bad schedule, ...) and builds typed
//! values. Every error names the file, line and column, the path of the
//! offending key and what was expected.

mod validate;

use std::fmt;
use std::path::Path;

use levee_proto::config::CustomerConfig;

pub use levee_proto::config::SmbUrl;
pub use levee_proto::yaml::{display_path, locate, Seg};
pub use validate::{Customer, Schedule, SourceKind, Weekday};

/// A configuration file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; `None` when the problem is the file as a whole.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A semantic problem found by [`validate`]: where (as a path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<Seg>,
    pub message: String,
}

/// Reads and validates a configuration file. `password_file`s are read
/// relative to the file's directory.
pub fn load(path: &Path) -> Result<Customer, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        position: None,
        message: format!("cannot read: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&file, &text, base)
}

/// Parses and validates configuration text; `file` is only for messages.
pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<Customer, ConfigError> {
    let raw: CustomerConfig = serde_norway::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        position: e.location().map(|l| (l.line(), l.column())),
        message: strip_position(&e.to_string()),
    })?;
    validate::validate(raw, base_dir).map_err(|p| {
        let path = display_path(&p.path);
        ConfigError {
            file: file.to_string(),
            position: locate(text, &p.path),
            message: if path.is_empty() {
                p.message
            } else {
                format!("{path}: {}", p.message)
            },
        }
    })
}

/// serde_norway appends ` at line L column C` (and for syntax errors a
/// `, while parsing ...` context); the position goes in front instead.
fn strip_position(msg: &str) -> String {
    let mut out = msg.to_string();
    if let Some(i) = out.find(" at line ") {
        let rest = &out[i + " at line ".len()..];
        // Keep the libyaml context (", while parsing a block mapping"), minus its own position.
        let context = rest
            .find(", ")
            .map(|j| strip_position(&rest[j..]))
            .unwrap_or_default();
        out = format!("{}{context}", &out[..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("acme.yaml", text, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = err("customer: acme\nsources:\n  - name: a\n   path: [x\n");
        assert!(e.starts_with("acme.yaml:4:"), "{e}");
        assert!(!e.contains(" at line "), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_have_a_position_and_path() {
        let e = err("customer: acme\nsources:\n  - name: a\n    path: /x\n    paswd: y\n");
        assert!(
            e.starts_with("acme.yaml:5:5: sources[0]: unknown field `paswd`"),
            "{e}"
        );
        let e = err("customer: acme\nretention:\n  keep_daily: lots\n");
        assert!(
            e.starts_with("acme.yaml:3:15: retention.keep_daily: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn update_window_is_checked_with_its_position() {
        let e = err("customer: acme\nupdate_window: 25:00-01:00\n");
        assert!(
            e.starts_with("acme.yaml:2:")
                && e.contains("update_window")
                && e.contains("HH:MM-HH:MM"),
            "{e}"
        );
        let ok = parse(
            "acme.yaml",
            "customer: acme\nupdate_window: 22:00-04:00\n",
            Path::new("/nonexistent"),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn recovery_key_is_checked_with_its_position() {
        let e = err("customer: acme\nrecovery_key: ed25519:00\n");
        assert!(
            e.starts_with("acme.yaml:2:") && e.contains("recovery_key") && e.contains("x25519:"),
            "{e}"
        );
        let key = levee_proto::recovery::RecoveryPrivateKey::generate().public();
        let ok = parse(
            "acme.yaml",
            &format!("customer: acme\nrecovery_key: {key}\n"),
            Path::new("/nonexistent"),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn missing_password_points_at_the_source() {
        let e = err("customer: acme\nsources:\n  - name: a\n    path: /x\n  - name: b\n    smb: smb://u@h/s\n");
        assert_eq!(
            e,
            "acme.yaml:5:5: sources[1].password: missing; an SMB source needs a password (or password_file)"
        );
    }
}
