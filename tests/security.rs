//! The broker's TLS and SASL with real clients: kcat, confluent-kafka,
//! kafka-python and kafkajs produce and consume over SASL_SSL with every
//! mechanism they speak, over mTLS, and over SASL_PLAINTEXT; wrong passwords,
//! unknown users, TLS clients without SASL and plaintext clients on the TLS
//! port are refused while the broker goes on serving others; requests before
//! authentication close the connection; a users file that others can read is
//! refused at start. The certificates are made here, for each run.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

use common::{Broker, CLIENT_TIMEOUT, ClientRun, client_scripts, kcat, python, tally};

const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
const USER: &str = "alice";
const PASSWORD: &str = "alice-secret-7d2c";

/// A private CA, the broker's certificate for localhost and 127.0.0.1, a
/// client certificate, and the users file, in a folder of their own.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    users: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tally test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "tally broker",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["client.tally.test".into()],
            "tally client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str| {
            let path = d.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let pki = Pki {
            ca: write("ca.pem", &ca.pem()),
            cert: write("broker.pem", &server),
            key: write("broker-key.pem", &server_key),
            client_cert: write("client.pem", &client),
            client_key: write("client-key.pem", &client_key),
            users: write(
                "users.toml",
                &format!(
                    "[[user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n[[user]]\nname = \"bob\"\npassword = \"bob-secret-91ae\"\n"
                ),
            ),
            _dir: dir,
        };
        owner_only(&pki.users);
        pki
    }

    fn path(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// The flags of a SASL_SSL broker.
    fn sasl_ssl(&self) -> Vec<&str> {
        vec![
            "--tls-cert",
            Pki::path(&self.cert),
            "--tls-key",
            Pki::path(&self.key),
            "--sasl-users",
            Pki::path(&self.users),
        ]
    }

    /// The flags of an SSL broker that requires client certificates.
    fn mtls(&self) -> Vec<&str> {
        vec![
            "--tls-cert",
            Pki::path(&self.cert),
            "--tls-key",
            Pki::path(&self.key),
            "--tls-client-ca",
            Pki::path(&self.ca),
        ]
    }
}

fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn run(cmd: &mut Command) -> ClientRun {
    common::run(cmd, b"", CLIENT_TIMEOUT)
}

/// librdkafka's settings (kcat and confluent-kafka) for a protocol and mechanism.
fn librdkafka(
    pki: &Pki,
    protocol: &str,
    mechanism: Option<&str>,
    password: &str,
) -> Vec<(String, String)> {
    let mut conf = vec![("security.protocol".to_owned(), protocol.to_owned())];
    if protocol.ends_with("ssl") {
        conf.push(("ssl.ca.location".into(), Pki::path(&pki.ca).into()));
    }
    if protocol == "ssl" && mechanism.is_none() && password.is_empty() {
        conf.push((
            "ssl.certificate.location".into(),
            Pki::path(&pki.client_cert).into(),
        ));
        conf.push(("ssl.key.location".into(), Pki::path(&pki.client_key).into()));
    }
    if let Some(m) = mechanism {
        conf.push(("sasl.mechanism".into(), m.into()));
        conf.push(("sasl.username".into(), USER.into()));
        conf.push(("sasl.password".into(), password.into()));
    }
    conf
}

fn kcat_with(broker: &Broker, conf: &[(String, String)]) -> Command {
    let mut cmd = kcat();
    cmd.args(["-b", broker.addr(), "-m", "10"]);
    for (k, v) in conf {
        cmd.arg("-X").arg(format!("{k}={v}"));
    }
    cmd
}

/// kcat produces three records to `topic` and reads them back.
fn kcat_round_trip(broker: &Broker, conf: &[(String, String)], topic: &str) {
    let values: Vec<String> = (0..3).map(|i| format!("{topic}-{i}")).collect();
    let out = common::run(
        kcat_with(broker, conf).args(["-P", "-t", topic, "-p", "0"]),
        format!("{}\n", values.join("\n")).as_bytes(),
        CLIENT_TIMEOUT,
    );
    out.assert_success(&format!("kcat -P {topic}"), broker);
    let out = run(kcat_with(broker, conf).args([
        "-C",
        "-t",
        topic,
        "-p",
        "0",
        "-o",
        "beginning",
        "-e",
        "-q",
    ]));
    out.assert_success(&format!("kcat -C {topic}"), broker);
    let read: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(read, values, "kcat read back {topic}: {}", out.stderr);
}

#[test]
fn kcat_over_sasl_ssl_with_each_mechanism_over_mtls_and_over_sasl_plaintext() {
    if common::require_tool("kcat").is_none() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki.sasl_ssl());
    for m in MECHANISMS {
        let topic = format!("kcat-{}", m.to_lowercase());
        kcat_round_trip(
            &broker,
            &librdkafka(&pki, "sasl_ssl", Some(m), PASSWORD),
            &topic,
        );
    }
    assert!(
        !broker.log().contains(PASSWORD),
        "the password is never logged"
    );
    let mtls = Broker::start(&pki.mtls());
    kcat_round_trip(&mtls, &librdkafka(&pki, "ssl", None, ""), "kcat-mtls");
    let sasl_plaintext = Broker::start(&["--sasl-users", Pki::path(&pki.users)]);
    kcat_round_trip(
        &sasl_plaintext,
        &librdkafka(&pki, "sasl_plaintext", Some("SCRAM-SHA-256"), PASSWORD),
        "kcat-sasl-plaintext",
    );
}

fn as_object(conf: &[(String, String)]) -> Value {
    Value::Object(conf.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn python_cases(python: &Path, script: &str, broker: &Broker, cases: &Value) -> Value {
    let out = run(Command::new(python)
        .arg(client_scripts().join(script))
        .arg(broker.addr())
        .arg(cases.to_string()));
    out.accept(script, broker)
}

#[test]
fn confluent_kafka_over_sasl_ssl_each_mechanism_and_a_group_then_mtls_and_ssl() {
    let Some(python) = python() else { return };
    let pki = Pki::new();
    let broker = Broker::start(&pki.sasl_ssl());
    let cases: Vec<Value> = MECHANISMS
        .iter()
        .map(|m| {
            json!({
                "name": format!("ck-{}", m.to_lowercase()),
                "topic": format!("ck-{}", m.to_lowercase()),
                "config": as_object(&librdkafka(&pki, "sasl_ssl", Some(m), PASSWORD)),
                "group": *m == "SCRAM-SHA-512",
            })
        })
        .collect();
    let result = python_cases(
        &python,
        "security_confluent_kafka.py",
        &broker,
        &json!(cases),
    );
    assert_eq!(result["cases"]["ck-scram-sha-512"]["committed"], 5);
    assert_eq!(result["cases"]["ck-plain"]["read"], 5);

    let mtls = Broker::start(&pki.mtls());
    let mut no_cert = librdkafka(&pki, "ssl", None, "");
    no_cert.retain(|(k, _)| !k.starts_with("ssl.certificate") && !k.starts_with("ssl.key"));
    let cases = json!([
        {"name": "ck-mtls", "topic": "ck-mtls", "config": as_object(&librdkafka(&pki, "ssl", None, "")), "group": true},
        {"name": "ck-tls-without-a-client-certificate", "topic": "x", "config": as_object(&no_cert), "refused": true},
    ]);
    python_cases(&python, "security_confluent_kafka.py", &mtls, &cases);

    let ssl_only = Broker::start(&[
        "--tls-cert",
        Pki::path(&pki.cert),
        "--tls-key",
        Pki::path(&pki.key),
    ]);
    let cases = json!([{"name": "ck-ssl", "topic": "ck-ssl", "config": as_object(&no_cert)}]);
    python_cases(&python, "security_confluent_kafka.py", &ssl_only, &cases);
}

#[test]
fn refused_clients_leave_the_broker_serving_and_are_counted_and_logged_without_the_password() {
    let Some(python) = python() else { return };
    let pki = Pki::new();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut flags = vec!["--agent", "", "--metrics-listen", &metrics];
    flags.extend(pki.sasl_ssl());
    let broker = Broker::start_with(&flags);
    let wrong = "not-alices-password-4411";
    let mut unknown = librdkafka(&pki, "sasl_ssl", Some("SCRAM-SHA-256"), PASSWORD);
    for (k, v) in &mut unknown {
        if k == "sasl.username" {
            *v = "mallory".into();
        }
    }
    let mut plaintext = librdkafka(&pki, "plaintext", None, "");
    plaintext.retain(|(k, _)| k == "security.protocol");
    let cases = json!([
        {"name": "wrong-password", "topic": "x", "refused": true,
         "config": as_object(&librdkafka(&pki, "sasl_ssl", Some("PLAIN"), wrong)),
         "error_contains": "invalid credentials"},
        {"name": "unknown-user", "topic": "x", "refused": true, "config": as_object(&unknown),
         "error_contains": "invalid credentials"},
        {"name": "tls-without-sasl", "topic": "x", "refused": true,
         "config": as_object(&librdkafka(&pki, "ssl", Some("PLAIN"), PASSWORD)[..2])},
        {"name": "plaintext-on-the-tls-port", "topic": "x", "refused": true, "config": as_object(&plaintext)},
        {"name": "alice-goes-on", "topic": "goes-on",
         "config": as_object(&librdkafka(&pki, "sasl_ssl", Some("SCRAM-SHA-512"), PASSWORD))},
    ]);
    python_cases(&python, "security_confluent_kafka.py", &broker, &cases);
    let log = broker.log();
    assert!(
        !log.contains(wrong) && !log.contains(PASSWORD),
        "no password in the log:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("SASL authentication failed")
            && l.contains("mallory")
            && l.contains("127.0.0.1")),
        "the failure is logged with the peer and the user:\n{log}"
    );
    assert!(
        log.contains("before SASL authentication"),
        "the TLS client without SASL was refused past ApiVersions:\n{log}"
    );
    let (status, text) = common::get(metrics.parse().unwrap(), "/metrics", None);
    assert_eq!(status, 200);
    let failures = |m: &str| {
        common::metric(
            &text,
            "tally_broker_auth_failures_total",
            &[("mechanism", m)],
        )
    };
    assert!(failures("PLAIN").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(failures("SCRAM-SHA-256").unwrap_or(0.0) >= 1.0, "{text}");
}

#[test]
fn kafka_python_over_sasl_ssl_each_mechanism_and_over_mtls() {
    let Some(python) = python() else { return };
    let pki = Pki::new();
    let broker = Broker::start(&pki.sasl_ssl());
    let ssl = |extra: Value| {
        let mut conf = json!({"ssl_cafile": pki.ca, "ssl_check_hostname": true});
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        conf
    };
    let cases: Vec<Value> = MECHANISMS
        .iter()
        .map(|m| {
            json!({
                "name": format!("kp-{}", m.to_lowercase()),
                "topic": format!("kp-{}", m.to_lowercase()),
                "config": ssl(json!({
                    "security_protocol": "SASL_SSL",
                    "sasl_mechanism": m,
                    "sasl_plain_username": USER,
                    "sasl_plain_password": PASSWORD,
                })),
            })
        })
        .collect();
    python_cases(&python, "security_kafka_python.py", &broker, &json!(cases));
    let mtls = Broker::start(&pki.mtls());
    let cases = json!([{
        "name": "kp-mtls",
        "topic": "kp-mtls",
        "config": ssl(json!({
            "security_protocol": "SSL",
            "ssl_certfile": pki.client_cert,
            "ssl_keyfile": pki.client_key,
        })),
    }]);
    python_cases(&python, "security_kafka_python.py", &mtls, &cases);
}

#[test]
fn kafkajs_over_sasl_ssl_each_mechanism_and_over_mtls() {
    let Some(node) = common::node() else { return };
    let pki = Pki::new();
    let run_cases = |broker: &Broker, cases: Value| {
        let out = run(Command::new(&node)
            .arg(client_scripts().join("security_kafkajs.js"))
            .arg(broker.addr())
            .arg(cases.to_string()));
        out.accept("security_kafkajs.js", broker)
    };
    let broker = Broker::start(&pki.sasl_ssl());
    let cases: Vec<Value> = ["plain", "scram-sha-256", "scram-sha-512"]
        .iter()
        .map(|m| {
            json!({
                "name": format!("kjs-{m}"),
                "topic": format!("kjs-{m}"),
                "ssl": {"ca_file": pki.ca},
                "sasl": {"mechanism": m, "username": USER, "password": PASSWORD},
            })
        })
        .collect();
    run_cases(&broker, json!(cases));
    let mtls = Broker::start(&pki.mtls());
    run_cases(
        &mtls,
        json!([{
            "name": "kjs-mtls",
            "topic": "kjs-mtls",
            "ssl": {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key},
        }]),
    );
}

// ---------------------------------------------------------------------------
// The wire, by hand.

fn frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&version.to_be_bytes());
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&4i16.to_be_bytes());
    payload.extend_from_slice(b"test");
    payload.extend_from_slice(body);
    let mut out = (payload.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn kafka_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as i16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// The next size-prefixed frame, or None when the broker closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(broker.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A Metadata v0 request for every topic.
fn metadata() -> Vec<u8> {
    frame(3, 0, 7, &0i32.to_be_bytes())
}

#[test]
fn before_authentication_only_sasl_and_api_versions_are_answered() {
    let pki = Pki::new();
    let broker = Broker::start(&[
        "--sasl-users",
        Pki::path(&pki.users),
        "--request-timeout",
        "2s",
    ]);

    // ApiVersions v0 advertises SaslHandshake (17) 0..1 and SaslAuthenticate (36) 0..2.
    let mut s = connect(&broker);
    s.write_all(&frame(18, 0, 1, &[])).unwrap();
    let answer = read_frame(&mut s).expect("an ApiVersions answer");
    let n = i32::from_be_bytes(answer[6..10].try_into().unwrap()) as usize;
    let keys: Vec<(i16, i16, i16)> = (0..n)
        .map(|i| {
            let e = &answer[10 + 6 * i..16 + 6 * i];
            let at = |j: usize| i16::from_be_bytes([e[j], e[j + 1]]);
            (at(0), at(2), at(4))
        })
        .collect();
    assert!(
        keys.contains(&(17, 0, 1)) && keys.contains(&(36, 0, 2)),
        "{keys:?}"
    );
    // Metadata before logging in: the connection is closed without an answer.
    s.write_all(&metadata()).unwrap();
    assert_eq!(
        read_frame(&mut s),
        None,
        "Metadata before authentication is refused"
    );

    // SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE (34), then closed.
    let mut s = connect(&broker);
    let token = format!("\0{USER}\0{PASSWORD}");
    let mut body = (token.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(token.as_bytes());
    s.write_all(&frame(36, 1, 2, &body)).unwrap();
    let answer = read_frame(&mut s).expect("an answer");
    assert_eq!(&answer[4..6], &34i16.to_be_bytes(), "ILLEGAL_SASL_STATE");
    assert_eq!(read_frame(&mut s), None, "then the connection closes");

    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM (33) and the list.
    let mut s = connect(&broker);
    s.write_all(&frame(17, 1, 3, &kafka_string("GSSAPI")))
        .unwrap();
    let answer = read_frame(&mut s).expect("an answer");
    assert_eq!(&answer[4..6], &33i16.to_be_bytes());
    assert!(String::from_utf8_lossy(&answer).contains("SCRAM-SHA-512"));

    // SaslHandshake v0, then a bare PLAIN token: logged in, Metadata is answered.
    let mut s = connect(&broker);
    s.write_all(&frame(17, 0, 4, &kafka_string("PLAIN")))
        .unwrap();
    let answer = read_frame(&mut s).expect("a handshake answer");
    assert_eq!(&answer[4..6], &[0, 0]);
    let mut raw = (token.len() as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(token.as_bytes());
    s.write_all(&raw).unwrap();
    assert_eq!(
        read_frame(&mut s),
        Some(vec![]),
        "an empty token: logged in"
    );
    s.write_all(&metadata()).unwrap();
    let answer = read_frame(&mut s).expect("Metadata answered after the login");
    assert_eq!(&answer[..4], &7i32.to_be_bytes());

    // A client that opens and then never logs in is dropped after the request timeout.
    let mut s = connect(&broker);
    s.write_all(&frame(18, 0, 5, &[])).unwrap();
    read_frame(&mut s).expect("an ApiVersions answer");
    let started = Instant::now();
    assert_eq!(read_frame(&mut s), None);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn silent_clients_on_the_tls_port_are_dropped_and_make_room_for_real_ones() {
    let pki = Pki::new();
    let mut flags = pki.sasl_ssl();
    flags.extend(["--request-timeout", "1s", "--max-connections", "2"]);
    let broker = Broker::start(&flags);
    let mut s = connect(&broker);
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the broker closes, sending nothing");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Sockets stuck before the TLS handshake hold no slot against a real client.
    if common::require_tool("kcat").is_none() {
        return;
    }
    let _silent: Vec<TcpStream> = (0..4).map(|_| connect(&broker)).collect();
    let out = run(kcat_with(
        &broker,
        &librdkafka(&pki, "sasl_ssl", Some("SCRAM-SHA-512"), PASSWORD),
    )
    .arg("-L"));
    out.assert_success("kcat -L past silent sockets at max_connections", &broker);
    assert!(out.stdout.contains("1 brokers"), "{}", out.stdout);
}

#[test]
fn bad_security_settings_are_refused_at_start_with_a_clear_error() {
    let pki = Pki::new();
    let readable = pki.users.with_file_name("readable-users.toml");
    std::fs::copy(&pki.users, &readable).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let start = |flags: &[&str]| {
        let out = tally()
            .args([
                "broker",
                "--no-metrics",
                "--agent",
                "",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = start(&["--sasl-users", Pki::path(&readable)]);
    assert!(
        e.contains("readable-users.toml") && e.contains("--sasl-users"),
        "{e}"
    );
    assert!(e.contains("644") || e.contains("chmod"), "says why: {e}");
    assert!(!e.contains(PASSWORD), "{e}");
    let e = start(&["--tls-cert", Pki::path(&pki.cert)]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = start(&["--tls-key", Pki::path(&pki.key)]);
    assert!(e.contains("--tls-cert"), "{e}");
    let e = start(&[
        "--tls-cert",
        Pki::path(&pki.cert),
        "--tls-key",
        Pki::path(&pki.client_key),
    ]);
    assert!(e.contains("does not belong"), "{e}");
}

/// A PLAIN login through SaslHandshake v1 and SaslAuthenticate v1: its error code.
fn plain_login(broker: &Broker, user: &str, password: &str) -> i16 {
    let mut s = connect(broker);
    s.write_all(&frame(17, 1, 1, &kafka_string("PLAIN")))
        .unwrap();
    let answer = read_frame(&mut s).expect("a handshake answer");
    assert_eq!(&answer[4..6], &[0, 0]);
    let token = format!("\0{user}\0{password}");
    let mut body = (token.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(token.as_bytes());
    s.write_all(&frame(36, 1, 2, &body)).unwrap();
    let answer = read_frame(&mut s).expect("a SaslAuthenticate answer");
    i16::from_be_bytes([answer[4], answer[5]])
}

#[test]
fn sighup_reloads_the_users_file() {
    let pki = Pki::new();
    let broker = Broker::start(&["--sasl-users", Pki::path(&pki.users)]);
    assert_eq!(plain_login(&broker, USER, PASSWORD), 0);
    assert_eq!(
        plain_login(&broker, "carol", "carol-secret-5e1f"),
        58,
        "SASL_AUTHENTICATION_FAILED"
    );
    std::fs::write(
        &pki.users,
        "[[user]]\nname = \"carol\"\npassword = \"carol-secret-5e1f\"\n",
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("reloaded the SASL users") {
        assert!(
            Instant::now() < deadline,
            "no reload logged: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(plain_login(&broker, "carol", "carol-secret-5e1f"), 0);
    assert_eq!(plain_login(&broker, USER, PASSWORD), 58, "alice is gone");
}
