//! What the end-to-end tests share: starting the real `tally` binary on a
//! free loopback port, a small HTTP client, and finding real tools.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `tally` binary under test.
pub fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// A running `tally agent`; killed with SIGKILL when dropped.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `tally agent` on a free port with `extra` flags, and waits for /readyz.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Agent {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let child = tally()
            .args(["agent", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tally agent");
        let mut agent = Agent {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", self.log());
            }
            if let Ok((200, _)) = try_get(self.addr, "/readyz", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent not ready within 20 s: {}", self.log());
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path`, expecting 200, as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.addr, path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        let (status, body) = get(self.addr, "/metrics", None);
        assert_eq!(status, 200);
        body
    }

    /// kill -9.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Polls `f` until it returns Some, for up to `secs` seconds.
    pub fn until<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&Agent) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b.as_bytes())?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn try_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, token, None)
}

pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    try_get(addr, path, token).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A real tool the test needs. Under CI=true a missing tool fails the test;
/// elsewhere the test is skipped with a message (returns None).
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{name} is required under CI=true but is not installed (scripts/test installs it)"
            );
        }
        eprintln!("SKIPPED: {name} is not installed; run scripts/test to install it");
    }
    found
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A client the test needs that is not a program on PATH (a Python package
/// in .venv, an npm package): `installed` says whether it was found. Under
/// CI=true a missing one fails the test; elsewhere the test is skipped with a
/// message (returns false).
pub fn require_installed(what: &str, installed: bool) -> bool {
    if !installed {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{what} is required under CI=true but is not installed (scripts/test installs it)"
            );
        }
        eprintln!("SKIPPED: {what} is not installed; run scripts/test to install it");
    }
    installed
}

impl Agent {
    /// Starts `tally agent` on `addr` (say, where a killed one listened, so
    /// that emitters find it again) with `extra` flags, and waits for
    /// /readyz. Its log is appended to the earlier one's.
    pub fn start_at(addr: SocketAddr, data_dir: &Path, extra: &[&str]) -> Agent {
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = tally()
            .args(["agent", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tally agent");
        let mut agent = Agent {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        agent.wait_ready();
        agent
    }
}
