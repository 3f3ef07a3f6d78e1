//! The running broker: the Kafka listener and the life of its connections
//! (accept, the connection limit, timeouts, framing, and the call into the
//! API handlers), the clocks of retention, groups and audit, and the
//! broker's own /metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use crate::api::{self, supported};
use crate::config::BrokerConfig;
use crate::context::{Broker, now_ms};
use crate::guard;
use crate::{Error, Result};

/// A running broker.
pub struct RunningBroker {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
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
    let task = tokio::spawn(accept_loop(listener, broker.clone(), stop_rx));
    info!(%addr, "broker listening");
    Ok(RunningBroker {
        addr,
        metrics_addr,
        broker,
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

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>, mut stop: oneshot::Receiver<()>) {
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
                let connections = connections.clone();
                tokio::spawn(async move {
                    b.metrics.connections.inc();
                    if let Err(e) = serve_connection(&b, stream, peer, &conn).await {
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

/// Reads the rest of a request frame whose first byte was `first`.
async fn read_frame<R: AsyncRead + Unpin>(
    read: &mut R,
    first: u8,
    max: usize,
    peer: SocketAddr,
) -> Result<Bytes, Closed> {
    let mut size = [first, 0, 0, 0];
    read.read_exact(&mut size[1..]).await?;
    let len = i32::from_be_bytes(size);
    let len = match usize::try_from(len) {
        Ok(n) if (8..=max).contains(&n) => n,
        _ => {
            warn!(%peer, len, max, "closing the connection: request frame of {len} bytes is outside 8..={max} (max_frame_bytes)");
            return Err(Closed::Protocol(format!("frame length {len}")));
        }
    };
    // Read into spare capacity: zeroing a buffer that the socket then
    // overwrites costs as much as a copy on the produce path.
    let mut frame = BytesMut::with_capacity(len);
    while frame.len() < len {
        let want = (len - frame.len()) as u64;
        if (&mut *read).take(want).read_buf(&mut frame).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(frame.freeze())
}

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

async fn serve_connection(
    broker: &Broker,
    stream: TcpStream,
    peer: SocketAddr,
    conn: &Connection,
) -> Result<(), Closed> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut write = BufWriter::with_capacity(64 * 1024, write);
    let max = broker.cfg.max_frame_bytes;
    let request_timeout = broker.cfg.request_timeout;
    // Answers can be large (a whole Fetch); a client reading them slowly is
    // not idle, so writing is bounded by the idle timeout, not the request's.
    let write_timeout = broker.cfg.idle_timeout.max(request_timeout);
    let mut served = false;
    loop {
        // A client sends its first request at once (ApiVersions); a socket
        // that stays silent is closed after the request timeout.
        let idle = if served {
            broker.cfg.idle_timeout
        } else {
            request_timeout.min(broker.cfg.idle_timeout)
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
        let frame = bounded(
            conn,
            request_timeout,
            Closed::Slow(request_timeout),
            read_frame(&mut read, first, max, peer),
        )
        .await?;
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Ok(key) = ApiKey::try_from(api_key) else {
            warn!(%peer, api_key, "closing the connection: unknown API key {api_key}");
            return Err(Closed::Protocol(format!("unknown api key {api_key}")));
        };
        if !supported(key, version) {
            if key == ApiKey::ApiVersions {
                let body = api::unsupported_api_versions();
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
        conn.served.store(true, Ordering::Release);
        served = true;
    }
}

/// Runs the broker until ctrl-c or SIGTERM.
pub async fn run(cfg: BrokerConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut broker = start(cfg).await?;
    tokio::select! {
        _ = shutdown => {
            info!("shutting down");
            broker.shutdown().await;
        }
        _ = broker.wait() => error!("the broker's listener stopped"),
    }
    Ok(())
}
