//! Restoring onto an SMB share: contents, the four Windows times and the
//! attributes (Hidden, Read-only, Archive, ...), set on the writer's own
//! handle so the server's close does not stamp its own time over them; then
//! the security descriptor (owner, group, DACL) the backup kept. A
//! descriptor the server refuses is a warning, never an error: the data is
//! restored either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use levee_proto::repo::Node;
use smb2::pack::FileTime;
use smb2::{ErrorKind, FileAttributes, FileTimes, FileWriter};

use super::{FileSink, Target, TargetError, TargetReport};
use crate::backup::source::smb::security::{self, Restored};
use crate::backup::source::smb::{
    filetime_to_ns, ns_to_filetime, SmbConn, FILE_ATTRIBUTE_DIRECTORY,
};

pub struct SmbTarget {
    conn: Arc<SmbConn>,
    acls: Arc<AclLog>,
}

/// Descriptors written back, and what could not be, shared by all sinks.
#[derive(Default)]
struct AclLog {
    restored: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

impl AclLog {
    fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        if let Ok(mut w) = self.warnings.lock() {
            w.push(msg);
        }
    }
}

/// Writes `node`'s descriptor back onto `full`, if the backup has one.
async fn apply_descriptor(conn: &SmbConn, acls: &AclLog, full: &str, node: &Node) {
    let Some(hex_sd) = &node.security_descriptor else {
        return;
    };
    let sd = match hex::decode(hex_sd) {
        Ok(sd) => sd,
        Err(e) => {
            acls.warn(format!(
                "{full}: security descriptor not restored: stored one is damaged ({e})"
            ));
            return;
        }
    };
    let client = conn.client.lock().await;
    match security::restore(&client, &conn.tree, full, &sd).await {
        Ok(Restored::Full) => {
            acls.restored.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Restored::DaclOnly(why)) => {
            acls.restored.fetch_add(1, Ordering::Relaxed);
            acls.warn(format!(
                "{full}: owner and group not restored, the server refused them ({why}); permissions (DACL) restored"
            ));
        }
        Err(e) => acls.warn(format!("{full}: security descriptor not restored: {e}")),
    }
}

impl SmbTarget {
    pub fn connect(spec: &str, password: Option<&str>) -> Result<Self, TargetError> {
        let conn = SmbConn::connect(spec, password).map_err(|e| TargetError::Smb(e.to_string()))?;
        let t = Self {
            conn: Arc::new(conn),
            acls: Arc::default(),
        };
        if !t.conn.url.path.is_empty() {
            // Create the target directory chain.
            let mut acc = String::new();
            for part in t.conn.url.path.clone().split('/') {
                acc = if acc.is_empty() {
                    part.to_string()
                } else {
                    format!("{acc}/{part}")
                };
                t.mkdir_full(&acc)?;
            }
        }
        Ok(t)
    }

    fn mkdir_full(&self, full: &str) -> Result<(), TargetError> {
        let c = &self.conn;
        match c
            .rt
            .block_on(async { c.client.lock().await.create_directory(&c.tree, full).await })
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(TargetError::Smb(format!("{full}: {e}"))),
        }
    }
}

/// What a share keeps of a time `ns` [`times`] sets: FILETIME's 100 ns
/// steps.
fn kept_mtime(ns: i64) -> i64 {
    filetime_to_ns(ns_to_filetime(ns))
}

fn times(node: &Node, dir: bool) -> FileTimes {
    let ft = |ns: i64| FileTime(ns_to_filetime(ns));
    let mut t = FileTimes::new().set_modified(ft(node.mtime_ns));
    if node.btime_ns != 0 {
        t = t.set_created(ft(node.btime_ns));
    }
    if node.atime_ns != 0 {
        t = t.set_accessed(ft(node.atime_ns));
    }
    let attrs = node.attributes & !if dir { 0 } else { FILE_ATTRIBUTE_DIRECTORY };
    if node.attributes != 0 {
        t = t.set_attributes(FileAttributes(attrs));
    }
    t
}

struct SmbSink {
    conn: Arc<SmbConn>,
    acls: Arc<AclLog>,
    w: Option<FileWriter>,
    path: String,
}

impl SmbSink {
    fn w(&mut self) -> Result<&mut FileWriter, TargetError> {
        self.w
            .as_mut()
            .ok_or_else(|| TargetError::Smb(format!("{}: writer closed", self.path)))
    }
}

impl FileSink for SmbSink {
    fn write(&mut self, data: &[u8]) -> Result<(), TargetError> {
        let rt = self.conn.rt.clone();
        let path = self.path.clone();
        let w = self.w()?;
        rt.block_on(w.write_chunk(data))
            .map_err(|e| TargetError::Smb(format!("{path}: {e}")))
    }
    fn zeros(&mut self, mut n: u64) -> Result<(), TargetError> {
        let z = vec![0u8; 1024 * 1024];
        while n > 0 {
            let k = n.min(z.len() as u64) as usize;
            self.write(&z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>, node: &Node) -> Result<(), TargetError> {
        let mut w = self
            .w
            .take()
            .ok_or_else(|| TargetError::Smb(format!("{}: writer closed", self.path)))?;
        let path = self.path.clone();
        self.conn
            .rt
            .block_on(async {
                w.set_times(times(node, false)).await?;
                w.finish().await?;
                // Through a handle of its own after the close: the writer's was
                // not opened with WRITE_DAC | WRITE_OWNER.
                apply_descriptor(&self.conn, &self.acls, &path, node).await;
                Ok(())
            })
            .map_err(|e: smb2::Error| TargetError::Smb(format!("{path}: {e}")))
    }
}

impl Target for SmbTarget {
    fn mkdir(&self, path: &str) -> Result<(), TargetError> {
        self.mkdir_full(&self.conn.full(path))
    }
    fn kept_mtime(&self, ns: i64) -> i64 {
        kept_mtime(ns)
    }
    fn existing(&self, path: &str) -> Option<(u64, i64)> {
        let c = &self.conn;
        let full = c.full(path);
        let info =
            c.rt.block_on(async {
                let mut tree = c.tree.clone();
                c.client.lock().await.stat(&mut tree, &full).await
            })
            .ok()?;
        Some((
            info.size,
            crate::backup::source::smb::filetime_to_ns(info.modified.0),
        ))
    }
    fn create(&self, path: &str, _size: u64) -> Result<Box<dyn FileSink>, TargetError> {
        let c = &self.conn;
        let full = c.full(path);
        let w =
            c.rt.block_on(async {
                c.client
                    .lock()
                    .await
                    .create_file_writer(&c.tree, &full)
                    .await
            })
            .map_err(|e| TargetError::Smb(format!("{full}: {e}")))?;
        Ok(Box::new(SmbSink {
            conn: self.conn.clone(),
            acls: self.acls.clone(),
            w: Some(w),
            path: full,
        }))
    }
    fn symlink(&self, path: &str, _node: &Node) -> Result<(), TargetError> {
        Err(TargetError::Smb(format!(
            "{path}: symbolic links cannot be restored onto SMB"
        )))
    }
    fn set_dir_meta(&self, path: &str, node: &Node) -> Result<(), TargetError> {
        let c = &self.conn;
        let full = c.full(path);
        c.rt.block_on(async {
            c.client
                .lock()
                .await
                .set_times(&c.tree, &full, times(node, true))
                .await?;
            apply_descriptor(c, &self.acls, &full, node).await;
            Ok(())
        })
        .map_err(|e: smb2::Error| TargetError::Smb(format!("{full}: {e}")))
    }
    fn parallelism(&self) -> usize {
        4
    }
    fn case_insensitive(&self) -> bool {
        true
    }
    fn report(&self) -> TargetReport {
        TargetReport {
            security_descriptors: self.acls.restored.load(Ordering::Relaxed),
            warnings: self
                .acls
                .warnings
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default(),
            ..TargetReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_time_is_known_again_in_the_shares_steps() {
        // A local source's time has nanoseconds; the share keeps it in
        // 100 ns steps, and `existing` reads that back.
        let ns = 1_767_225_600_123_456_789;
        assert_eq!(kept_mtime(ns), 1_767_225_600_123_456_700);
        assert_eq!(kept_mtime(kept_mtime(ns)), kept_mtime(ns));
        assert_eq!(filetime_to_ns(ns_to_filetime(ns)), kept_mtime(ns));
    }
}
