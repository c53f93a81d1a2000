//! Levee's one S3 client, shared by the appliance's direct S3 targets
//! (`levee_agent::replicate::s3`) and the offsite store's S3 backend
//! (`levee_provisioner::offsite::s3`): `rusty-s3` signs the requests
//! (presigned SigV4 URLs; why rusty-s3: the workspace's Cargo.toml) and
//! the caller's blocking reqwest client sends them, so each user keeps its
//! own TLS settings, time limits and (the agent) throttled bodies.
//!
//! Credentials come only from [`Settings`]: nothing here reads `AWS_*`
//! variables, profiles or the instance-metadata address. The answers
//! Levee reads itself (errors, `ListParts`, bucket settings) are parsed by
//! the parent module `levee_proto::s3`, which is pure and always built;
//! this client is the `s3-client` feature, so crates that need no S3
//! (the PXE server, the image builder) do not link reqwest through proto.

use std::io::Read;
use std::time::Duration;

use super::{self as wire, S3Url};
use rusty_s3::{Credentials, S3Action, UrlStyle};

/// How long a signed request stays valid (it is sent at once).
pub const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// S3's smallest part of a multipart upload, but the last.
pub const MIN_PART: u64 = 5 << 20;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The server did not answer, or answered 5xx: try later or elsewhere.
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered no (4xx, or an error in a 200's body).
    #[error("{url}: the S3 server answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        /// S3's error code (`NoSuchUpload`, `AccessDenied`...), if any.
        code: String,
        message: String,
    },
    #[error("the S3 server's answer is malformed: {0}")]
    Malformed(String),
    /// The settings are wrong (named in the message).
    #[error("{0}")]
    Settings(String),
}

impl S3Error {
    /// A refusal with this HTTP status.
    pub fn is_status(&self, want: u16) -> bool {
        matches!(self, S3Error::Refused { status, .. } if *status == want)
    }
}

/// Where and as whom: a bucket location and its keys.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    /// `s3://bucket[/prefix]`.
    pub url: &'a str,
    /// An own endpoint (MinIO, Ceph, s3s...; path-style); `None`: AWS
    /// (`https://s3.<region>.amazonaws.com`, virtual-hosted buckets).
    pub endpoint: Option<&'a str>,
    /// Default `us-east-1`.
    pub region: Option<&'a str>,
    pub access_key_id: Option<&'a str>,
    pub secret_access_key: Option<&'a str>,
    /// The only CA trusted for the endpoint, when given.
    pub ca_file: Option<&'a str>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// Unix seconds, when the server says.
    pub modified: Option<i64>,
}

pub struct Client {
    http: reqwest::blocking::Client,
    bucket: rusty_s3::Bucket,
    creds: Credentials,
    loc: S3Url,
}

/// A signed URL without its signature, for messages and logs.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// A transport failure with its causes (reqwest's own message is generic:
/// "error sending request"; refused, reset or timed out is in its sources).
pub fn transport(url: &str, e: impl std::error::Error) -> S3Error {
    S3Error::Transport {
        url: url.to_string(),
        reason: crate::error_chain(&e),
    }
}

impl Client {
    /// A client for `s` sending on a client built from `http` (the
    /// caller's defaults: time limits, user agent, no proxy).
    pub fn new(
        s: &Settings<'_>,
        http: reqwest::blocking::ClientBuilder,
    ) -> Result<Client, S3Error> {
        let bad = S3Error::Settings;
        let loc = S3Url::parse(s.url).map_err(|e| bad(e.to_string()))?;
        let region = s.region.unwrap_or("us-east-1").to_string();
        let (endpoint, style) = match s.endpoint {
            // Own endpoints rarely have a DNS name per bucket: path style.
            Some(e) => (e.to_string(), UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint =
            url::Url::parse(&endpoint).map_err(|e| bad(format!("endpoint {endpoint:?}: {e}")))?;
        let bucket = rusty_s3::Bucket::new(endpoint, style, loc.bucket.clone(), region)
            .map_err(|e| bad(format!("endpoint: {e}")))?;
        let (Some(key), Some(secret)) = (s.access_key_id, s.secret_access_key) else {
            return Err(bad(
                "access_key_id and secret_access_key are required".into()
            ));
        };
        let mut builder = http.use_rustls_tls();
        if let Some(ca) = s.ca_file {
            let pem = std::fs::read(ca).map_err(|e| bad(format!("ca_file {ca}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("ca_file {ca}: {e}")))?;
            if certs.is_empty() {
                return Err(bad(format!("ca_file {ca}: no certificate in it")));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(Client {
            http,
            bucket,
            creds: Credentials::new(key, secret),
            loc,
        })
    }

    /// The bucket and prefix.
    pub fn location(&self) -> &S3Url {
        &self.loc
    }

    /// Sends a signed request, with a body and that body's time limit;
    /// 5xx and transport failures are [`S3Error::Transport`], other
    /// refusals [`S3Error::Refused`] with S3's code and message.
    pub fn send(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Option<(reqwest::blocking::Body, Duration)>,
    ) -> Result<reqwest::blocking::Response, S3Error> {
        let shown = redact(&url);
        let mut req = self.http.request(method, url.as_str());
        if let Some((b, timeout)) = body {
            req = req.timeout(timeout).body(b);
        }
        let resp = req.send().map_err(|e| transport(&shown, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let code = wire::error_code(&text).unwrap_or("").to_string();
        let message = wire::xml_value(&text, "Message").unwrap_or("");
        let message = format!("{code} {message}").trim().to_string();
        if status >= 500 {
            return Err(S3Error::Transport {
                url: shown,
                reason: format!("{status}: {message}"),
            });
        }
        Err(S3Error::Refused {
            url: shown,
            status,
            code,
            message,
        })
    }

    fn text(&self, method: reqwest::Method, url: url::Url) -> Result<String, S3Error> {
        let shown = redact(&url);
        self.send(method, url, None)?
            .text()
            .map_err(|e| transport(&shown, e))
    }

    /// A bucket setting (`versioning`, `object-lock`...) as XML; `None`
    /// when it is not configured (404) or the server does not know it (501).
    pub fn bucket_setting(&self, param: &str) -> Result<Option<String>, S3Error> {
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            self.bucket.base_url().clone(),
            self.creds.key(),
            self.creds.secret(),
            None,
            self.bucket.region(),
            SIGNED_FOR.as_secs(),
            std::iter::once((param, "")),
            std::iter::empty(),
        );
        match self.text(reqwest::Method::GET, url) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.is_status(404) => Ok(None),
            Err(S3Error::Transport { reason, .. }) if reason.starts_with("501") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object whose key starts with `prefix` (all pages).
    pub fn list(&self, prefix: &str) -> Result<Vec<Object>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.creds));
            action.with_prefix(prefix.to_string());
            if let Some(t) = token.take() {
                action.with_continuation_token(t);
            }
            let url = action.sign(SIGNED_FOR);
            let shown = redact(&url);
            let text = self.text(reqwest::Method::GET, url)?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| S3Error::Malformed(format!("{shown}: {e}")))?;
            for o in page.contents {
                let modified = o
                    .last_modified
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_second());
                out.push(Object {
                    key: o.key,
                    size: o.size.unwrap_or(0),
                    modified,
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// An object's size; `None`: no such object.
    pub fn head(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(reqwest::Method::HEAD, url, None) {
            Ok(r) => Ok(Some(
                r.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.is_status(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An object's body, to read as it arrives; `None`: no such object.
    pub fn get(&self, key: &str) -> Result<Option<reqwest::blocking::Response>, S3Error> {
        let url = self
            .bucket
            .get_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(reqwest::Method::GET, url, None) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_status(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A whole object; `None`: no such object.
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        let Some(mut r) = self.get(key)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| transport(key, e))?;
        Ok(Some(out))
    }

    /// Writes an object in one request.
    pub fn put(
        &self,
        key: &str,
        body: reqwest::blocking::Body,
        timeout: Duration,
    ) -> Result<(), S3Error> {
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        self.send(reqwest::Method::PUT, url, Some((body, timeout)))
            .map(drop)
    }

    /// Deletes an object (gone already counts as done).
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .delete_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(reqwest::Method::DELETE, url, None) {
            Err(e) if e.is_status(404) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Starts a multipart upload; its id.
    pub fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        let shown = redact(&url);
        let text = self.text(reqwest::Method::POST, url)?;
        let r = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| S3Error::Malformed(format!("{shown}: {e}")))?;
        Ok(r.upload_id().to_string())
    }

    /// Sends part `n` (from 1) of upload `id`; its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        n: u16,
        id: &str,
        body: reqwest::blocking::Body,
        timeout: Duration,
    ) -> Result<String, S3Error> {
        let url = self
            .bucket
            .upload_part(Some(&self.creds), key, n, id)
            .sign(SIGNED_FOR);
        let resp = self.send(reqwest::Method::PUT, url, Some((body, timeout)))?;
        resp.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| S3Error::Malformed(format!("{key}: part {n} has no ETag")))
    }

    /// Completes upload `id` from its parts' ETags, in order; `body`
    /// makes the request body (and its time limit) of the XML, so the
    /// agent counts and throttles it like every other byte it sends. S3
    /// may answer 200 with an error in the body: that is a refusal too
    /// (with its code, e.g. `NoSuchUpload`).
    pub fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        etags: &[&str],
        body: &dyn Fn(Vec<u8>) -> (reqwest::blocking::Body, Duration),
    ) -> Result<(), S3Error> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            id,
            etags.iter().copied(),
        );
        let url = action.sign(SIGNED_FOR);
        let shown = redact(&url);
        let resp = self.send(
            reqwest::Method::POST,
            url,
            Some(body(action.body().into_bytes())),
        )?;
        let text = resp.text().map_err(|e| transport(&shown, e))?;
        if let Some(code) = wire::error_code(&text) {
            return Err(S3Error::Refused {
                url: shown,
                status: 200,
                code: code.to_string(),
                message: code.to_string(),
            });
        }
        Ok(())
    }

    /// Drops upload `id` and its parts (unknown counts as done).
    pub fn abort_multipart(&self, key: &str, id: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), key, id)
            .sign(SIGNED_FOR);
        match self.send(reqwest::Method::DELETE, url, None) {
            Err(e) if e.is_status(404) => Ok(()),
            r => r.map(drop),
        }
    }

    /// The parts upload `id` holds; `None` when the server no longer
    /// knows the upload.
    pub fn list_parts(&self, key: &str, id: &str) -> Result<Option<Vec<wire::Part>>, S3Error> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let mut action = self.bucket.list_parts(Some(&self.creds), key, id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGNED_FOR);
            let text = match self.text(reqwest::Method::GET, url) {
                Ok(t) => t,
                Err(e) if e.is_status(404) => return Ok(None),
                Err(e) => return Err(e),
            };
            let (parts, next) = wire::list_parts(&text);
            out.extend(parts);
            match next {
                Some(m) if m > marker.unwrap_or(0) => marker = Some(m),
                _ => return Ok(Some(out)),
            }
        }
    }
}
