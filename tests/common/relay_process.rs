//! `pluresdb relay` in its own process (so a test can SIGKILL it and read
//! its RSS), and a TCP load balancer in front of relays. Shared by the
//! relay tests and `benches/relay_cluster.rs`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub struct RelayProcess {
    child: Child,
    pub address: SocketAddr,
    /// `ws://…/relay`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// `pluresdb relay --port 0` with its backlog in SQLite in a temporary
    /// directory, and `flags`.
    pub fn on_sqlite(flags: &[&str]) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let backlog = dir.path().join("relay.db").display().to_string();
        Self::spawn(dir, &["--relay-backlog", &backlog], flags)
    }

    /// `pluresdb relay --port 0 --redis <redis_url>`, and `flags`.
    pub fn on_redis(redis_url: &str, flags: &[&str]) -> RelayProcess {
        Self::spawn(tempfile::tempdir().unwrap(), &["--redis", redis_url], flags)
    }

    fn spawn(dir: tempfile::TempDir, backend: &[&str], flags: &[&str]) -> RelayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pluresdb"))
            .args(["relay", "--port", "0"])
            .args(backend)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address: SocketAddr = line
            .trim()
            .strip_prefix("PluresDB relay listening on ws://")
            .and_then(|rest| rest.strip_suffix("/relay"))
            .unwrap_or_else(|| panic!("unexpected relay output: {line:?}"))
            .parse()
            .unwrap();
        RelayProcess {
            child,
            address,
            url: format!("ws://{address}/relay"),
            _dir: dir,
        }
    }

    /// `VmRSS` (current) or `VmHWM` (peak) in bytes.
    pub fn memory(&self, field: &str) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field}"));
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and wait for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP load balancer on loopback: each connection goes to the first of
/// `backends` that accepts it.
pub async fn balancer(backends: Arc<Mutex<Vec<SocketAddr>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let candidates = backends.lock().unwrap().clone();
            tokio::spawn(async move {
                for backend in candidates {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    address
}
