//! A tiny static HTTP/1.1 server for tests, listening inside a test
//! network namespace on its loopback (what a QEMU user-mode guest reaches
//! as 10.0.2.2 when QEMU runs in that namespace). It logs every request.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::net::TestNet;

pub struct FileServer {
    pub port: u16,
    files: Arc<Mutex<BTreeMap<String, PathBuf>>>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl FileServer {
    /// Starts serving (no files yet) on 127.0.0.1 inside `net`.
    pub fn start_in(net: &TestNet) -> anyhow::Result<FileServer> {
        let ns = File::open(Path::new("/run/netns").join(&net.ns))
            .with_context(|| format!("opening the namespace {}", net.ns))?;
        let files: Arc<Mutex<BTreeMap<String, PathBuf>>> = Arc::default();
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let (f, l) = (files.clone(), log.clone());
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we own; it moves only this
            // thread (and the threads it spawns) into the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let listener = match TcpListener::bind("127.0.0.1:0") {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(
                listener
                    .local_addr()
                    .map(|a| a.port())
                    .map_err(|e| e.to_string()),
            );
            for conn in listener.incoming().flatten() {
                let (f, l) = (f.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &f, &l);
                });
            }
        });
        let port = match rx.recv() {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => bail!("test HTTP server: {e}"),
            Err(e) => bail!("test HTTP server: {e}"),
        };
        Ok(FileServer { port, files, log })
    }

    /// Serves `path` at `/name`.
    pub fn add(&self, name: &str, path: &Path) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(name.trim_start_matches('/').to_string(), path.to_path_buf());
        }
    }

    /// The request paths so far, with their times.
    pub fn requests(&self) -> Vec<(Instant, String)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// What the guest uses: `http://10.0.2.2:PORT`.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.port)
    }
}

fn serve(
    conn: TcpStream,
    files: &Mutex<BTreeMap<String, PathBuf>>,
    log: &Mutex<Vec<(Instant, String)>>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    if let Ok(mut l) = log.lock() {
        l.push((Instant::now(), path.clone()));
    }
    let file = files
        .lock()
        .ok()
        .and_then(|f| f.get(path.trim_start_matches('/')).cloned());
    let mut conn = conn;
    Ok(respond_file(&mut conn, file.map(std::fs::read))?)
}

/// Answers a GET with the file read (200) or 404 when there is none or it
/// could not be read; the connection closes after it.
pub fn respond_file(
    conn: &mut impl Write,
    file: Option<std::io::Result<Vec<u8>>>,
) -> std::io::Result<()> {
    match file {
        Some(Ok(data)) => {
            conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                )
                .as_bytes(),
            )?;
            conn.write_all(&data)
        }
        _ => conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}
