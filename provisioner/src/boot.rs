//! The provisioner's side of network boot: which profile a machine boots,
//! its iPXE script, and its boot history.
//!
//! [`BootService`] implements [`BootPolicy`] for the DHCP server and renders
//! the per-machine scripts that the HTTP and TFTP servers hand out, so the
//! decision and the script always come from the same store read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use levee_proto::image::ROOTFS;
use levee_pxe::boot::{BootDecision, BootPolicy, BootRequest, MacAddr};
use levee_pxe::ipxe;
use tracing::{info, warn};

use crate::enroll::token::{self, Mint};
use crate::limit::Limits;
use crate::store::{ImageRecord, Profile, Store, Transport};

/// The profile machines boot when ops chose none for them.
pub const DEFAULT_PROFILE: &str = "default";

/// The template a profile gets when none is given: enough for the test
/// initramfs and for Levee images (whose stage 1 needs the root and its hash;
/// the image adds its own arguments through `{image_cmdline}`). A loose
/// kernel gets `no_timer_check`: under TCG on a loaded host the kernel's
/// IO-APIC timer check can fail and panic the guest.
pub fn default_cmdline(image_has_rootfs: bool) -> &'static str {
    if image_has_rootfs {
        "console=ttyS0,115200 levee.url={url} levee.ca={ca} levee.token={token} levee.root={root_url} levee.sha256={root_sha256} {image_cmdline}"
    } else {
        "console=ttyS0,115200 no_timer_check levee.url={url} levee.mac={mac} levee.token={token}"
    }
}

/// Everything the boot path needs to know about the server.
#[derive(Clone)]
pub struct BootService {
    pub store: Arc<dyn Store>,
    pub data_dir: PathBuf,
    /// Base URL of the plain-HTTP listener as machines reach it, no trailing `/`.
    pub public_url: String,
    /// Host (IP) of the TFTP server as machines reach it.
    pub tftp_host: String,
    /// sha256 of the server CA certificate (`{ca}`), see [`crate::enroll::ca`].
    pub ca_fingerprint: String,
    /// Whether unknown machines get enrollment tokens (and may wait,
    /// pending, for ops to approve them).
    pub allow_pending: bool,
    /// Rate limits (token minting here; reports and renewals elsewhere).
    pub limits: Arc<Limits>,
}

impl BootService {
    /// The profile and image a machine boots, or why it boots nothing.
    pub fn resolve(&self, mac: MacAddr) -> Result<(Profile, ImageRecord), String> {
        let appliance = self.store.appliance(mac).map_err(|e| e.to_string())?;
        // A retired (or replaced) machine's credential is revoked; booting it
        // again would only start an enrollment that must be refused.
        if let Some(a) = appliance.as_ref().filter(|a| a.revoked_at.is_some()) {
            return Err(format!(
                "appliance {mac} (id {}) is retired ({}): not served; `levee appliance remove {mac}` to forget it",
                a.id,
                a.state_reason.as_deref().unwrap_or("no reason given")
            ));
        }
        let name = appliance
            .and_then(|a| a.profile)
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        let profile = self
            .store
            .profile(&name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("no boot profile `{name}`: create it with `levee profile set {name} ...`")
            })?;
        let image = self
            .store
            .image(&profile.image)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "profile `{name}` points at missing image `{}`",
                    profile.image
                )
            })?;
        Ok((profile, image))
    }

    /// Base URL of an image's artifacts over the profile's transport.
    fn image_url(&self, image: &str, transport: Transport) -> String {
        match transport {
            Transport::Http => format!("{}/images/{image}", self.public_url),
            Transport::Tftp => format!("tftp://{}/images/{image}", self.tftp_host),
        }
    }

    /// Where iPXE finds this machine's script.
    pub fn script_url(&self, mac: MacAddr, transport: Transport) -> String {
        match transport {
            Transport::Http => format!("{}/boot/{mac}.ipxe", self.public_url),
            Transport::Tftp => format!("tftp://{}/boot/{mac}.ipxe", self.tftp_host),
        }
    }

    /// Fills a profile's command-line template for one machine; `token` is
    /// its enrollment token (`{token}`).
    pub fn cmdline(
        &self,
        profile: &Profile,
        image: &ImageRecord,
        mac: MacAddr,
        token: &str,
    ) -> Result<String, ipxe::TemplateError> {
        let image_url = self.image_url(&image.id, profile.transport);
        let rootfs = image.manifest.artifacts.get(ROOTFS);
        let vars: BTreeMap<&str, String> = [
            ("url", self.public_url.clone()),
            ("mac", mac.to_string()),
            ("profile", profile.name.clone()),
            ("image", image.id.clone()),
            ("image_version", image.version.clone()),
            ("image_url", image_url.clone()),
            // Always over HTTP: stage 1 downloads the root with its own client.
            (
                "root_url",
                format!("{}/images/{}/{ROOTFS}", self.public_url, image.id),
            ),
            (
                "root_sha256",
                rootfs.map(|a| a.sha256.clone()).unwrap_or_default(),
            ),
            ("image_cmdline", image.manifest.cmdline.clone()),
            ("ca", self.ca_fingerprint.clone()),
            ("token", token.to_string()),
        ]
        .into();
        ipxe::fill_template(&profile.cmdline, &vars)
    }

    /// The iPXE script for a machine, asked from `peer`; a refusal script
    /// says why on its console if it cannot boot.
    pub fn script(&self, mac: MacAddr, peer: Option<IpAddr>) -> String {
        let rendered = self.resolve(mac).and_then(|(profile, image)| {
            // Only templates that pass a token get one.
            let token = if profile.cmdline.contains("{token}") {
                self.token(mac, peer)?
            } else {
                String::new()
            };
            let cmdline = self
                .cmdline(&profile, &image, mac, &token)
                .map_err(|e| format!("profile `{}`: {e}", profile.name))?;
            let base = self.image_url(&image.id, profile.transport);
            Ok((
                ipxe::render(&ipxe::Script {
                    title: format!("{mac} boots profile {} (image {})", profile.name, image.id),
                    kernel_url: format!("{base}/{}", profile.kernel),
                    initrd_url: format!("{base}/{}", profile.initrd),
                    cmdline,
                }),
                profile.name,
            ))
        });
        match rendered {
            Ok((script, profile)) => {
                info!(%mac, %profile, "boot script rendered");
                self.event(mac, "script", &format!("boot script for profile {profile}"));
                script
            }
            Err(reason) => {
                warn!(%mac, %reason, "boot script refused");
                self.event(mac, "script-refused", &reason);
                ipxe::render_refusal(&reason)
            }
        }
    }

    /// The token for a script (empty when the machine may not enroll: it
    /// boots, and its agent says it has no token), or why the script is
    /// refused.
    fn token(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<String, String> {
        let now = crate::store::now();
        let minted = token::mint_for(
            self.store.as_ref(),
            &self.limits,
            mac,
            peer.map(token::canonical),
            self.allow_pending,
            now,
        )
        .map_err(|e| format!("cannot mint an enrollment token: {e}"))?;
        match minted {
            Mint::Token(t) => Ok(t),
            Mint::NoToken(why) => {
                info!(%mac, peer = ?peer, reason = %why, "boot script without an enrollment token");
                self.event(mac, "no-token", &why);
                Ok(String::new())
            }
            Mint::Refused(why) => Err(why),
        }
    }

    /// Records a step in the machine's history; a store hiccup must not stop
    /// a boot, so it is only logged.
    pub fn event(&self, mac: MacAddr, step: &'static str, detail: &str) {
        crate::metrics::boot_event(step);
        if let Err(e) = self.store.add_event(mac, step, detail) {
            warn!(%mac, error = %e, "could not record boot event");
        }
    }
}

impl BootPolicy for BootService {
    fn decide(&self, req: &BootRequest) -> BootDecision {
        if let Err(e) = self.store.appliance_seen(req.mac) {
            warn!(mac = %req.mac, error = %e, "could not record machine");
        }
        self.event(
            req.mac,
            "dhcp",
            &format!("{} stage, {} firmware", req.stage, req.arch),
        );
        match self.resolve(req.mac) {
            Ok((profile, _)) => BootDecision::Boot {
                script_url: self.script_url(req.mac, profile.transport),
            },
            Err(reason) => BootDecision::Ignore { reason },
        }
    }
}
