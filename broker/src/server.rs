//! The running broker: the Kafka listener and the life of its connections
//! (accept, the connection limit, timeouts, TLS, SASL, framing, and the call
//! into the API handlers), the clocks of retention, groups and audit, and the
//! broker's own /metrics.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use parking_lot::Mutex;
use tally_kafka::sasl::{Authenticator, Step, UsersFile};
use tally_kafka::tls::{ServerTls, ServerTlsFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use crate::api::sasl_authenticate::{self, Outcome};
use crate::api::{self, sasl_handshake, supported};
use crate::config::BrokerConfig;
use crate::context::{Broker, now_ms};
use crate::guard;
use crate::{Error, Result};

/// A running broker.
pub struct RunningBroker {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    security: Arc<Security>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// The listener's TLS and SASL settings, as loaded from their files.
struct Security {
    tls: Option<ServerTls>,
    users: Option<UsersFile>,
}

impl Security {
    fn load(cfg: &BrokerConfig) -> Result<Security> {
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::load(ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: cfg.tls_client_ca.clone(),
                })
                .map_err(|e| Error::Config(format!("TLS (--tls-cert, --tls-key): {e}")))?,
            ),
            _ => None,
        };
        let users = match &cfg.sasl_users {
            Some(path) => Some(
                UsersFile::load(path)
                    .map_err(|e| Error::Config(format!("sasl_users (--sasl-users): {e}")))?,
            ),
            None => None,
        };
        Ok(Security { tls, users })
    }

    fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => info!("reloaded the TLS certificate and key"),
                Err(e) => {
                    error!("the TLS certificate was not reloaded, the one in force stays: {e}")
                }
            }
        }
        if let Some(users) = &self.users {
            match users.reload() {
                Ok(()) => info!(file = %users.path().display(), "reloaded the SASL users"),
                Err(e) => error!("the SASL users were not reloaded, those in force stay: {e}"),
            }
        }
    }

    fn listener_kind(&self) -> &'static str {
        match (&self.tls, &self.users) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        }
    }
}

impl RunningBroker {
    /// The Kafka listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The /metrics listener's address, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The broker's state.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Reads the TLS certificate and key and the SASL users file again (what
    /// SIGHUP does); new connections get them. A file that cannot be read
    /// keeps what is in force, and says so in the log.
    pub fn reload(&self) {
        self.security.reload();
    }

    /// Waits until the broker stops.
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Stops accepting and returns once the listener is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Opens the broker and starts serving.
pub async fn start(mut cfg: BrokerConfig) -> Result<RunningBroker> {
    cfg.check()?;
    let security = Arc::new(Security::load(&cfg)?);
    let listen = cfg.listen;
    // Bind first, so that a listener on port 0 advertises the port it got.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Io {
            what: "cannot listen on",
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "listener address",
        path: PathBuf::from(listen.to_string()),
        source,
    })?;
    cfg.listen = addr;
    let metrics_listen = cfg.metrics_listen;
    let broker = Arc::new(
        tokio::task::spawn_blocking(move || Broker::open(cfg))
            .await
            .map_err(|e| Error::Config(format!("broker start-up failed: {e}")))??,
    );
    let metrics_addr = match metrics_listen {
        Some(m) => Some(crate::metrics::serve(m, broker.clone()).await?),
        None => None,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(
        listener,
        broker.clone(),
        security.clone(),
        stop_rx,
    ));
    let security_protocol = security.listener_kind();
    let mtls = security
        .tls
        .as_ref()
        .is_some_and(ServerTls::requires_client_certificate);
    info!(%addr, security_protocol, client_certificates = mtls, "broker listening");
    Ok(RunningBroker {
        addr,
        metrics_addr,
        broker,
        security,
        stop: Some(stop_tx),
        task,
    })
}

/// One client connection, as the connection limit sees it.
struct Connection {
    /// When it last completed a request, or was accepted.
    last_done: Mutex<Instant>,
    /// Whether it has completed a request yet.
    served: AtomicBool,
    /// Whether a request of it is being handled.
    busy: AtomicBool,
    /// Told to close, to make room for a new connection.
    close: Notify,
}

/// The open client connections. At the limit, a new connection takes the
/// place of one that has no request being handled: the oldest of those that
/// never completed a request (silent or trickling sockets, so that a flood
/// of them pushes out its own), else the one idle the longest. A client is
/// refused only when every connection is busy.
struct Connections {
    limit: usize,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// What admitting a connection did.
enum Admitted {
    /// There was room.
    Room(u64, Arc<Connection>),
    /// Another connection was told to close to make room.
    Evicted(u64, Arc<Connection>),
    /// Every connection is busy.
    Full,
}

impl Connections {
    fn new(limit: usize) -> Self {
        Connections {
            limit,
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self) -> Admitted {
        let mut open = self.open.lock();
        let mut evicted = false;
        if open.len() >= self.limit {
            let victim = open
                .iter()
                .filter(|(_, c)| !c.busy.load(Ordering::Acquire))
                .min_by_key(|(_, c)| (c.served.load(Ordering::Acquire), *c.last_done.lock()))
                .map(|(id, _)| *id);
            let Some(victim) = victim.and_then(|id| open.remove(&id)) else {
                return Admitted::Full;
            };
            victim.close.notify_one();
            evicted = true;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            last_done: Mutex::new(Instant::now()),
            served: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            close: Notify::new(),
        });
        open.insert(id, conn.clone());
        if evicted {
            Admitted::Evicted(id, conn)
        } else {
            Admitted::Room(id, conn)
        }
    }

    fn leave(&self, id: u64) {
        self.open.lock().remove(&id);
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    security: Arc<Security>,
    mut stop: oneshot::Receiver<()>,
) {
    let connections = Arc::new(Connections::new(broker.cfg.max_connections));
    let mut maintain = tokio::time::interval(broker.cfg.retention_check);
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Session timeouts and rebalance deadlines, apart from retention, which
    // may take long.
    let groups_clock = {
        let b = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(GROUPS_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                b.groups.tick(Instant::now());
            }
        })
    };
    // Transactions a stop interrupted are finished once the offsets are
    // loaded; open ones past their timeout are aborted.
    let txn_clock = {
        let b = broker.clone();
        tokio::spawn(async move {
            crate::txn::recover(&b).await;
            let mut tick = tokio::time::interval(TXN_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                crate::txn::tick(&b).await;
            }
        })
    };
    let audit_clock = {
        let b = broker.clone();
        if let Some(audit) = b.audit() {
            audit.start_emitter();
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AUDIT_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let b = b.clone();
                let _ = tokio::task::spawn_blocking(move || b.audit_tick(now_ms())).await;
            }
        })
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = maintain.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.maintain(now_ms())).await;
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (id, conn) = match connections.admit() {
                    Admitted::Room(id, conn) => (id, conn),
                    Admitted::Evicted(id, conn) => {
                        broker.metrics.connection_closed("evicted");
                        debug!(%peer, limit = broker.cfg.max_connections, "at the connection limit: the connection longest without a completed request makes room");
                        (id, conn)
                    }
                    Admitted::Full => {
                        broker.metrics.connection_closed("refused");
                        warn!(%peer, limit = broker.cfg.max_connections, "connection refused: the broker is at its connection limit (max_connections) and every connection has a request in progress");
                        drop(stream);
                        continue;
                    }
                };
                let b = broker.clone();
                let security = security.clone();
                let connections = connections.clone();
                tokio::spawn(async move {
                    b.metrics.connections.inc();
                    if let Err(e) = serve(&b, &security, stream, peer, &conn).await {
                        match &e {
                            Closed::Idle(_) => b.metrics.connection_closed("idle"),
                            Closed::Slow(_) => b.metrics.connection_closed("request_timeout"),
                            _ => {}
                        }
                        debug!(%peer, "connection closed: {e}");
                    }
                    b.metrics.connections.dec();
                    connections.leave(id);
                });
            }
        }
    }
    groups_clock.abort();
    txn_clock.abort();
    broker.txns.sync();
    audit_clock.abort();
    if let Some(audit) = broker.audit() {
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            b.audit_tick(now_ms());
            if let Some(a) = b.audit() {
                a.store_all();
            }
        })
        .await;
        audit.flush(Duration::from_secs(2)).await;
    }
}

/// How often transaction timeouts are checked and the coordinator's state fsynced.
const TXN_TICK: Duration = Duration::from_millis(200);
/// How often group sessions and rebalance deadlines are checked.
const GROUPS_TICK: Duration = Duration::from_millis(100);
/// How often counts and lag go to the agent.
const AUDIT_TICK: Duration = Duration::from_secs(1);

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("no request for {0:?} (idle_timeout, or request_timeout before the first)")]
    Idle(Duration),
    #[error("a request took longer than {0:?} to arrive (request_timeout)")]
    Slow(Duration),
    #[error("closed to make room at the connection limit (max_connections)")]
    Evicted,
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("SASL authentication failed")]
    AuthFailed,
}

fn response_frame(
    correlation_id: i32,
    header_version: i16,
    body: &[u8],
) -> Result<BytesMut, Closed> {
    let mut header = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut header, header_version)
        .map_err(|e| Closed::Protocol(format!("cannot encode a response header: {e}")))?;
    let len = header.len() + body.len();
    let mut frame = BytesMut::with_capacity(4 + len);
    frame.put_i32(i32::try_from(len).map_err(|_| Closed::Protocol("response over 2 GiB".into()))?);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(body);
    Ok(frame)
}

fn holds_whole_frame(buf: &[u8]) -> bool {
    buf.len() >= 4 && {
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        usize::try_from(len).is_ok_and(|n| buf.len() >= 4 + n)
    }
}

/// Reads the rest of a request frame whose first byte was `first`, of
/// `min..=max` bytes after its size.
async fn read_frame<R: AsyncRead + Unpin>(
    read: &mut R,
    first: u8,
    min: usize,
    max: usize,
    peer: SocketAddr,
) -> Result<Bytes, Closed> {
    let mut size = [first, 0, 0, 0];
    read.read_exact(&mut size[1..]).await?;
    let len = i32::from_be_bytes(size);
    let len = match usize::try_from(len) {
        Ok(n) if (min..=max).contains(&n) => n,
        _ => {
            warn!(%peer, len, max, "closing the connection: request frame of {len} bytes is outside {min}..={max} (max_frame_bytes; before SASL authentication at most {MAX_UNAUTHENTICATED_FRAME})");
            return Err(Closed::Protocol(format!("frame length {len}")));
        }
    };
    // Read into spare capacity: zeroing a buffer that the socket then
    // overwrites costs as much as a copy on the produce path.
    let mut frame = BytesMut::with_capacity(len);
    // Bytes read since the last wait for the frame to gather.
    let mut burst = 0;
    while frame.len() < len {
        let rest = len - frame.len();
        let n = {
            let mut limited = (&mut *read).take(rest as u64);
            let mut read_some = std::pin::pin!(limited.read_buf(&mut frame));
            if rest >= TRICKLE_REST && burst < TRICKLE_BURST {
                // Look without waiting: a connection that ran dry now waits a tick.
                let now = read_some
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()));
                match now {
                    Poll::Ready(n) => Some(n?),
                    Poll::Pending => None,
                }
            } else {
                Some(read_some.await?)
            }
        };
        let Some(n) = n else {
            tokio::time::sleep(TRICKLE_WAIT).await;
            burst = 0;
            continue;
        };
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        burst += n;
    }
    Ok(frame.freeze())
}

/// A client that writes a large request in small pieces (librdkafka over
/// TLS hands the socket one TLS record of about 2 KB at a time) would wake
/// the broker, and cost it a receive, an ACK and a context switch, once per
/// piece. So while at least `TRICKLE_REST` bytes of a frame are still to
/// come and the connection ran dry after less than `TRICKLE_BURST`, the
/// next read waits `TRICKLE_WAIT` and then takes what gathered meanwhile.
/// The frame's last `TRICKLE_REST` bytes are read as they come, so a request
/// is answered at most a few waits later than it fully arrived, and only a
/// large one that arrived slowly.
const TRICKLE_REST: usize = 32 * 1024;
const TRICKLE_BURST: usize = 32 * 1024;
const TRICKLE_WAIT: Duration = Duration::from_millis(1);

/// Runs `io` unless the connection is told to close first or `limit` passes.
async fn bounded<T>(
    conn: &Connection,
    limit: Duration,
    timed_out: Closed,
    io: impl std::future::Future<Output = Result<T, Closed>>,
) -> Result<T, Closed> {
    tokio::select! {
        biased;
        _ = conn.close.notified() => Err(Closed::Evicted),
        done = tokio::time::timeout(limit, io) => done.unwrap_or(Err(timed_out)),
    }
}

/// Runs `io`, which writes an answer, unless `limit` passes. A connection
/// told to close meanwhile closes only after it: a request that was handled
/// gets its answer.
async fn answering(
    limit: Duration,
    io: impl std::future::Future<Output = Result<(), Closed>>,
) -> Result<(), Closed> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or(Err(Closed::Slow(limit)))
}

/// The largest frame a connection may send before it has authenticated
/// (Kafka's `sasl.server.max.receive.size`): a stranger cannot make the
/// broker hold a large buffer.
const MAX_UNAUTHENTICATED_FRAME: usize = 512 * 1024;

/// The buffer between the socket and rustls on a TLS listener.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// Where a connection stands with SASL.
enum Auth {
    /// No SASL on this listener, or the client has logged in.
    Open,
    /// SASL is required and no handshake has happened yet.
    Start,
    /// After SaslHandshake v1: SaslAuthenticate requests carry the exchange.
    Exchange(Authenticator),
    /// After SaslHandshake v0: the next frames are bare SASL tokens.
    RawTokens(Authenticator),
}

/// Runs one connection: the TLS handshake when the listener speaks TLS, then
/// its requests. The handshake runs here, not in the accept loop, so a slow
/// one holds up no other client; it must end within the request timeout, and
/// until the first request the connection is among the first to make room at
/// the connection limit.
async fn serve(
    broker: &Broker,
    security: &Security,
    stream: TcpStream,
    peer: SocketAddr,
    conn: &Connection,
) -> Result<(), Closed> {
    let _ = stream.set_nodelay(true);
    // TLS and SASL together must be done within the request timeout.
    let login_deadline = Instant::now() + broker.cfg.request_timeout;
    match &security.tls {
        None => {
            let (read, write) = stream.into_split();
            serve_connection(broker, security, read, write, peer, conn, login_deadline).await
        }
        Some(tls) => {
            let limit = broker.cfg.request_timeout.min(broker.cfg.idle_timeout);
            // rustls reads the socket 4 KiB at a time; a buffer beneath it
            // makes that one system call per 64 KiB of records.
            let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
            let stream = bounded(conn, limit, Closed::Idle(limit), async {
                tls.accept(stream, peer).await.map_err(|e| {
                    info!(%peer, "closing the connection: {e}");
                    Closed::Tls(e.to_string())
                })
            })
            .await?;
            let (read, write) = tokio::io::split(stream);
            serve_connection(broker, security, read, write, peer, conn, login_deadline).await
        }
    }
}

async fn serve_connection<R, W>(
    broker: &Broker,
    security: &Security,
    read: R,
    write: W,
    peer: SocketAddr,
    conn: &Connection,
    login_deadline: Instant,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut write = BufWriter::with_capacity(64 * 1024, write);
    let request_timeout = broker.cfg.request_timeout;
    // Answers can be large (a whole Fetch); a client reading them slowly is
    // not idle, so writing is bounded by the idle timeout, not the request's.
    let write_timeout = broker.cfg.idle_timeout.max(request_timeout);
    let sasl = security.users.is_some();
    let mut auth = if sasl { Auth::Start } else { Auth::Open };
    let mut served = false;
    loop {
        let open = matches!(auth, Auth::Open);
        let max = if open {
            broker.cfg.max_frame_bytes
        } else {
            broker.cfg.max_frame_bytes.min(MAX_UNAUTHENTICATED_FRAME)
        };
        // A client sends its first request at once (ApiVersions); a socket
        // that stays silent, or does not log in, is closed after the request
        // timeout.
        let idle = if served && open {
            broker.cfg.idle_timeout
        } else if open {
            request_timeout.min(broker.cfg.idle_timeout)
        } else {
            login_deadline
                .saturating_duration_since(Instant::now())
                .min(broker.cfg.idle_timeout)
        };
        let first = bounded(conn, idle, Closed::Idle(idle), async {
            match read.read_u8().await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        let Some(first) = first else { return Ok(()) };
        let min = if matches!(auth, Auth::RawTokens(_)) {
            0
        } else {
            8
        };
        let frame = bounded(
            conn,
            request_timeout,
            Closed::Slow(request_timeout),
            read_frame(&mut read, first, min, max, peer),
        )
        .await?;
        if let Auth::RawTokens(authenticator) = &mut auth {
            let answer = raw_token(broker, authenticator, &frame, peer)?;
            if answer.done {
                auth = Auth::Open;
            }
            answering(write_timeout, async {
                write.write_all(&answer.frame).await?;
                Ok(write.flush().await?)
            })
            .await?;
            continue;
        }
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Ok(key) = ApiKey::try_from(api_key) else {
            warn!(%peer, api_key, "closing the connection: unknown API key {api_key}");
            return Err(Closed::Protocol(format!("unknown api key {api_key}")));
        };
        if !supported(key, version, sasl) {
            if key == ApiKey::ApiVersions {
                let body = api::unsupported_api_versions(sasl);
                let frame = response_frame(correlation_id, 0, &body)?;
                answering(write_timeout, async {
                    write.write_all(&frame).await?;
                    Ok(write.flush().await?)
                })
                .await?;
                continue;
            }
            warn!(%peer, api = ?key, version, "closing the connection: {key:?} v{version} is not served (see ApiVersions)");
            return Err(Closed::Protocol(format!("{key:?} v{version} not served")));
        }
        let sasl_request = matches!(key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        if !open && !sasl_request && key != ApiKey::ApiVersions {
            warn!(%peer, api = ?key, version, "closing the connection: {key:?} before SASL authentication (only ApiVersions, SaslHandshake and SaslAuthenticate are answered until then)");
            return Err(Closed::Protocol(format!(
                "{key:?} before SASL authentication"
            )));
        }
        let header_version = key.request_header_version(version);
        let (body, client_id) = match guard::check_request_header(&frame, header_version) {
            Ok(n) => {
                let mut header = frame.slice(..n);
                match RequestHeader::decode(&mut header, header_version) {
                    Ok(h) => (frame.slice(n..), h.client_id),
                    Err(e) => {
                        warn!(%peer, api = ?key, version, "closing the connection: bad request header: {e}");
                        return Err(Closed::Protocol("bad header".into()));
                    }
                }
            }
            Err(e) => {
                warn!(%peer, api = ?key, version, "closing the connection: bad request header: {e}");
                return Err(Closed::Protocol(e.to_string()));
            }
        };
        if sasl_request {
            // A SASL body is one string or one byte string, which
            // kafka-protocol reads within the frame without reserving room.
            let started = Instant::now();
            let (answer, close) = sasl_step(broker, security, &mut auth, key, version, body, peer)?;
            broker.metrics.request(key, started.elapsed());
            let frame = response_frame(
                correlation_id,
                key.response_header_version(version),
                &answer,
            )?;
            answering(write_timeout, async {
                write.write_all(&frame).await?;
                Ok(write.flush().await?)
            })
            .await?;
            if let Some(close) = close {
                return Err(close);
            }
            if matches!(auth, Auth::Open) {
                *conn.last_done.lock() = Instant::now();
                conn.served.store(true, Ordering::Release);
                served = true;
            }
            continue;
        }
        if let Err(e) = guard::check_request_body(api_key, version, &body) {
            warn!(%peer, api = ?key, version, "closing the connection: malformed request: {e}");
            return Err(Closed::Protocol(e.to_string()));
        }
        let started = Instant::now();
        let caller = api::Caller { client_id, peer };
        conn.busy.store(true, Ordering::Release);
        let response = api::dispatch(broker, key, version, body, &caller).await;
        conn.busy.store(false, Ordering::Release);
        broker.metrics.request(key, started.elapsed());
        match response {
            Ok(Some(body)) => {
                let frame =
                    response_frame(correlation_id, key.response_header_version(version), &body)?;
                drop(body);
                answering(write_timeout, async { Ok(write.write_all(&frame).await?) }).await?;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(%peer, api = ?key, version, "closing the connection: {}", e.0);
                return Err(Closed::Protocol(e.0));
            }
        }
        // Answers to pipelined requests that are already here go out in one
        // flush; nothing waits behind a request that needs no answer.
        if !holds_whole_frame(read.buffer()) {
            answering(write_timeout, async { Ok(write.flush().await?) }).await?;
        }
        *conn.last_done.lock() = Instant::now();
        if open {
            // Until it logs in, a connection is among the first to make room.
            conn.served.store(true, Ordering::Release);
        }
        served = true;
    }
}

/// One SaslHandshake or SaslAuthenticate: the answer's body, and why the
/// connection closes after it, if it does.
fn sasl_step(
    broker: &Broker,
    security: &Security,
    auth: &mut Auth,
    key: ApiKey,
    version: i16,
    mut body: Bytes,
    peer: SocketAddr,
) -> Result<(BytesMut, Option<Closed>), Closed> {
    let encoding = |e: api::DecodeFailure| Closed::Protocol(e.0);
    let Some(users) = &security.users else {
        return Err(Closed::Protocol(format!("{key:?} without SASL")));
    };
    if key == ApiKey::SaslHandshake {
        let request: SaslHandshakeRequest = api::decode(&mut body, version).map_err(encoding)?;
        if !matches!(auth, Auth::Start) {
            warn!(%peer, "closing the connection: SaslHandshake out of order (ILLEGAL_SASL_STATE)");
            let answer =
                api::encode(&sasl_handshake::illegal_state(), version).map_err(encoding)?;
            return Ok((
                answer,
                Some(Closed::Protocol("SaslHandshake out of order".into())),
            ));
        }
        let (response, chosen) = sasl_handshake::handle(&request);
        match chosen {
            Some(mechanism) => {
                let authenticator = Authenticator::new(mechanism, users.users());
                *auth = if version == 0 {
                    Auth::RawTokens(authenticator)
                } else {
                    Auth::Exchange(authenticator)
                };
            }
            None => {
                info!(%peer, mechanism = %request.mechanism, "SASL mechanism not enabled: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 are");
            }
        }
        return Ok((api::encode(&response, version).map_err(encoding)?, None));
    }
    let request: SaslAuthenticateRequest = api::decode(&mut body, version).map_err(encoding)?;
    let Auth::Exchange(authenticator) = auth else {
        warn!(%peer, "closing the connection: SaslAuthenticate without a SaslHandshake before it, or after the login (ILLEGAL_SASL_STATE)");
        let answer = api::encode(&sasl_authenticate::illegal_state(), version).map_err(encoding)?;
        return Ok((
            answer,
            Some(Closed::Protocol("SaslAuthenticate out of order".into())),
        ));
    };
    let mechanism = authenticator.mechanism();
    let (response, outcome) = sasl_authenticate::handle(authenticator, &request);
    let close = match outcome {
        Outcome::Continue => None,
        Outcome::Done(user) => {
            debug!(%peer, user, %mechanism, "authenticated");
            *auth = Auth::Open;
            None
        }
        Outcome::Failed(e) => {
            login_failed(broker, &e, peer);
            Some(Closed::AuthFailed)
        }
    };
    Ok((api::encode(&response, version).map_err(encoding)?, close))
}

fn login_failed(broker: &Broker, e: &tally_kafka::sasl::AuthError, peer: SocketAddr) {
    let mechanism = e.mechanism();
    broker.metrics.auth_failed(mechanism.name());
    warn!(%peer, user = e.user().unwrap_or(""), %mechanism, "SASL authentication failed: {}", e.message());
}

/// The answer to a bare SASL token (after SaslHandshake v0).
struct RawAnswer {
    frame: BytesMut,
    done: bool,
}

/// One bare SASL token after SaslHandshake v0: the answer is a bare token
/// too. A refused login has no way to say why: the connection closes, as
/// Kafka closes it.
fn raw_token(
    broker: &Broker,
    authenticator: &mut Authenticator,
    token: &[u8],
    peer: SocketAddr,
) -> Result<RawAnswer, Closed> {
    let mechanism = authenticator.mechanism();
    let (bytes, done) = match authenticator.step(token) {
        Ok(Step::Continue(bytes)) => (bytes, false),
        Ok(Step::Done { user, response }) => {
            debug!(%peer, user, %mechanism, "authenticated");
            (response, true)
        }
        Err(e) => {
            login_failed(broker, &e, peer);
            return Err(Closed::AuthFailed);
        }
    };
    let mut frame = BytesMut::with_capacity(4 + bytes.len());
    frame.put_u32(
        u32::try_from(bytes.len()).map_err(|_| Closed::Protocol("token over 4 GiB".into()))?,
    );
    frame.extend_from_slice(&bytes);
    Ok(RawAnswer { frame, done })
}

/// Runs the broker until ctrl-c or SIGTERM; SIGHUP reloads the TLS
/// certificate and the SASL users.
pub async fn run(cfg: BrokerConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut broker = start(cfg).await?;
    let security = broker.security.clone();
    let reloads = tokio::spawn(reload_on_hangup(security));
    tokio::select! {
        _ = shutdown => {
            info!("shutting down");
            broker.shutdown().await;
        }
        _ = broker.wait() => error!("the broker's listener stopped"),
    }
    reloads.abort();
    Ok(())
}

async fn reload_on_hangup(security: Arc<Security>) {
    if security.tls.is_none() && security.users.is_none() {
        return;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP: a new certificate or users file needs a restart");
            return;
        };
        while hangup.recv().await.is_some() {
            info!("SIGHUP: reloading the TLS certificate and the SASL users");
            security.reload();
        }
    }
}
