//! The status report: what a machine tells the server about itself.
//!
//! The same message is sent before enrollment (from the test initramfs or a
//! freshly booted image, over plain HTTP) and later as the heartbeat. It only
//! ever grows: every field but `mac` is optional so that old senders stay
//! valid, and unknown fields are ignored so that old servers do too.

use serde::{Deserialize, Serialize};

/// One status report. `mac` identifies the machine before it has an
/// appliance id (the MAC of the interface it booted from).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// MAC address of the boot interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// What is reporting: `test-initramfs`, `agent`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Version of the sender (agent or image version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Linux boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<f64>,
    /// Addresses of the machine, `10.0.0.5/24` style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Version of the image the machine runs (`IMAGE_VERSION` of os-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Free bytes of the file system holding the agent's state
    /// (`/var/lib/levee`, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Size in bytes of that file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Boot slot the system runs from (`levee.slot=`, e.g. `a`); absent
    /// when booted from the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// Largest status report body accepted (a real one is well under 1 KiB).
pub const MAX_REPORT_BODY: usize = 16 * 1024;

/// Why a status report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the status report is {0} bytes; at most {MAX_REPORT_BODY} are accepted")]
    TooLarge(usize),
    #[error("malformed status report: {0}")]
    Json(String),
    #[error("status report field `{field}` is too long ({len} > {max})")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("status report field `addresses` has {0} entries (at most {MAX_ADDRESSES})")]
    TooManyAddresses(usize),
    #[error("status report field `{0}` contains control characters")]
    Control(&'static str),
}

/// Addresses kept per report.
pub const MAX_ADDRESSES: usize = 32;

impl StatusReport {
    /// Parses and checks a report body (size, then each field's length and
    /// characters): what the server stores and shows to ops is bounded.
    pub fn parse(body: &[u8]) -> Result<StatusReport, ReportError> {
        if body.len() > MAX_REPORT_BODY {
            return Err(ReportError::TooLarge(body.len()));
        }
        let r: StatusReport =
            serde_json::from_slice(body).map_err(|e| ReportError::Json(e.to_string()))?;
        r.check()?;
        Ok(r)
    }

    /// The field checks of [`StatusReport::parse`].
    pub fn check(&self) -> Result<(), ReportError> {
        let text = |field, value: Option<&str>, max| {
            crate::enroll::check_text(field, value.unwrap_or(""), max).map_err(
                |(field, len, max, control)| {
                    if control {
                        ReportError::Control(field)
                    } else {
                        ReportError::FieldTooLong { field, len, max }
                    }
                },
            )
        };
        text("mac", Some(&self.mac), 32)?;
        text("stage", self.stage.as_deref(), 64)?;
        text("version", self.version.as_deref(), 128)?;
        text("boot_id", self.boot_id.as_deref(), 64)?;
        text("image_version", self.image_version.as_deref(), 128)?;
        text("slot", self.slot.as_deref(), 16)?;
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(ReportError::TooManyAddresses(self.addresses.len()));
        }
        for a in &self.addresses {
            text("addresses", Some(a), 64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_capped_per_field() {
        let ok = br#"{"mac":"52:54:00:12:34:56","stage":"agent","addresses":["10.0.0.5/24"]}"#;
        assert_eq!(
            StatusReport::parse(ok).unwrap().stage.as_deref(),
            Some("agent")
        );
        let long = format!(r#"{{"mac":"m","version":"{}"}}"#, "v".repeat(200));
        assert!(matches!(
            StatusReport::parse(long.as_bytes()),
            Err(ReportError::FieldTooLong {
                field: "version",
                ..
            })
        ));
        let esc = br#"{"mac":"m","stage":"\u001b]0;pwned\u0007"}"#;
        assert_eq!(StatusReport::parse(esc), Err(ReportError::Control("stage")));
        let many = serde_json::to_vec(&StatusReport {
            mac: "m".into(),
            addresses: vec!["a".into(); 33],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            StatusReport::parse(&many),
            Err(ReportError::TooManyAddresses(33))
        );
        assert!(matches!(
            StatusReport::parse(&vec![b' '; MAX_REPORT_BODY + 1]),
            Err(ReportError::TooLarge(_))
        ));
    }
}
