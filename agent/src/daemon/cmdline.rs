//! The `levee.*` keys of the kernel command line (see ARCHITECTURE.md).

/// What the agent takes from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    /// `levee.url=`: the server's plain-HTTP base URL.
    pub url: Option<String>,
    /// `levee.ca=`: sha256 of the server CA certificate.
    pub ca: Option<String>,
    /// `levee.token=`: one-time enrollment token.
    pub token: Option<String>,
    /// `levee.root=` the system booted from.
    pub root: Option<String>,
    /// `BOOTIF=01-aa-bb-..` from PXE, as `aa:bb:..`.
    pub bootif: Option<String>,
    /// `levee.interval=SECS`: seconds between reports (tests shorten it).
    pub interval_secs: Option<u64>,
    /// `levee.slot=`: the A/B slot an installed system booted from (the
    /// boot loader entry writes it); absent on a network boot.
    pub slot: Option<String>,
    /// `levee.health=SECS`: how long a trial boot of an update may take to
    /// pass its health check (tests shorten it).
    pub health_secs: Option<u64>,
    /// `levee.update_check=SECS`: the agent's own check of its release
    /// channel, about every SECS seconds (0: never; default
    /// `update::schedule::DEFAULT_EVERY`).
    pub update_check_secs: Option<u64>,
}

impl BootArgs {
    pub fn parse(cmdline: &str) -> BootArgs {
        let mut a = BootArgs::default();
        for word in cmdline.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_string();
            match k {
                "levee.url" => a.url = Some(v.trim_end_matches('/').to_string()),
                "levee.ca" => a.ca = Some(v),
                // Empty: the server gave this machine no token (it may
                // not enroll).
                "levee.token" => a.token = Some(v).filter(|t| !t.is_empty()),
                "levee.root" => a.root = Some(v),
                "levee.slot" => a.slot = Some(v),
                "levee.health" => a.health_secs = v.parse().ok().filter(|s| *s > 0),
                "levee.update_check" => a.update_check_secs = v.parse().ok(),
                "levee.interval" => a.interval_secs = v.parse().ok().filter(|s| *s > 0),
                "BOOTIF" => {
                    let mac = v
                        .strip_prefix("01-")
                        .unwrap_or(&v)
                        .replace('-', ":")
                        .to_ascii_lowercase();
                    if mac.len() == 17 {
                        a.bootif = Some(mac);
                    }
                }
                _ => {}
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levee_keys() {
        let a = BootArgs::parse("console=ttyS0 levee.url=http://10.0.2.2:8080/ levee.root=http://x/r levee.token=t levee.interval=5 levee.slot=b BOOTIF=01-52-54-00-AB-CD-EF quiet\n");
        assert_eq!(a.url.as_deref(), Some("http://10.0.2.2:8080"));
        assert_eq!(a.root.as_deref(), Some("http://x/r"));
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.interval_secs, Some(5));
        assert_eq!(a.slot.as_deref(), Some("b"));
        assert_eq!(a.bootif.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(BootArgs::parse("quiet"), BootArgs::default());
    }
}
