//! TLS handshakes between the server and client sides, over in-memory duplex streams,
//! with certificates that the tests make (rcgen, and the `openssl` command for RSA and
//! the older key encodings).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tally_kafka::Error;
use tally_kafka::tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

/// A CA that signs leaf certificates.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A leaf for `names`: its certificate and its key, in PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Server files in `dir` for a leaf of `ca` naming localhost and 127.0.0.1; the
/// certificate file holds the chain (leaf, then CA).
fn server_files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> ServerTlsFiles {
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    ServerTlsFiles {
        cert: write(dir, "server.pem", &format!("{cert}{}", ca.pem)),
        key: write(dir, "server-key.pem", &key),
        client_ca: client_ca.map(|c| write(dir, "client-ca.pem", &c.pem)),
    }
}

fn client_trusting(dir: &Path, ca: &Ca, name: &str) -> ClientTls {
    ClientTls::new(&ClientTlsFiles {
        ca: Some(write(dir, name, &ca.pem)),
        ..ClientTlsFiles::default()
    })
    .unwrap()
}

/// One handshake between `server` and `client` naming `host`, then a ping and a pong;
/// the server's and the client's outcome.
async fn handshake(
    server: &ServerTls,
    client: &ClientTls,
    host: &str,
) -> (Result<(), String>, Result<(), String>) {
    let (client_io, server_io) = duplex(64 * 1024);
    let server_side = async {
        let mut stream = server
            .accept(server_io, "test-peer")
            .await
            .map_err(|e| e.to_string())?;
        let mut ping = [0; 4];
        stream
            .read_exact(&mut ping)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&ping, b"ping");
        stream.write_all(b"pong").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let client_side = async {
        let mut stream = client
            .connect(host, client_io)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut pong = [0; 4];
        // In TLS 1.3 a refused client certificate shows up here, at the first read.
        stream
            .read_exact(&mut pong)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&pong, b"pong");
        Ok(())
    };
    tokio::join!(server_side, client_side)
}

#[tokio::test]
async fn server_and_client_handshake_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tally test CA");
    let server = ServerTls::load(server_files(dir.path(), &ca, None)).unwrap();
    assert!(!server.requires_client_certificate());
    let client = client_trusting(dir.path(), &ca, "ca.pem");
    for host in ["localhost", "127.0.0.1"] {
        let (s, c) = handshake(&server, &client, host).await;
        assert_eq!((s, c), (Ok(()), Ok(())), "{host}");
    }
    // The certificate does not name this host.
    let (_, c) = handshake(&server, &client, "broker.example.com").await;
    let err = c.unwrap_err();
    assert!(err.contains("'broker.example.com'"), "{err}");
    assert!(err.contains("not valid for name"), "{err}");
}

/// A handshake to `localhost` from a client of `provider` speaking only `version` and
/// trusting `roots`; both ends' streams.
async fn connect_with(
    server: &ServerTls,
    provider: Arc<rustls::crypto::CryptoProvider>,
    version: &'static rustls::SupportedProtocolVersion,
    roots: &rustls::RootCertStore,
) -> (
    tally_kafka::tls::ServerTlsStream<tokio::io::DuplexStream>,
    tally_kafka::tls::ClientTlsStream<tokio::io::DuplexStream>,
) {
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let client = ClientTls::from_config(Arc::new(config));
    let (client_io, server_io) = duplex(64 * 1024);
    let (s, c) = tokio::join!(
        server.accept(server_io, "peer"),
        client.connect("localhost", client_io)
    );
    (s.unwrap(), c.unwrap())
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_spoken_and_the_server_sees_the_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tally test CA");
    let server = ServerTls::load(server_files(dir.path(), &ca, None)).unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let roots = tally_kafka::tls::load_ca(&ca_file).unwrap();
    for version in tally_kafka::tls::PROTOCOL_VERSIONS {
        let (s, c) = connect_with(&server, tally_kafka::tls::provider(), version, &roots).await;
        let (_, server_conn) = s.get_ref();
        assert_eq!(server_conn.protocol_version(), Some(version.version));
        assert_eq!(server_conn.server_name(), Some("localhost"));
        assert_eq!(c.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test]
async fn the_server_picks_aes_128_gcm_even_when_the_client_prefers_aes_256() {
    // librdkafka (OpenSSL) offers AES-256-GCM first; the broker encrypts every byte it
    // serves, and AES-128-GCM costs fewer rounds for the same protection here.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tally test CA");
    let server = ServerTls::load(server_files(dir.path(), &ca, None)).unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let roots = tally_kafka::tls::load_ca(&ca_file).unwrap();
    let mut provider = (*tally_kafka::tls::provider()).clone();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => 0,
        _ => 1,
    });
    let provider = Arc::new(provider);
    let expected = [
        (
            &rustls::version::TLS13,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ];
    for (version, suite) in expected {
        let (s, c) = connect_with(&server, provider.clone(), version, &roots).await;
        let negotiated = s.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(negotiated, Some(suite), "{:?}", version.version);
        assert_eq!(
            c.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
    }
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tally test CA");
    let other = Ca::new("someone else's CA");
    let server = ServerTls::load(server_files(dir.path(), &ca, None)).unwrap();
    let client = client_trusting(dir.path(), &other, "other-ca.pem");
    let (s, c) = handshake(&server, &client, "localhost").await;
    let err = c.unwrap_err();
    assert!(
        err.starts_with("TLS handshake with 'localhost' failed"),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(s.is_err());
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let rogue_ca = Ca::new("rogue CA");
    let server = ServerTls::load(server_files(dir.path(), &server_ca, Some(&client_ca))).unwrap();
    assert!(server.requires_client_certificate());
    let ca = write(dir.path(), "server-ca.pem", &server_ca.pem);

    let with_cert = |issuer: &Ca, name: &str| {
        let (cert, key) = issuer.leaf(&["collector"]);
        ClientTls::new(&ClientTlsFiles {
            ca: Some(ca.clone()),
            cert: Some(write(dir.path(), &format!("{name}.pem"), &cert)),
            key: Some(write(dir.path(), &format!("{name}-key.pem"), &key)),
        })
        .unwrap()
    };

    let good = with_cert(&client_ca, "good");
    assert_eq!(
        handshake(&server, &good, "localhost").await,
        (Ok(()), Ok(()))
    );

    let without = ClientTls::new(&ClientTlsFiles {
        ca: Some(ca.clone()),
        ..ClientTlsFiles::default()
    })
    .unwrap();
    let (s, c) = handshake(&server, &without, "localhost").await;
    let err = s.unwrap_err();
    assert!(
        err.starts_with("TLS handshake with 'test-peer' failed"),
        "{err}"
    );
    assert!(err.contains("peer sent no certificates"), "{err}");
    assert!(c.is_err(), "the client learns of it at its first read");

    let rogue = with_cert(&rogue_ca, "rogue");
    let (s, c) = handshake(&server, &rogue, "localhost").await;
    assert!(s.unwrap_err().contains("UnknownIssuer"));
    assert!(c.is_err());
}

#[tokio::test]
async fn reload_picks_up_a_new_certificate_and_keeps_the_old_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let server = ServerTls::load(server_files(dir.path(), &old_ca, None)).unwrap();
    let trusts_old = client_trusting(dir.path(), &old_ca, "old-ca.pem");
    let trusts_new = client_trusting(dir.path(), &new_ca, "new-ca.pem");
    assert_eq!(
        handshake(&server, &trusts_old, "localhost").await,
        (Ok(()), Ok(()))
    );
    assert!(
        handshake(&server, &trusts_new, "localhost")
            .await
            .1
            .is_err()
    );

    // The same paths, new contents: what a certificate renewal does.
    let renewed = server_files(dir.path(), &new_ca, None);
    assert_eq!(&renewed, server.files());
    let before = server.config();
    server.reload().unwrap();
    assert!(!Arc::ptr_eq(&before, &server.config()));
    assert_eq!(
        handshake(&server, &trusts_new, "localhost").await,
        (Ok(()), Ok(()))
    );
    assert!(
        handshake(&server, &trusts_old, "localhost")
            .await
            .1
            .is_err()
    );

    // A broken key file: the reload fails, naming it, and the server goes on as it was.
    write(dir.path(), "server-key.pem", "not a key\n");
    let err = server.reload().unwrap_err().to_string();
    assert!(err.starts_with("no private key found in '"), "{err}");
    assert!(err.contains("server-key.pem"), "{err}");
    assert_eq!(
        handshake(&server, &trusts_new, "localhost").await,
        (Ok(()), Ok(()))
    );
}

#[test]
fn errors_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tally test CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let cert_file = write(dir.path(), "cert.pem", &cert);
    let key_file = write(dir.path(), "key.pem", &key);
    let load = |cert: &Path, key: &Path, client_ca: Option<&Path>| {
        ServerTls::load(ServerTlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(Path::to_owned),
        })
        .unwrap_err()
    };

    // A key where the certificate should be, and the other way round.
    let err = load(&key_file, &key_file, None).to_string();
    assert_eq!(
        err,
        format!(
            "certificate file '{}' holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` sections)",
            key_file.display()
        )
    );
    let err = load(&cert_file, &cert_file, None).to_string();
    assert!(
        err.starts_with(&format!(
            "no private key found in '{}'",
            cert_file.display()
        )),
        "{err}"
    );

    let missing = dir.path().join("missing.pem");
    let err = load(&missing, &key_file, None);
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read '{}': ", missing.display())),
        "{err}"
    );

    let (_, other_key) = ca.leaf(&["localhost"]);
    let other_key_file = write(dir.path(), "other-key.pem", &other_key);
    let err = load(&cert_file, &other_key_file, None).to_string();
    assert_eq!(
        err,
        format!(
            "the private key in '{}' does not belong to the certificate in '{}'",
            other_key_file.display(),
            cert_file.display()
        )
    );

    let broken = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let err = load(&broken, &key_file, None).to_string();
    assert!(
        err.starts_with(&format!("'{}' is not valid PEM", broken.display())),
        "{err}"
    );

    let empty_ca = write(dir.path(), "empty-ca.pem", "");
    let err = load(&cert_file, &key_file, Some(&empty_ca)).to_string();
    assert!(err.contains("empty-ca.pem' holds no certificate"), "{err}");

    let err = ClientTls::new(&ClientTlsFiles {
        ca: None,
        cert: Some(cert_file.clone()),
        key: None,
    })
    .unwrap_err();
    assert!(matches!(err, Error::IncompleteClientCertificate), "{err:?}");
}

#[test]
fn the_default_client_trusts_the_systems_roots() {
    let roots = tally_kafka::tls::native_roots().unwrap();
    assert!(roots.len() > 10, "only {} roots", roots.len());
    ClientTls::new(&ClientTlsFiles::default()).unwrap();
}

#[test]
fn server_names_are_dns_names_or_ip_addresses() {
    use rustls::pki_types::ServerName;
    use tally_kafka::tls::server_name;
    assert!(matches!(
        server_name("broker-1.example.com").unwrap(),
        ServerName::DnsName(_)
    ));
    assert!(matches!(
        server_name("127.0.0.1").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name("[::1]").unwrap(),
        ServerName::IpAddress(_)
    ));
    let err = server_name("not a host!").unwrap_err().to_string();
    assert_eq!(
        err,
        "'not a host!' is not a valid TLS server name (expected a DNS name or an IP address)"
    );
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the `openssl` command (Debian's `openssl`, which `ca-certificates` depends on)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_in_pkcs8_pkcs1_and_sec1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // RSA: PKCS#8 as generated, and PKCS#1 ("RSA PRIVATE KEY").
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa8.pem",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "rsa8.pem", "-traditional", "-out", "rsa1.pem"],
    );
    // ECDSA: SEC1 ("EC PRIVATE KEY") as generated, and PKCS#8.
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec1.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec1.pem", "-out", "ec8.pem",
        ],
    );
    let read = |file: &str| std::fs::read_to_string(d.join(file)).unwrap();
    assert!(read("rsa1.pem").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(read("rsa8.pem").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(read("ec1.pem").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(read("ec8.pem").starts_with("-----BEGIN PRIVATE KEY-----"));

    // The CA signs a certificate for each key (rcgen reads the PKCS#8 form).
    let ca = Ca::new("tally test CA");
    let ca_file = write(d, "ca.pem", &ca.pem);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    for (cert, key) in [("rsa.pem", "rsa8.pem"), ("ec.pem", "ec8.pem")] {
        let key = KeyPair::from_pem(&read(key)).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        write(d, cert, &params.signed_by(&key, &issuer).unwrap().pem());
    }

    let client = ClientTls::new(&ClientTlsFiles {
        ca: Some(ca_file.clone()),
        ..ClientTlsFiles::default()
    })
    .unwrap();
    for (cert, key) in [
        ("rsa.pem", "rsa8.pem"),
        ("rsa.pem", "rsa1.pem"),
        ("ec.pem", "ec1.pem"),
        ("ec.pem", "ec8.pem"),
    ] {
        let server = ServerTls::load(ServerTlsFiles {
            cert: d.join(cert),
            key: d.join(key),
            client_ca: None,
        })
        .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            handshake(&server, &client, "localhost").await,
            (Ok(()), Ok(())),
            "{key}"
        );
    }

    // mTLS with a client certificate whose key is RSA PKCS#1, to a server with SEC1.
    let server = ServerTls::load(ServerTlsFiles {
        cert: d.join("ec.pem"),
        key: d.join("ec1.pem"),
        client_ca: Some(ca_file.clone()),
    })
    .unwrap();
    let client = ClientTls::new(&ClientTlsFiles {
        ca: Some(ca_file),
        cert: Some(d.join("rsa.pem")),
        key: Some(d.join("rsa1.pem")),
    })
    .unwrap();
    assert_eq!(
        handshake(&server, &client, "localhost").await,
        (Ok(()), Ok(()))
    );
}
