//! SMB shares through `smb2` (pure Rust, SMB 2/3).
//!
//! Why `smb2` over `pavao` (libsmbclient), from measurements against Samba
//! 4.17 on loopback (docs/REPOSITORY.md has the table): equal walk and read
//! speed, but `smb2` gives 100 ns timestamps (pavao truncates to seconds,
//! which weakens the unchanged-file test), file ids from directory listings,
//! typed errors (a locked file is `SharingViolation`, a wrong password is
//! `AuthRequired`), concurrent reads over one session (pavao serialises every
//! call behind one process-wide lock), and no C library with ~113 shared
//! objects in the appliance image. Its gaps and what we do about them:
//! - no security-descriptor (ACL) call: [`security`] sends the CREATE +
//!   QUERY_INFO/SET_INFO(security) + CLOSE compounds itself; the raw
//!   descriptor is kept in the snapshot and written back by an SMB restore
//!   target (`target::smb`);
//! - 0.39 does not advertise the encryption capability, so shares (or
//!   servers) with `smb encrypt = required` refused it: the workspace uses
//!   a vendored copy with that one bit set (`third_party/smb2`, see its
//!   LEVEE-PATCH.md), and such shares are then encrypted end to end (AES-GCM
//!   or CCM, whichever the server picks);
//! - single-maintainer 0.x crate: kept behind the [`Source`] trait.

use std::io::Read;
use std::sync::Arc;

use levee_proto::repo::NodeKind;
use smb2::{ClientConfig, ErrorKind, FileDownload, ListOptions, SmbClient, Tree};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

use super::{Source, SourceEntry, SourceError};

pub mod security;

/// Windows FILETIME epoch (1601) to Unix epoch, in 100 ns ticks.
const EPOCH_DIFF_TICKS: i64 = 116_444_736_000_000_000;
pub const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;

pub fn filetime_to_ns(t: u64) -> i64 {
    if t == 0 {
        return 0;
    }
    (t as i64 - EPOCH_DIFF_TICKS).saturating_mul(100)
}

pub fn ns_to_filetime(ns: i64) -> u64 {
    (ns / 100 + EPOCH_DIFF_TICKS).max(0) as u64
}

/// The URL form is shared with the server's configuration validation.
pub use levee_proto::config::SmbUrl;

fn parse_url(spec: &str) -> Result<SmbUrl, SourceError> {
    SmbUrl::parse(spec).map_err(|e| SourceError::Invalid(spec.into(), e))
}

pub fn map_err(path: &str, e: smb2::Error) -> SourceError {
    match e.kind() {
        ErrorKind::SharingViolation => SourceError::Locked(path.into()),
        ErrorKind::AccessDenied => SourceError::AccessDenied(path.into()),
        ErrorKind::NotFound => SourceError::NotFound(path.into()),
        _ => SourceError::Smb(format!("{path}: {e}")),
    }
}

/// One authenticated session on one share, usable from blocking code.
pub struct SmbConn {
    pub rt: Arc<Runtime>,
    pub client: Mutex<SmbClient>,
    pub tree: Tree,
    pub url: SmbUrl,
}

impl SmbConn {
    pub fn connect(spec: &str, password: Option<&str>) -> Result<Self, SourceError> {
        let url = parse_url(spec)?;
        let password = match password {
            Some(p) => p.to_string(),
            None => std::env::var("LEVEE_SMB_PASSWORD").unwrap_or_default(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| SourceError::Smb(format!("runtime: {e}")))?;
        let cfg = ClientConfig {
            addr: format!("{}:{}", url.host, url.port),
            username: url.user.clone(),
            password,
            auto_reconnect: true,
            ..Default::default()
        };
        let (client, tree) = rt
            .block_on(async {
                let mut c = SmbClient::connect(cfg).await?;
                let t = c.connect_share(&url.share).await?;
                Ok::<_, smb2::Error>((c, t))
            })
            .map_err(|e| {
                let hint = match e.kind() {
                    ErrorKind::AuthRequired => " (wrong user or password?)",
                    _ => "",
                };
                SourceError::Smb(format!("connecting to {}: {e}{hint}", url))
            })?;
        Ok(Self {
            rt: Arc::new(rt),
            client: Mutex::new(client),
            tree,
            url,
        })
    }

    /// The share-relative path of a source-relative one.
    pub fn full(&self, rel: &str) -> String {
        match (self.url.path.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.url.path.clone(),
            (false, false) => format!("{}/{rel}", self.url.path),
        }
    }
}

impl SmbConn {
    /// The raw Windows security descriptor (owner, group, DACL) of a
    /// share-relative path.
    pub async fn security_descriptor(
        client: &SmbClient,
        tree: &Tree,
        path: &str,
    ) -> Result<Vec<u8>, smb2::Error> {
        security::query(client, tree, path).await
    }
}

pub struct SmbSource {
    conn: SmbConn,
}

impl SmbSource {
    pub fn connect(spec: &str, password: Option<&str>) -> Result<Self, SourceError> {
        Ok(Self {
            conn: SmbConn::connect(spec, password)?,
        })
    }
}

// Mirrors the listing's fields one to one; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn entry(
    name: String,
    is_dir: bool,
    size: u64,
    created: u64,
    modified: u64,
    accessed: u64,
    changed: u64,
    attributes: u32,
    file_id: u64,
) -> SourceEntry {
    SourceEntry {
        name,
        kind: if is_dir {
            NodeKind::Dir
        } else {
            NodeKind::File
        },
        size: if is_dir { 0 } else { size },
        mode: 0,
        mtime_ns: filetime_to_ns(modified),
        atime_ns: filetime_to_ns(accessed),
        ctime_ns: filetime_to_ns(changed),
        btime_ns: filetime_to_ns(created),
        attributes,
        file_id,
        uid: 0,
        gid: 0,
        link_target: None,
        security_descriptor: None,
    }
}

impl Source for SmbSource {
    fn root(&self) -> Result<SourceEntry, SourceError> {
        let c = &self.conn;
        let path = c.full("");
        let info =
            c.rt.block_on(async {
                let mut client = c.client.lock().await;
                let mut tree = c.tree.clone();
                client.stat(&mut tree, &path).await
            })
            .map_err(|e| map_err(&path, e))?;
        let name = if c.url.path.is_empty() {
            c.url.share.clone()
        } else {
            c.url.path.rsplit('/').next().unwrap_or("root").to_string()
        };
        Ok(entry(
            name,
            info.is_directory,
            info.size,
            info.created.0,
            info.modified.0,
            info.accessed.0,
            info.changed.0,
            info.attributes.0,
            0,
        ))
    }

    fn list(&self, dir: &str) -> Result<Vec<SourceEntry>, SourceError> {
        let c = &self.conn;
        let path = c.full(dir);
        let (entries, sds) =
            c.rt.block_on(async {
                let mut client = c.client.lock().await;
                let mut tree = c.tree.clone();
                let entries = client
                    .list_directory_with(&mut tree, &path, ListOptions::new().index_numbers(true))
                    .await?;
                // Security descriptors, one compound per entry; a refusal
                // (no READ_CONTROL) leaves that entry without one.
                let mut sds = Vec::with_capacity(entries.len());
                for e in &entries {
                    let p = if path.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{path}/{}", e.name)
                    };
                    let sd = SmbConn::security_descriptor(&client, &c.tree, &p).await;
                    if let Err(err) = &sd {
                        tracing::debug!(path = %p, "no security descriptor: {err}");
                    }
                    sds.push(sd.ok());
                }
                Ok::<_, smb2::Error>((entries, sds))
            })
            .map_err(|e| map_err(&path, e))?;
        Ok(entries
            .into_iter()
            .zip(sds)
            .filter(|(e, _)| e.name != "." && e.name != "..")
            // Junctions and symlinks are listed, never followed: a walk into
            // one could loop or back up another volume.
            .filter(|(e, _)| !e.is_link())
            .map(|(e, sd)| {
                let mut s = entry(
                    e.name,
                    e.is_directory,
                    e.size,
                    e.created.0,
                    e.modified.0,
                    0,
                    e.changed.0,
                    e.attributes.0,
                    e.index_number.unwrap_or(0),
                );
                s.security_descriptor = sd;
                s
            })
            .collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let c = &self.conn;
        let full = c.full(path);
        let dl =
            c.rt.block_on(async {
                let mut client = c.client.lock().await;
                client.open_file_download(&c.tree, &full).await
            })
            .map_err(|e| map_err(&full, e))?;
        Ok(Box::new(SmbReader {
            rt: c.rt.clone(),
            dl,
            buf: Vec::new(),
            pos: 0,
            path: full,
        }))
    }

    fn parallelism(&self) -> usize {
        // Reads overlap network latency; more than the cores is worth it.
        4
    }

    fn describe(&self) -> String {
        self.conn.url.to_string()
    }
}

struct SmbReader {
    rt: Arc<Runtime>,
    dl: FileDownload<'static>,
    buf: Vec<u8>,
    pos: usize,
    path: String,
}

impl Read for SmbReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buf.len() {
            match self.rt.block_on(self.dl.next_chunk()) {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(format!("{}: {e}", self.path))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url() {
        let u = SmbUrl::parse("smb://root@127.0.0.1:1445/share/a/b/").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.host.as_str(),
                u.port,
                u.share.as_str(),
                u.path.as_str()
            ),
            ("root", "127.0.0.1", 1445, "share", "a/b")
        );
        assert!(SmbUrl::parse("smb://u:pw@h/s").is_err());
        assert_eq!(
            filetime_to_ns(ns_to_filetime(1_700_000_000_123_456_700)),
            1_700_000_000_123_456_700
        );
    }
}
