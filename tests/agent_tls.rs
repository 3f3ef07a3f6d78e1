//! The agent over HTTPS (DESIGN.md §10): a real `tally agent` with a
//! certificate from a private CA made here (rcgen), reached by the emitter
//! over `wss://`, by the API over `https://` with and without the token, by
//! the dashboard's connection, and by a real `tally broker`; a plain-HTTP
//! client on the TLS port gets no answer; SIGHUP loads a new certificate.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tally_audit::emitter::{Emitter, EmitterConfig};
use tally_audit::{BucketWidth, CountEntry, Tier, TierKind};

const TOKEN: &str = "tls-test-token-3f9a";

/// A private CA and a server certificate it signed for localhost and 127.0.0.1.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("tally test CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "tally agent");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let out = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&out.ca, ca.pem()).unwrap();
    std::fs::write(&out.cert, leaf.pem()).unwrap();
    std::fs::write(&out.key, leaf_key.serialize_pem()).unwrap();
    out
}

/// A `tally agent` that speaks HTTPS; killed when dropped.
struct TlsAgent {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl TlsAgent {
    fn start(dir: &Path, pki: &Pki, extra: &[&str]) -> TlsAgent {
        let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let log = dir.join("agent.log");
        let child = common::tally()
            .args(["agent", "--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.join("agent"))
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .args(extra)
            .env("TALLY_TOKEN", TOKEN)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut agent = TlsAgent { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", agent.log());
            }
            if let Ok((200, _)) = https(addr, "/readyz", None, &pki.ca) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready over https within 20 s: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn until<T>(&self, secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                common::tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TlsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS GET over a fresh connection that trusts `ca` only (SNI
/// localhost); returns status and body.
fn https(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    ca: &Path,
) -> std::io::Result<(u16, String)> {
    let cfg = Arc::new(tally_audit::tls::client_config(Some(ca)).unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with an error
    // after the whole answer; what was read is the answer.
    if let Err(e) = tls.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
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
        let mut out = String::new();
        let mut s = rest;
        while let Some((size, more)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || more.len() < n + 2 {
                break;
            }
            out.push_str(&more[..n]);
            s = &more[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn entry(topic: &str, records: u64) -> CountEntry {
    CountEntry {
        tier: Tier::Produced,
        topic: topic.into(),
        partition: 0,
        bucket: BucketWidth::DEFAULT.bucket_of(common::now_ms()),
        counts: tally_audit::CellCounts {
            records,
            bytes: records * 10,
            no_timestamp: 0,
            expired: 0,
            skipped: 0,
            ..Default::default()
        },
    }
}

#[test]
fn emitter_api_and_dashboard_reach_an_https_agent_and_plain_http_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "a");
    let agent = TlsAgent::start(dir.path(), &pki, &["--tick", "200ms"]);
    let addr = agent.addr;

    // The API over https: the token opens it, its absence or a wrong one gets 401.
    let (status, body) = https(addr, "/api/v1/topics", Some(TOKEN), &pki.ca).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = https(addr, "/api/v1/topics", None, &pki.ca).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(TOKEN), "{body}");
    let (status, _) = https(addr, "/api/v1/topics", Some("tls-test-token-3f9b"), &pki.ca).unwrap();
    assert_eq!(status, 401);
    let (status, metrics) = https(addr, "/metrics", None, &pki.ca).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("tally_agent_ready"), "{metrics}");

    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(
            format!(
                "GET /api/v1/topics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("HTTP/1.") && !text.contains("topics"),
        "a plain-HTTP client got an answer: {text:?}"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The emitter over wss:// with the private CA: its counts are acknowledged.
        let mut cfg = EmitterConfig::new(
            format!("wss://127.0.0.1:{}/api/v1/ingest", addr.port()),
            "tls-emitter",
            "local",
            vec![TierKind::Produced],
            BucketWidth::DEFAULT,
        );
        cfg.token = Some(TOKEN.to_owned());
        cfg.agent_ca = Some(pki.ca.clone());
        let emitter = Emitter::start(cfg);
        emitter.record_count(entry("tls-orders", 42));
        assert!(
            emitter.flush(Duration::from_secs(20)).await,
            "the agent did not acknowledge the counts: {:?}",
            emitter.stats()
        );
        let stats = emitter.stats();
        assert!(stats.connected, "{stats:?}");
        emitter.shutdown().await;

        // Without the private CA (the system's roots) the agent's
        // certificate is not trusted and nothing is acknowledged.
        let mut untrusted = EmitterConfig::new(
            format!("wss://localhost:{}/api/v1/ingest", addr.port()),
            "tls-untrusted",
            "local",
            vec![TierKind::Produced],
            BucketWidth::DEFAULT,
        );
        untrusted.token = Some(TOKEN.to_owned());
        let untrusted = Emitter::start(untrusted);
        untrusted.record_count(entry("tls-untrusted", 1));
        assert!(!untrusted.flush(Duration::from_secs(2)).await);
        let why = untrusted.stats().last_error.unwrap_or_default();
        assert!(
            why.contains("certificate") || why.contains("Certificate") || why.contains("roots"),
            "{why}"
        );
        assert!(!why.contains(TOKEN), "{why}");
        untrusted.shutdown().await;

        // The dashboard's connection over https:// gets the feed.
        let url = tally_dashboard::conn::stream_url(&format!("https://localhost:{}", addr.port()))
            .unwrap();
        assert!(url.starts_with("wss://"), "{url}");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let feed = tokio::spawn(tally_dashboard::conn::run(
            url,
            Some(TOKEN.to_owned()),
            tally_audit::tls::AgentConnector::new(Some(pki.ca.clone())),
            tx,
        ));
        let got_frame = tokio::time::timeout(Duration::from_secs(20), async {
            let mut connected = false;
            while let Some(event) = rx.recv().await {
                match event {
                    tally_dashboard::conn::ConnEvent::Connected => connected = true,
                    tally_dashboard::conn::ConnEvent::Frame(_) if connected => return Ok(()),
                    tally_dashboard::conn::ConnEvent::Down { error, .. } => return Err(error),
                    _ => {}
                }
            }
            Err("the feed ended".to_owned())
        })
        .await;
        feed.abort();
        assert_eq!(got_frame, Ok(Ok(())), "the dashboard got no frame");
    });

    // What the emitter sent is in the books, read over https.
    agent.until(20, "the emitter's counts in the API", || {
        let (_, body) = https(addr, "/api/v1/topics", Some(TOKEN), &pki.ca).ok()?;
        body.contains("tls-orders").then_some(())
    });
    let log = agent.log();
    assert!(!log.contains(TOKEN), "the token is in the log: {log}");
}

#[test]
fn a_broker_streams_its_counts_to_an_https_agent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "b");
    let agent = TlsAgent::start(dir.path(), &pki, &["--tick", "200ms"]);
    let ingest = format!("wss://localhost:{}/api/v1/ingest", agent.addr.port());
    let ca = pki.ca.display().to_string();
    let broker = common::Broker::start_with(&[
        "--no-metrics",
        "--agent",
        &ingest,
        "--agent-ca",
        &ca,
        "--agent-token",
        TOKEN,
    ]);
    let out = common::run(
        common::kcat().args(["-b", broker.addr(), "-P", "-t", "tls-orders", "-p", "0"]),
        b"one\ntwo\nthree\nfour\nfive\n",
        common::CLIENT_TIMEOUT,
    );
    out.assert_success("kcat producing", &broker);
    agent.until(30, "the broker's counts in the agent", || {
        let (_, text) = https(agent.addr, "/metrics", None, &pki.ca).ok()?;
        let n = common::metric(
            &text,
            "tally_audit_records_total",
            &[("topic", "tls-orders"), ("tier", "broker")],
        )?;
        (n == 5.0).then_some(())
    });
    let log = broker.log();
    assert!(!log.contains(TOKEN), "the token is in the broker's log");
}

#[test]
fn sighup_loads_a_new_certificate_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki(dir.path(), "first");
    let agent = TlsAgent::start(dir.path(), &first, &[]);
    let (status, _) = https(agent.addr, "/readyz", None, &first.ca).unwrap();
    assert_eq!(status, 200);

    // A certificate from another CA in the same files, then SIGHUP.
    let second = pki(dir.path(), "second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    agent.until(10, "the new certificate", || {
        matches!(https(agent.addr, "/readyz", None, &second.ca), Ok((200, _))).then_some(())
    });
    assert!(
        https(agent.addr, "/readyz", None, &first.ca).is_err(),
        "the old CA is still trusted"
    );

    // A key file without a key stops the start, naming the file.
    let empty = dir.path().join("empty-key.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    let out = common::tally()
        .args(["agent", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--tls-cert")
        .arg(&second.cert)
        .arg("--tls-key")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no private key in") && err.contains("empty-key.pem"),
        "{err}"
    );

    // --print-config shows that there is a token, never the token.
    let out = common::tally()
        .args(["agent", "--print-config", "--tls-cert"])
        .arg(&second.cert)
        .arg("--tls-key")
        .arg(&second.key)
        .env("TALLY_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(printed.contains("token = \"<redacted>\""), "{printed}");
    assert!(printed.contains("tls_cert = "), "{printed}");
    let out = common::tally()
        .args(["broker", "--print-config", "--agent-token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(
        printed.contains("agent_token = \"<redacted>\""),
        "{printed}"
    );
}
