//! What the end-to-end tests share: starting the real `tally` binary on a
//! free loopback port, a small HTTP client, and finding real tools.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tansu and noida-db, the foreign Kafka brokers of the collector's tests.
pub mod collector;
pub mod peers;

/// A free port on 127.0.0.1 (bound, read, released).
///
/// Taken below the kernel's ephemeral range (32768 on), so that the source
/// port of some test's outgoing connection cannot take it between this
/// check and the server's bind (tests open thousands of connections), and
/// from a per-process sequence, so that parallel tests never pick the same.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let offset = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {FIRST} and {}",
        FIRST + SPAN
    );
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
        Agent::start_at(addr, data_dir, extra)
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

/// POSTs `batch` (a JSON array that opens with a hello) to the agent's
/// ingest; returns status and body.
pub fn post_ingest(addr: SocketAddr, batch: &serde_json::Value) -> (u16, String) {
    request(
        addr,
        "POST",
        "/api/v1/ingest",
        None,
        Some(&batch.to_string()),
    )
    .expect("the agent answers the ingest POST")
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

/// `promtool check metrics` over an exposition (when promtool is there; under
/// CI=true its absence fails the test): the text must be valid for Prometheus.
pub fn promtool_check_metrics(text: &str) {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// How long one run of a real client may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The real-client scripts and their npm packages (`tests/compat`).
pub fn client_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("compat")
}

/// The last 4000 bytes of `s` (on a char boundary): enough of a log to see
/// why something failed without burying the assertion.
pub fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// A running `tally broker` on a free loopback port, its data folder and log
/// in a folder of its own; killed when dropped. It can be killed with
/// SIGKILL and restarted on the same port and data folder.
pub struct Broker {
    child: Option<Child>,
    addr: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `tally broker` with `extra` flags and no agent to report to
    /// (the data path alone), and waits until it accepts connections.
    pub fn start(extra: &[&str]) -> Broker {
        Broker::with_flags(
            &[
                "--no-metrics",
                "--agent",
                "",
                Self::QUICK[0],
                Self::QUICK[1],
            ],
            extra,
        )
    }

    /// The flags every test broker gets (unless started with exactly its
    /// own): groups start at once, without Kafka's initial rebalance delay,
    /// so that a test's first join does not wait 3 s.
    const QUICK: [&'static str; 2] = ["--group-initial-rebalance-delay", "0s"];

    /// Starts `tally broker` with `extra` flags, reporting to the agent at
    /// `agent`, and waits until it accepts connections.
    pub fn reporting_to(agent: SocketAddr, extra: &[&str]) -> Broker {
        let ingest = format!("ws://{agent}/api/v1/ingest");
        let flags: Vec<&str> = ["--no-metrics", "--agent", &ingest]
            .into_iter()
            .chain(Self::QUICK)
            .collect();
        Broker::with_flags(&flags, extra)
    }

    /// Starts `tally broker` with exactly `flags` (the agent and how to
    /// reach it among them), and waits until it accepts connections.
    pub fn start_with(flags: &[&str]) -> Broker {
        Broker::with_flags(flags, &[])
    }

    fn with_flags(flags: &[&str], extra: &[&str]) -> Broker {
        let mut broker = Broker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            args: flags.iter().chain(extra).map(|s| (*s).to_owned()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        broker.restart();
        broker
    }

    /// Starts the process again (kill -9 first, if it runs) on the same port
    /// and data folder, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill9();
        // Appended: a restarted broker's log follows the killed one's.
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = tally()
            .args(["broker", "--listen", &self.addr, "--data-dir"])
            .arg(self.data_dir())
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tally broker");
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("broker exited with {status}: {}", self.log());
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not listening within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The process id of the running broker (to send it a signal).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Where the broker listens, `127.0.0.1:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Where the broker listens.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().unwrap()
    }

    /// The broker's temporary folder (its data folder and log are in it):
    /// other files of the test put here are removed with it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// What the broker logged so far, over all its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A connection the broker closed or a request it refused means a
    /// client met something it did not expect: no WARN or ERROR line.
    pub fn assert_quiet(&self) {
        let log = self.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        assert!(
            warnings.is_empty(),
            "the broker logged {} warnings:\n{}",
            warnings.len(),
            warnings.join("\n")
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one run of a client printed.
pub struct ClientRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// The JSON result on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "the client printed no JSON result ({e}); exit {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                tail(&self.stderr)
            )
        })
    }

    /// Fails, with what the client and `broker` said, unless the run exited 0.
    pub fn assert_success(&self, what: &str, broker: &Broker) {
        assert!(
            self.status.success(),
            "{what} exited with {}: {}\nbroker log:\n{}",
            self.status,
            tail(&self.stderr),
            tail(&broker.log())
        );
    }

    /// The JSON result of a run that must have exited 0 with an empty list
    /// of `mismatches`; fails with everything the client and `broker` said.
    pub fn accept(&self, what: &str, broker: &Broker) -> serde_json::Value {
        let result = self.json();
        let mismatches = result["mismatches"].as_array().cloned().unwrap_or_default();
        assert!(
            self.status.success() && mismatches.is_empty(),
            "{what} exited with {} and found {} mismatches:\n{}\n\nclient stderr:\n{}\n\nbroker log:\n{}",
            self.status,
            mismatches.len(),
            mismatches
                .iter()
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join("\n"),
            tail(&self.stderr),
            tail(&broker.log())
        );
        result
    }
}

/// Runs a client script with `stdin` (JSON) as its input, killed after
/// [`CLIENT_TIMEOUT`]; its JSON result, failing with everything it and `broker`
/// said when it exited with an error or listed mismatches.
pub fn client_result(
    what: &str,
    cmd: &mut Command,
    stdin: &serde_json::Value,
    broker: &Broker,
) -> serde_json::Value {
    run(cmd, stdin.to_string().as_bytes(), CLIENT_TIMEOUT).accept(what, broker)
}

/// Runs `cmd` with `stdin` as its input to its end, killing it (and failing)
/// after `timeout`.
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> ClientRun {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr:\n{}",
                tail(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    ClientRun {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The Python with the Kafka clients of `tests/compat/requirements.txt`
/// (`TALLY_PYTHON`, else `.venv`), looked for once; None (skip) where it is
/// missing, except under CI=true, where that fails.
pub fn python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let path = std::env::var_os("TALLY_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(".venv")
                        .join("bin")
                        .join("python")
                });
            let installed = Command::new(&path)
                .args([
                    "-c",
                    "import confluent_kafka, kafka, lz4, snappy, zstandard",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let what = format!(
                "a Python with the Kafka clients of tests/compat/requirements.txt ({})",
                path.display()
            );
            require_installed(&what, installed).then_some(path)
        })
        .clone()
}

/// Node with kafkajs installed in `tests/compat/node_modules`; None (skip)
/// where either is missing, except under CI=true, where that fails.
pub fn node() -> Option<PathBuf> {
    let node = require_tool("node")?;
    let kafkajs = client_scripts().join("node_modules/kafkajs/package.json");
    require_installed("kafkajs (npm ci in tests/compat)", kafkajs.is_file()).then_some(node)
}

/// Debian's `kcat` with Debian's librdkafka: under `cargo test` the
/// LD_LIBRARY_PATH cargo sets leads to the demo's source-built librdkafka
/// (rdkafka-sys, built without zlib), which refuses `-z gzip`.
pub fn kcat() -> Command {
    let mut cmd = Command::new("kcat");
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

/// A WebSocket to the agent (ingest or stream).
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one wire message as a text frame.
pub async fn ws_send(ws: &mut Socket, msg: &serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        msg.to_string().into(),
    ))
    .await
    .unwrap();
}

/// The next text frame, as JSON (20 s at most).
pub async fn ws_recv(ws: &mut Socket) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a reply within 20 s")
            .expect("connection open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// A bucket of 1 s width a minute in the past: closed, inside the window.
pub fn past_bucket() -> i64 {
    (now_ms() - 60_000) / 1000 * 1000
}

/// The sum of the series `name` in a Prometheus text exposition whose labels
/// include every pair of `labels` (None when there is no such series).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .reduce(|a, b| a + b)
}
