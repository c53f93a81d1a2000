//! The mutual-TLS client: the appliance's key and certificate as its
//! identity, the server CA as the only root (no system roots), the server
//! name from `https_url`.

use std::path::Path;

use levee_proto::config::CustomerConfig;
use levee_proto::enroll::{paths, EnrollmentResponse, InstallPlan, InstallStatus, RenewRequest};
use levee_proto::report::StatusReport;
use levee_proto::update::{HeartbeatAnswer, UpdateAnswer, UpdateReport};
use serde::{Deserialize, Serialize};

use super::credential::{write_atomic, Credential};
use super::keys::NewKey;
use super::{client_builder, refusal, transport, EnrollError};

/// The cached configuration in the state dir.
pub const CONFIG_CACHE: &str = "config.json";

/// What `config.json` holds: the server's body verbatim and its ETag.
#[derive(Debug, Serialize, Deserialize)]
struct CachedConfig {
    etag: String,
    body: serde_json::Value,
}

/// The result of a configuration pull.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFetch {
    pub config: CustomerConfig,
    /// `false` when the server said 304 and the cache was used.
    pub changed: bool,
    pub etag: String,
}

pub struct MtlsClient {
    client: reqwest::blocking::Client,
    base: String,
}

impl MtlsClient {
    /// A client for `cred`'s server presenting `cred`'s certificate.
    pub fn new(cred: &Credential) -> Result<MtlsClient, EnrollError> {
        let base = cred.server.https_url.trim_end_matches('/').to_string();
        let bad = |e: reqwest::Error| EnrollError::Key(format!("credential not usable: {e}"));
        // The one pinned certificate, never the whole text: a TLS stack
        // would trust every certificate in it.
        let ca_der = super::single_certificate(&cred.ca_pem)
            .map_err(|e| EnrollError::Key(format!("credential not usable: ca.pem: {e}")))?;
        let ca = reqwest::Certificate::from_der(&ca_der).map_err(bad)?;
        let pem = format!("{}\n{}", cred.cert_pem.trim_end(), cred.key_pem);
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(bad)?;
        let client = client_builder()
            .use_rustls_tls()
            .https_only(true)
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .build()
            .map_err(|e| transport(&base, e))?;
        Ok(MtlsClient { client, base })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, EnrollError> {
        let url = self.url(path);
        let resp = self
            .client
            .get(&url)
            .send()
            .map_err(|e| transport(&url, e))?;
        if !resp.status().is_success() {
            return Err(refusal(&url, resp));
        }
        resp.json()
            .map_err(|e| transport(&url, format!("malformed answer: {e}")))
    }

    fn post_json<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<reqwest::blocking::Response, EnrollError> {
        let url = self.url(path);
        let resp = self
            .client
            .post(&url)
            .json(body)
            .send()
            .map_err(|e| transport(&url, e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(refusal(&url, resp))
        }
    }

    /// `GET /api/v1/config` with the cached ETag; a new body replaces the
    /// cache (`STATE/config.json`), a 304 returns the cached one.
    pub fn fetch_config(&self, state_dir: &Path) -> Result<ConfigFetch, EnrollError> {
        let url = self.url(paths::CONFIG);
        let cache_path = state_dir.join(CONFIG_CACHE);
        let cached: Option<CachedConfig> = std::fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut req = self.client.get(&url);
        if let Some(c) = &cached {
            req = req.header(reqwest::header::IF_NONE_MATCH, &c.etag);
        }
        let resp = req.send().map_err(|e| transport(&url, e))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            if let Some(c) = cached {
                let config = serde_json::from_value(c.body).map_err(|e| {
                    transport(&url, format!("cached configuration is not valid: {e}"))
                })?;
                return Ok(ConfigFetch {
                    config,
                    changed: false,
                    etag: c.etag,
                });
            }
            return Err(transport(&url, "304 without a cached configuration"));
        }
        if !resp.status().is_success() {
            return Err(refusal(&url, resp));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: serde_json::Value = resp
            .json()
            .map_err(|e| transport(&url, format!("malformed configuration: {e}")))?;
        let config: CustomerConfig = serde_json::from_value(body.clone())
            .map_err(|e| transport(&url, format!("configuration does not fit the schema: {e}")))?;
        if !etag.is_empty() {
            std::fs::create_dir_all(state_dir).map_err(|e| transport(&url, e))?;
            let bytes = serde_json::to_vec(&CachedConfig {
                etag: etag.clone(),
                body,
            })
            .map_err(|e| transport(&url, e))?;
            // It holds the SMB passwords: owner only.
            write_atomic(&cache_path, &bytes, 0o600)?;
        }
        Ok(ConfigFetch {
            config,
            changed: true,
            etag,
        })
    }

    /// `GET /api/v1/install`.
    pub fn install_plan(&self) -> Result<InstallPlan, EnrollError> {
        self.get_json(paths::INSTALL)
    }

    /// `POST /api/v1/install`.
    pub fn post_install_status(&self, status: &InstallStatus) -> Result<(), EnrollError> {
        self.post_json(paths::INSTALL, status).map(drop)
    }

    /// `POST /api/v1/heartbeat`; the answer may carry an update offer
    /// (an older server's bare `{"ok": true}` reads as no offer).
    pub fn heartbeat(&self, report: &StatusReport) -> Result<HeartbeatAnswer, EnrollError> {
        let resp = self.post_json(paths::HEARTBEAT, report)?;
        let body = resp
            .bytes()
            .map_err(|e| transport(&self.url(paths::HEARTBEAT), e))?;
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }

    /// `GET /api/v1/update`: what the rollout says for this appliance.
    pub fn update_offer(&self) -> Result<UpdateAnswer, EnrollError> {
        self.get_json(levee_proto::update::PATH)
    }

    /// `POST /api/v1/update`: one step of an update, or its rollback.
    pub fn post_update(&self, report: &UpdateReport) -> Result<(), EnrollError> {
        self.post_json(levee_proto::update::PATH, report).map(drop)
    }

    /// `GET /api/v1/recovery`: this appliance's recovery grant, if any.
    pub fn recovery(&self) -> Result<levee_proto::recovery_api::RecoveryAnswer, EnrollError> {
        self.get_json(levee_proto::recovery_api::PATH)
    }

    /// `POST /api/v1/recovery`: this appliance's key and sealed slot.
    pub fn post_recovery(
        &self,
        upload: &levee_proto::recovery_api::RecoveryUpload,
    ) -> Result<(), EnrollError> {
        self.post_json(levee_proto::recovery_api::PATH, upload)
            .map(drop)
    }

    /// `GET /api/v1/restore`: this appliance's unfinished restore requests.
    pub fn restores(&self) -> Result<levee_proto::restore_api::RestoreList, EnrollError> {
        self.get_json(levee_proto::restore_api::PATH)
    }

    /// `POST /api/v1/restore`: a step of one restore request (or its
    /// progress); where the request stands now (`cancelling`: ops asked
    /// it to stop). `None`: the server said nothing readable of it.
    pub fn post_restore(
        &self,
        status: &levee_proto::restore_api::RestoreStatus,
    ) -> Result<Option<levee_proto::restore_api::RestoreState>, EnrollError> {
        let resp = self.post_json(levee_proto::restore_api::PATH, status)?;
        Ok(resp
            .json::<levee_proto::restore_api::RestoreAnswer>()
            .ok()
            .map(|a| a.state))
    }

    /// `POST /api/v1/runs`: one run's report.
    pub fn post_run(&self, report: &levee_proto::runs::RunReport) -> Result<(), EnrollError> {
        self.post_json(paths::RUNS, report).map(drop)
    }

    /// `POST /api/v1/renew` with a new key's request; the new key and
    /// certificate replace the old ones in the state dir together. The
    /// server's CA must still be the pinned one. Build a new client from
    /// the returned credential: the old certificate no longer works.
    pub fn renew(&self, cred: &Credential, state_dir: &Path) -> Result<Credential, EnrollError> {
        let key = NewKey::generate(&format!("appliance-{}", cred.server.appliance_id))?;
        let resp: EnrollmentResponse = self
            .post_json(
                paths::RENEW,
                &RenewRequest {
                    csr_pem: key.csr_pem.clone(),
                },
            )?
            .json()
            .map_err(|e| transport(&self.url(paths::RENEW), format!("malformed answer: {e}")))?;
        let pinned = super::ca_sha256(&cred.ca_pem).unwrap_or_default();
        super::check_ca(&resp.ca_pem, &pinned)?;
        let mut next = cred.clone();
        next.replace_identity(state_dir, &key.key_pem, &resp.certificate_pem)?;
        Ok(next)
    }
}
