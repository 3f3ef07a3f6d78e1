//! The real [`Transport`]: one connection per broker, opened on first use, reused, and
//! opened again after it fails.
//!
//! A connection runs TCP, then TLS (with the broker's host as SNI) for the `ssl`
//! protocols, then ApiVersions (v3, or v0 when the broker refuses v3), then the SASL
//! login for the `sasl_*` protocols. After that, requests are pipelined: each one gets a
//! correlation id, is written under a lock on the write half, and waits for its answer,
//! which a reader task matches by correlation id. So many requests (OffsetFetch for a
//! thousand groups) share one connection without waiting on each other's round trips.
//!
//! A request that gets no answer within the request timeout closes the connection, and
//! so do a frame whose length is negative, too short or above `max_response_bytes`, and
//! an answer to no request: every request still waiting on it fails, and the next one
//! opens a new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::config::{ClientConfig, Login};
use super::transport::{ApiVersions, BoxFuture, BrokerAddr, RawRequest, Transport};
use crate::sasl::{ClientAuthenticator, ClientStep};
use crate::tls::ClientTls;
use crate::{Error, Result};

/// A byte stream to a broker: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Stream = Box<dyn Io>;

/// UNSUPPORTED_VERSION: the answer of a broker to an ApiVersions version it does not know.
const UNSUPPORTED_VERSION: i16 = 35;

/// What every connection is opened with.
struct Settings {
    client_id: StrBytes,
    tls: Option<ClientTls>,
    login: Login,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_response_bytes: usize,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Connections to the brokers of one cluster.
pub struct Connections {
    settings: Arc<Settings>,
    pool: Mutex<HashMap<BrokerAddr, Slot>>,
}

impl Connections {
    /// Reads the TLS files and checks the login settings; opens nothing yet.
    pub fn new(cfg: &ClientConfig) -> Result<Connections> {
        let tls = if cfg.security_protocol.uses_tls() {
            Some(ClientTls::new(&cfg.tls)?)
        } else {
            None
        };
        Ok(Connections {
            settings: Arc::new(Settings {
                client_id: StrBytes::from_string(cfg.client_id.clone()),
                tls,
                login: cfg.login()?,
                connect_timeout: cfg.connect_timeout,
                request_timeout: cfg.request_timeout,
                max_response_bytes: cfg.max_response_bytes,
            }),
            pool: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, broker: &BrokerAddr) -> Slot {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.entry(broker.clone()).or_default().clone()
    }

    /// The open connection to `broker`, or a new one. Callers that arrive while one is
    /// being opened wait for it rather than open their own.
    async fn connection(&self, broker: &BrokerAddr) -> Result<Arc<Connection>> {
        let slot = self.slot(broker);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let conn = Arc::new(Connection::open(broker, &self.settings).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

impl Transport for Connections {
    fn api_versions<'a>(&'a self, broker: &'a BrokerAddr) -> BoxFuture<'a, Result<ApiVersions>> {
        Box::pin(async move { Ok(self.connection(broker).await?.versions.clone()) })
    }

    fn send<'a>(
        &'a self,
        broker: &'a BrokerAddr,
        request: RawRequest,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move { self.connection(broker).await?.call(request).await })
    }

    fn disconnect(&self, broker: &BrokerAddr) {
        let slot = self.slot(broker);
        // A connection being opened right now is left alone: it is new.
        if let Ok(mut guard) = slot.try_lock()
            && let Some(conn) = guard.take()
        {
            conn.close("closed by the client after an error".to_owned());
        }
    }
}

/// One request waiting for its answer.
struct Pending {
    response_header_version: i16,
    api: &'static str,
    answer: oneshot::Sender<Result<Bytes>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<i32, Pending>,
    closed: Option<String>,
}

/// What the requesters and the reader task share.
struct Shared {
    broker: String,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection closed and fails every request waiting on it.
    fn close(&self, reason: String) {
        let pending = {
            let mut state = self.state();
            if state.closed.is_none() {
                state.closed = Some(reason.clone());
            }
            std::mem::take(&mut state.pending)
        };
        for (_, p) in pending {
            let _ = p.answer.send(Err(Error::Connection {
                broker: self.broker.clone(),
                reason: reason.clone(),
            }));
        }
    }
}

/// One open, logged-in connection.
struct Connection {
    shared: Arc<Shared>,
    versions: ApiVersions,
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    next_id: AtomicI32,
    reader: tokio::task::AbortHandle,
    client_id: StrBytes,
    request_timeout: Duration,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    async fn open(broker: &BrokerAddr, settings: &Settings) -> Result<Connection> {
        let name = broker.to_string();
        let opening = async {
            let tcp = TcpStream::connect((broker.host.as_str(), broker.port))
                .await
                .map_err(|e| Error::Connect {
                    broker: name.clone(),
                    reason: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            let mut stream: Stream = match &settings.tls {
                Some(tls) => Box::new(tls.connect(&broker.host, tcp).await?),
                None => Box::new(tcp),
            };
            let mut handshake = Handshake {
                stream: &mut stream,
                broker: &name,
                settings,
                next_id: 1,
            };
            let versions = handshake.api_versions().await?;
            handshake.login(&versions).await?;
            let next_id = handshake.next_id;
            Ok::<_, Error>((stream, versions, next_id))
        };
        let (stream, versions, next_id) = tokio::time::timeout(settings.connect_timeout, opening)
            .await
            .map_err(|_| Error::Connect {
                broker: name.clone(),
                reason: format!(
                    "not connected and logged in within {} ms (connect_timeout)",
                    settings.connect_timeout.as_millis()
                ),
            })??;
        let (reader, writer) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            broker: name,
            state: Mutex::new(State::default()),
        });
        let reader = tokio::spawn(read_answers(
            reader,
            shared.clone(),
            settings.max_response_bytes,
        ))
        .abort_handle();
        Ok(Connection {
            shared,
            versions,
            writer: tokio::sync::Mutex::new(writer),
            next_id: AtomicI32::new(next_id),
            reader,
            client_id: settings.client_id.clone(),
            request_timeout: settings.request_timeout,
        })
    }

    fn is_closed(&self) -> bool {
        self.shared.state().closed.is_some()
    }

    fn close(&self, reason: String) {
        self.shared.close(reason);
        self.reader.abort();
    }

    async fn call(&self, request: RawRequest) -> Result<Bytes> {
        let broker = &self.shared.broker;
        // Non-negative ids, wrapping: an id comes back only long after its request ended.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let frame = frame(&request, id, &self.client_id)?;
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if let Some(reason) = &state.closed {
                return Err(Error::Connection {
                    broker: broker.clone(),
                    reason: reason.clone(),
                });
            }
            state.pending.insert(
                id,
                Pending {
                    response_header_version: request.response_header_version,
                    api: request.api,
                    answer,
                },
            );
        }
        let timeout = || Error::Timeout {
            broker: broker.clone(),
            api: request.api,
            timeout_ms: self.request_timeout.as_millis(),
        };
        let exchange = async {
            {
                let mut writer = self.writer.lock().await;
                if let Err(e) = write_all(&mut *writer, &frame).await {
                    self.close(format!("cannot write: {e}"));
                }
            }
            answered.await
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Connection {
                broker: broker.clone(),
                reason: "closed".to_owned(),
            }),
            Err(_) => {
                // The broker may be stuck: a new connection is the way out, as in
                // Kafka's own clients.
                self.close(format!("{} got no answer in time", request.api));
                Err(timeout())
            }
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// A whole request frame: size, header, body.
fn frame(request: &RawRequest, correlation_id: i32, client_id: &StrBytes) -> Result<Bytes> {
    let encode_error = |reason: String| Error::Encode {
        api: request.api,
        version: request.version,
        reason,
    };
    let mut buf = BytesMut::with_capacity(64 + request.body.len());
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(request.api_key)
        .with_request_api_version(request.version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()))
        .encode(&mut buf, request.header_version)
        .map_err(|e| encode_error(format!("request header: {e:#}")))?;
    buf.extend_from_slice(&request.body);
    let size = i32::try_from(buf.len() - 4)
        .map_err(|_| encode_error("request larger than 2 GiB".to_owned()))?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads one frame (without its size). The size is checked before anything is read
/// into memory, and the buffer grows with the bytes that really arrive.
async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    broker: &str,
    max: usize,
) -> Result<Bytes> {
    let lost = |e: std::io::Error| Error::Connection {
        broker: broker.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "closed by the broker".to_owned()
        } else {
            e.to_string()
        },
    };
    let malformed = |reason: String| Error::Malformed {
        broker: broker.to_owned(),
        reason,
    };
    let mut size = [0u8; 4];
    r.read_exact(&mut size).await.map_err(lost)?;
    let size = i32::from_be_bytes(size);
    let len =
        usize::try_from(size).map_err(|_| malformed(format!("negative frame length {size}")))?;
    if len < 4 {
        return Err(malformed(format!(
            "frame length {len} is shorter than a correlation id"
        )));
    }
    if len > max {
        return Err(malformed(format!(
            "frame length {len} exceeds max_response_bytes ({max})"
        )));
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let read = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(lost)?;
    if read != len {
        return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Bytes::from(body))
}

/// The reader task: hands each answer to the request that waits for it, until the
/// connection fails.
async fn read_answers(mut reader: ReadHalf<Stream>, shared: Arc<Shared>, max: usize) {
    let reason = loop {
        let mut frame = match read_frame(&mut reader, &shared.broker, max).await {
            Ok(frame) => frame,
            Err(e) => break e.to_string(),
        };
        let Some(id) = frame.get(..4).and_then(|b| b.try_into().ok()) else {
            break "frame without a correlation id".to_owned();
        };
        let id = i32::from_be_bytes(id);
        let Some(pending) = shared.state().pending.remove(&id) else {
            break format!("answer with correlation id {id}, which no request carries");
        };
        let answer = ResponseHeader::decode(&mut frame, pending.response_header_version)
            .map(|_| frame)
            .map_err(|e| Error::Malformed {
                broker: shared.broker.clone(),
                reason: format!("{} response header: {e:#}", pending.api),
            });
        let _ = pending.answer.send(answer);
    };
    shared.close(reason);
}

/// The requests of a connection before it is shared: one at a time, in order.
struct Handshake<'a> {
    stream: &'a mut Stream,
    broker: &'a str,
    settings: &'a Settings,
    next_id: i32,
}

impl Handshake<'_> {
    async fn round_trip<Q: Encodable + HeaderVersion, A: Decodable + HeaderVersion>(
        &mut self,
        api_key: ApiKey,
        api: &'static str,
        request: &Q,
        version: i16,
    ) -> Result<A> {
        let body = super::request::encode_body(request, api, version)?;
        let raw = RawRequest {
            api_key: api_key as i16,
            api,
            version,
            header_version: Q::header_version(version),
            response_header_version: A::header_version(version),
            body,
        };
        let mut answer = self.exchange(raw).await?;
        super::request::decode_body::<A>(&mut answer, self.broker, api, version)
    }

    async fn exchange(&mut self, raw: RawRequest) -> Result<Bytes> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = frame(&raw, id, &self.settings.client_id)?;
        write_all(self.stream, &frame)
            .await
            .map_err(|e| Error::Connection {
                broker: self.broker.to_owned(),
                reason: format!("cannot write: {e}"),
            })?;
        let mut answer =
            read_frame(self.stream, self.broker, self.settings.max_response_bytes).await?;
        let header =
            ResponseHeader::decode(&mut answer, raw.response_header_version).map_err(|e| {
                Error::Malformed {
                    broker: self.broker.to_owned(),
                    reason: format!("{} response header: {e:#}", raw.api),
                }
            })?;
        if header.correlation_id != id {
            return Err(Error::Malformed {
                broker: self.broker.to_owned(),
                reason: format!(
                    "{} answer carries correlation id {}, expected {id}",
                    raw.api, header.correlation_id
                ),
            });
        }
        Ok(answer)
    }

    /// ApiVersions v3; v0 when the broker answers UNSUPPORTED_VERSION (which it does in
    /// the v0 layout, with the error code first).
    async fn api_versions(&mut self) -> Result<ApiVersions> {
        let mut version = 3;
        loop {
            let request = if version >= 3 {
                ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("tally-kafka"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )))
            } else {
                ApiVersionsRequest::default()
            };
            let body = super::request::encode_body(&request, "ApiVersions", version)?;
            let raw = RawRequest {
                api_key: ApiKey::ApiVersions as i16,
                api: "ApiVersions",
                version,
                header_version: ApiVersionsRequest::header_version(version),
                response_header_version: ApiVersionsResponse::header_version(version),
                body,
            };
            let mut answer = self.exchange(raw).await?;
            let code = answer
                .get(..2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            if code == UNSUPPORTED_VERSION && version > 0 {
                version = 0;
                continue;
            }
            let response: ApiVersionsResponse =
                super::request::decode_body(&mut answer, self.broker, "ApiVersions", version)?;
            if response.error_code != 0 {
                return Err(Error::Kafka {
                    broker: self.broker.to_owned(),
                    api: "ApiVersions",
                    code: super::KafkaCode(response.error_code),
                });
            }
            return Ok(ApiVersions::new(
                response
                    .api_keys
                    .iter()
                    .map(|a| (a.api_key, a.min_version, a.max_version)),
            ));
        }
    }

    async fn login(&mut self, versions: &ApiVersions) -> Result<()> {
        match &self.settings.login {
            Login::None => Ok(()),
            Login::Exchange {
                mechanism,
                user,
                password,
            } => {
                let fail = |reason: String| Error::SaslLogin {
                    mechanism: mechanism.name().to_owned(),
                    user: user.clone(),
                    broker: self.broker.to_owned(),
                    reason,
                };
                let auth_version = self.handshake(versions, mechanism.name(), &fail).await?;
                let mut exchange = ClientAuthenticator::new(*mechanism, user, password.clone());
                let mut message = exchange.start();
                loop {
                    let answer = self.authenticate(message, auth_version, &fail).await?;
                    match exchange.step(&answer) {
                        Ok(ClientStep::Continue(next)) => message = next,
                        Ok(ClientStep::Done) => return Ok(()),
                        Err(e) => return Err(fail(e.to_string())),
                    }
                }
            }
            Login::OauthBearer { token_file } => {
                let fail = |reason: String| Error::SaslLogin {
                    mechanism: "OAUTHBEARER".to_owned(),
                    user: format!("token from '{}'", token_file.display()),
                    broker: self.broker.to_owned(),
                    reason,
                };
                // A small file, read once per login.
                let token = std::fs::read_to_string(token_file)
                    .map_err(|e| fail(format!("cannot read the token file: {e}")))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(fail("the token file is empty".to_owned()));
                }
                let auth_version = self.handshake(versions, "OAUTHBEARER", &fail).await?;
                // RFC 7628 §3.1: gs2 header without authzid, then the auth key/value.
                let message = format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes();
                let answer = self.authenticate(message, auth_version, &fail).await?;
                if answer.is_empty() {
                    return Ok(());
                }
                // A server error arrives as a JSON challenge (RFC 7628 §3.2.2); the
                // client ends the exchange with a lone %x01, and the server then fails.
                let status = String::from_utf8_lossy(&answer).into_owned();
                let _ = self.authenticate(vec![1], auth_version, &fail).await;
                Err(fail(format!("the broker refused the token: {status}")))
            }
        }
    }

    /// SaslHandshake v1; returns the SaslAuthenticate version to use.
    async fn handshake(
        &mut self,
        versions: &ApiVersions,
        mechanism: &str,
        fail: &(dyn Fn(String) -> Error + Sync),
    ) -> Result<i16> {
        let handshake = versions.range(ApiKey::SaslHandshake as i16);
        let authenticate = versions.range(ApiKey::SaslAuthenticate as i16);
        let (Some((_, hs_max)), Some((auth_min, auth_max))) = (handshake, authenticate) else {
            return Err(fail(
                "the broker offers no SaslHandshake/SaslAuthenticate: is this listener SASL?"
                    .to_owned(),
            ));
        };
        if hs_max < 1 || auth_min > 2 {
            return Err(fail(format!(
                "the broker speaks SaslHandshake up to v{hs_max} and SaslAuthenticate from v{auth_min}; this client needs v1 and v0 to v2"
            )));
        }
        let response: SaslHandshakeResponse = self
            .round_trip(
                ApiKey::SaslHandshake,
                "SaslHandshake",
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_string(mechanism.to_owned())),
                1,
            )
            .await?;
        if response.error_code != 0 {
            let enabled: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(format!(
                "the broker refused the mechanism with {} (it enables: {})",
                super::KafkaCode(response.error_code),
                enabled.join(", ")
            )));
        }
        Ok(auth_max.min(2))
    }

    async fn authenticate(
        &mut self,
        message: Vec<u8>,
        version: i16,
        fail: &(dyn Fn(String) -> Error + Sync),
    ) -> Result<Bytes> {
        let response: SaslAuthenticateResponse = self
            .round_trip(
                ApiKey::SaslAuthenticate,
                "SaslAuthenticate",
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message)),
                version,
            )
            .await?;
        if response.error_code != 0 {
            let code = super::KafkaCode(response.error_code);
            return Err(fail(match response.error_message {
                Some(m) if !m.is_empty() => format!("{code}: {}", m.as_str()),
                _ => code.to_string(),
            }));
        }
        Ok(response.auth_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_lengths_are_checked_before_anything_is_read() {
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut huge, "b:1", 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds max_response_bytes"), "{err}");
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        let err = read_frame(&mut negative, "b:1", 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative frame length -2"), "{err}");
        let mut short: &[u8] = &[0, 0, 0, 2, 1, 2];
        let err = read_frame(&mut short, "b:1", 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter"), "{err}");
        // A length that promises more than arrives: the connection is lost, and only
        // what arrived was held.
        let mut truncated: &[u8] = &[0, 0, 0x10, 0, 1, 2, 3, 4];
        let err = read_frame(&mut truncated, "b:1", 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("closed by the broker"), "{err}");
        let mut fine: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 9];
        assert_eq!(
            &read_frame(&mut fine, "b:1", 8).await.unwrap()[..],
            &[0, 0, 0, 9]
        );
    }

    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use tokio::net::TcpListener;

    /// A request as a scripted server reads it: api key, version, correlation id.
    async fn read_request(s: &mut TcpStream) -> Option<(i16, i16, i32)> {
        let frame = read_frame(s, "client", 1 << 20).await.ok()?;
        let at = |i: usize| [frame[i], frame[i + 1]];
        let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        Some((i16::from_be_bytes(at(0)), i16::from_be_bytes(at(2)), id))
    }

    async fn answer<T: Encodable>(
        s: &mut TcpStream,
        id: i32,
        flexible_header: bool,
        body: &T,
        v: i16,
    ) {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        buf.put_i32(id);
        if flexible_header {
            buf.put_u8(0);
        }
        body.encode(&mut buf, v).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&buf).await.unwrap();
    }

    /// Accepts a connection and answers its ApiVersions v3 with Metadata v0 to v12.
    async fn accept(listener: &TcpListener) -> TcpStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let (key, version, id) = read_request(&mut s).await.unwrap();
        assert_eq!((key, version), (ApiKey::ApiVersions as i16, 3));
        let versions = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::Metadata as i16)
                .with_min_version(0)
                .with_max_version(12),
        ]);
        answer(&mut s, id, false, &versions, 3).await;
        s
    }

    fn metadata_request() -> RawRequest {
        RawRequest {
            api_key: ApiKey::Metadata as i16,
            api: "Metadata",
            version: 12,
            header_version: 2,
            response_header_version: 1,
            body: super::super::request::encode_body(
                &MetadataRequest::default().with_topics(None),
                "Metadata",
                12,
            )
            .unwrap(),
        }
    }

    fn cluster_id(mut body: Bytes) -> String {
        let r = MetadataResponse::decode(&mut body, 12).unwrap();
        r.cluster_id.unwrap().to_string()
    }

    #[tokio::test]
    async fn requests_are_pipelined_and_answers_matched_by_correlation_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut s = accept(&listener).await;
            // Both requests arrive before either is answered; the answers go back in
            // the other order.
            let first = read_request(&mut s).await.unwrap();
            let second = read_request(&mut s).await.unwrap();
            for (_, _, id) in [second, first] {
                let body = MetadataResponse::default()
                    .with_cluster_id(Some(StrBytes::from_string(format!("answer-{id}"))));
                answer(&mut s, id, true, &body, 12).await;
            }
            // Then a length no response may have: the connection is dropped.
            let (_, _, _) = read_request(&mut s).await.unwrap();
            s.write_all(&i32::MAX.to_be_bytes()).await.unwrap();
            // The client opens a new connection for its next request; this one is
            // never answered.
            let mut s2 = accept(&listener).await;
            let _ = read_request(&mut s2).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop((s, s2));
        });
        let cfg = ClientConfig {
            bootstrap: vec![format!("127.0.0.1:{port}")],
            request_timeout: Duration::from_millis(500),
            max_response_bytes: 1 << 20,
            ..ClientConfig::default()
        };
        let conns = Connections::new(&cfg).unwrap();
        let broker = BrokerAddr::new("127.0.0.1", port);
        let (a, b) = tokio::join!(
            conns.send(&broker, metadata_request()),
            conns.send(&broker, metadata_request())
        );
        let (a, b) = (cluster_id(a.unwrap()), cluster_id(b.unwrap()));
        let mut ids = [a.clone(), b.clone()];
        ids.sort();
        assert_eq!(ids, ["answer-2".to_owned(), "answer-3".to_owned()]);
        assert_ne!(a, b);
        let err = conns
            .send(&broker, metadata_request())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exceeds max_response_bytes (1048576)"),
            "{err}"
        );
        let err = conns
            .send(&broker, metadata_request())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("broker '127.0.0.1:{port}' did not answer Metadata within 500 ms")
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_broker_that_refuses_api_versions_v3_is_asked_in_v0() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (_, version, id) = read_request(&mut s).await.unwrap();
            assert_eq!(version, 3);
            let refusal = ApiVersionsResponse::default().with_error_code(UNSUPPORTED_VERSION);
            answer(&mut s, id, false, &refusal, 0).await;
            let (_, version, id) = read_request(&mut s).await.unwrap();
            assert_eq!(version, 0);
            let versions = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(ApiKey::Metadata as i16)
                    .with_min_version(0)
                    .with_max_version(5),
            ]);
            answer(&mut s, id, false, &versions, 0).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let cfg = ClientConfig {
            bootstrap: vec![format!("127.0.0.1:{port}")],
            ..ClientConfig::default()
        };
        let conns = Connections::new(&cfg).unwrap();
        let versions = conns
            .api_versions(&BrokerAddr::new("127.0.0.1", port))
            .await
            .unwrap();
        assert_eq!(versions.range(ApiKey::Metadata as i16), Some((0, 5)));
        server.abort();
    }

    #[tokio::test]
    async fn oauthbearer_sends_the_token_of_the_file_at_each_login() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (logins, mut got) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (_, _, id) = read_request(&mut s).await.unwrap();
                let api = |key: ApiKey, max| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(0)
                        .with_max_version(max)
                };
                let versions = ApiVersionsResponse::default().with_api_keys(vec![
                    api(ApiKey::Metadata, 12),
                    api(ApiKey::SaslHandshake, 1),
                    api(ApiKey::SaslAuthenticate, 2),
                ]);
                answer(&mut s, id, false, &versions, 3).await;
                let handshake = read_frame(&mut s, "client", 1 << 20).await.unwrap();
                assert_eq!(&handshake[..4], &[0, 17, 0, 1], "SaslHandshake v1");
                assert!(handshake.windows(11).any(|w| w == b"OAUTHBEARER"));
                let id =
                    i32::from_be_bytes([handshake[4], handshake[5], handshake[6], handshake[7]]);
                answer(&mut s, id, false, &SaslHandshakeResponse::default(), 1).await;
                let login = read_frame(&mut s, "client", 1 << 20).await.unwrap();
                assert_eq!(&login[..4], &[0, 36, 0, 2], "SaslAuthenticate v2");
                let id = i32::from_be_bytes([login[4], login[5], login[6], login[7]]);
                let _ = logins.send(login);
                answer(&mut s, id, true, &SaslAuthenticateResponse::default(), 2).await;
                open.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "first-token\n").unwrap();
        let cfg = ClientConfig {
            bootstrap: vec![format!("127.0.0.1:{port}")],
            security_protocol: super::super::SecurityProtocol::SaslPlaintext,
            sasl_mechanism: Some(super::super::SaslMechanism::OauthBearer),
            sasl_oauthbearer_token_file: Some(token_file.clone()),
            ..ClientConfig::default()
        };
        let conns = Connections::new(&cfg).unwrap();
        let broker = BrokerAddr::new("127.0.0.1", port);
        let sent = |login: &Bytes, token: &str| {
            let message = format!("n,,\x01auth=Bearer {token}\x01\x01");
            login
                .windows(message.len())
                .any(|w| w == message.as_bytes())
        };
        conns.api_versions(&broker).await.unwrap();
        assert!(sent(&got.recv().await.unwrap(), "first-token"));
        // A rotated token: the next login (a new connection) reads it.
        std::fs::write(&token_file, "second-token").unwrap();
        conns.disconnect(&broker);
        conns.api_versions(&broker).await.unwrap();
        assert!(sent(&got.recv().await.unwrap(), "second-token"));
        server.abort();
    }
}
