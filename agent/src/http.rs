//! The agent's HTTP interface (§4 of the design): ingest over WebSocket and
//! POST, the REST API and the stream feed over the latest snapshot, the
//! Prometheus endpoint and the health checks.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tally_audit::wire::{self, Refused};
use tally_audit::{Reason, Snapshot};
use tokio::sync::oneshot;
use tracing::debug;

use crate::error::shown;
use crate::ingest::{Command, Ingest, Step, settle};
use crate::listener::Slot;
use crate::shared::Shared;

type AppState = Arc<Shared>;

/// The agent's routes.
pub(crate) fn router(shared: AppState) -> Router {
    let body_limit = shared.limits.max_message_bytes.saturating_mul(16);
    let api = Router::new()
        .route("/api/v1/ingest", get(ingest_ws).post(ingest_post))
        .route("/api/v1/topics", get(topics))
        .route("/api/v1/topics/{topic}/buckets", get(buckets))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/groups/{group}", get(group))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(reload_rules))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/snapshot", get(snapshot))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let open = if shared.protect_metrics {
        open.layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
    } else {
        open
    };
    api.merge(open)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not found",
                "no such endpoint; see GET /api/v1/…",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::map_response_with_state(
            shared.clone(),
            json_errors,
        ))
        .with_state(shared)
}

/// Every error answer is JSON `{"error", "detail"}` and is counted: the
/// ones axum makes itself (a body over the limit, a query or path that does
/// not parse, a wrong method) come as plain text and are rewritten here.
async fn json_errors(State(shared): State<AppState>, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    shared
        .metrics
        .http_errors
        .with_label_values(&[status.as_str()])
        .inc();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" if status == StatusCode::METHOD_NOT_ALLOWED => {
            "this endpoint does not take that method; see the Allow header".to_owned()
        }
        "" => reason.clone(),
        text => shown(text),
    };
    let mut out = error(status, &reason, detail);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn error(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "detail": detail.into()})),
    )
        .into_response()
}

fn token_matches(expected: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare in constant time so the token cannot be guessed byte by byte
    // (only its length can be learnt).
    bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        expected.as_bytes(),
    ))
}

async fn require_token(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &shared.token
        && !token_matches(expected, request.headers())
    {
        shared.metrics.refused("", Reason::Unauthorized);
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this agent requires \"Authorization: Bearer <token>\" (--token / TALLY_TOKEN)",
        );
    }
    next.run(request).await
}

fn not_ready() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready",
        "the agent is still loading its stored state",
    )
}

/// Liveness: 200 unless the agent can never serve its books (its stored
/// state did not load), which a restart or an operator must fix.
async fn healthz(State(shared): State<AppState>) -> Response {
    match shared.failed.get() {
        None => "ok\n".into_response(),
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, "failed", why.clone()),
    }
}

async fn readyz(State(shared): State<AppState>) -> Response {
    if let Some(why) = shared.failed.get() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "failed", why.clone());
    }
    if shared.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        not_ready()
    }
}

async fn metrics(State(shared): State<AppState>) -> Response {
    // The evaluation's text is shared, not copied: the body is that text
    // and then the live counters.
    let cached = shared.exposition().await;
    let live = axum::body::Bytes::from(shared.metrics.render_live());
    let length = cached.iter().map(|c| c.len()).sum::<usize>() + live.len();
    let pieces: Vec<axum::body::Bytes> = cached.iter().cloned().chain([live]).collect();
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        pieces.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".to_owned(),
            ),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response()
}

fn snap(shared: &Shared) -> Arc<Snapshot> {
    shared.snapshot.borrow().clone()
}

async fn snapshot(State(shared): State<AppState>) -> Response {
    Json(&*snap(&shared)).into_response()
}

async fn topics(State(shared): State<AppState>) -> Response {
    Json(json!({"topics": snap(&shared).topics})).into_response()
}

#[derive(Deserialize)]
struct BucketQuery {
    cluster: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

async fn buckets(
    State(shared): State<AppState>,
    Path(topic): Path<String>,
    Query(q): Query<BucketQuery>,
) -> Response {
    let s = snap(&shared);
    let in_cluster = q
        .cluster
        .as_ref()
        .map(|c| format!(" of cluster \"{}\"", shown(c)))
        .unwrap_or_default();
    let ambiguous = |clusters: Vec<&str>| {
        error(
            StatusCode::BAD_REQUEST,
            "ambiguous topic",
            format!(
                "topic \"{}\" exists in clusters {clusters:?}: add ?cluster=",
                shown(&topic)
            ),
        )
    };
    // The snapshot holds the buckets of the window; older ones are read from
    // the store (DESIGN §8) and judged the same way.
    let width = i64::try_from(s.width_ms).unwrap_or(i64::MAX).max(1);
    let window_start = s
        .at_ms
        .saturating_sub(i64::try_from(s.window_ms).unwrap_or(i64::MAX))
        .div_euclid(width)
        .saturating_mul(width);
    let stored_end = q.to.map_or(window_start, |t| t.min(window_start));
    let stored = match q.from {
        Some(from) if from < stored_end => {
            match stored_buckets(
                &shared,
                q.cluster.clone(),
                &topic,
                from..stored_end,
                s.at_ms,
            )
            .await
            {
                Ok(Some(found)) => Some(found),
                Ok(None) => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "unknown topic",
                        format!("topic \"{}\"{in_cluster} has no counts", shown(&topic)),
                    );
                }
                Err(Stored::Ambiguous(clusters)) => {
                    return ambiguous(clusters.iter().map(String::as_str).collect());
                }
                Err(Stored::Failed(response)) => return response,
            }
        }
        _ => None,
    };
    let matching: Vec<_> = s
        .buckets
        .iter()
        .filter(|b| {
            b.topic == topic
                && q.cluster.as_ref().is_none_or(|c| *c == b.cluster)
                && stored.as_ref().is_none_or(|(c, _)| *c == b.cluster)
        })
        .collect();
    let (cluster, mut buckets) = match (matching.as_slice(), stored) {
        ([], None) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown topic",
                format!(
                    "topic \"{}\"{in_cluster} has no counts in the window",
                    shown(&topic)
                ),
            );
        }
        ([], Some((cluster, stored))) => (cluster, stored),
        ([one], stored) => (
            one.cluster.clone(),
            stored.map(|(_, b)| b).unwrap_or_default(),
        ),
        (many, _) => return ambiguous(many.iter().map(|b| b.cluster.as_str()).collect()),
    };
    if let Some(view) = matching.first() {
        // The window's buckets all start at or after `window_start`, where
        // the stored ones end.
        buckets.extend(
            view.buckets
                .iter()
                .filter(|b| {
                    q.from.is_none_or(|f| b.bucket >= f) && q.to.is_none_or(|t| b.bucket < t)
                })
                .cloned(),
        );
    }
    Json(json!({"cluster": cluster, "topic": topic, "width_ms": s.width_ms, "buckets": buckets}))
        .into_response()
}

/// Why the stored buckets could not be read.
enum Stored {
    Ambiguous(Vec<String>),
    Failed(Response),
}

/// The bucket view of `topic` over `range` read from the store, judged at
/// `at_ms`, with the topic's cluster; None for a topic the ledger does not know.
async fn stored_buckets(
    shared: &Shared,
    cluster: Option<String>,
    topic: &str,
    range: std::ops::Range<i64>,
    at_ms: i64,
) -> Result<Option<(String, Vec<tally_audit::snapshot::BucketBooks>)>, Stored> {
    let (reply, plans) = oneshot::channel();
    let asked = Command::Plans {
        cluster,
        topic: topic.to_owned(),
        reply,
    };
    if shared.commands.send(asked).await.is_err() {
        return Err(Stored::Failed(not_ready()));
    }
    let plans = plans.await.map_err(|_| Stored::Failed(not_ready()))?;
    let plan = match plans.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => {
            return Err(Stored::Ambiguous(
                many.iter().map(|p| p.cluster.clone()).collect(),
            ));
        }
    };
    let path = shared.store_path.clone();
    let read = tokio::task::spawn_blocking(move || {
        let reader = crate::store::ColdReader::open(&path)?;
        let rows = reader.buckets(&plan.series_ids(), range)?;
        Ok::<_, crate::Error>((plan.cluster.clone(), plan.view(&rows, at_ms)))
    })
    .await;
    let failed = |detail: String| {
        Stored::Failed(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store",
            format!("cannot read the stored buckets: {detail}"),
        ))
    };
    match read {
        Ok(Ok(found)) => Ok(Some(found)),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}

async fn groups(State(shared): State<AppState>) -> Response {
    Json(json!({"groups": snap(&shared).groups})).into_response()
}

#[derive(Deserialize)]
struct ClusterQuery {
    cluster: Option<String>,
}

async fn group(
    State(shared): State<AppState>,
    Path(group): Path<String>,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let s = snap(&shared);
    let found: Vec<_> = s
        .groups
        .iter()
        .filter(|g| g.group == group && q.cluster.as_ref().is_none_or(|c| *c == g.cluster))
        .collect();
    match found.as_slice() {
        [] => error(
            StatusCode::NOT_FOUND,
            "unknown group",
            format!("group \"{}\" has no lag samples", shown(&group)),
        ),
        [one] => Json(one).into_response(),
        _ => error(
            StatusCode::BAD_REQUEST,
            "ambiguous group",
            format!(
                "group \"{}\" exists in several clusters: add ?cluster=",
                shown(&group)
            ),
        ),
    }
}

/// The cluster metadata and group states that collectors reported, per
/// (cluster, source).
async fn clusters(State(shared): State<AppState>) -> Response {
    Json(json!({"clusters": snap(&shared).clusters})).into_response()
}

async fn alerts(State(shared): State<AppState>) -> Response {
    Json(json!({"alerts": snap(&shared).alerts})).into_response()
}

/// The rules in force, as a summary.
fn rules_view(set: &tally_alerts::RuleSet) -> Value {
    let rules: Vec<Value> = set
        .rules
        .iter()
        .map(|r| {
            json!({"name": r.name, "kind": r.kind.name(), "severity": r.severity,
                   "for_ms": r.for_ms, "labels": r.labels, "annotations": r.annotations})
        })
        .collect();
    json!({"origin": set.origin, "rules": rules})
}

async fn rules(State(shared): State<AppState>) -> Response {
    Json(rules_view(&shared.alerting.rules())).into_response()
}

/// Reads the rules file again; a bad file leaves the rules in force.
async fn reload_rules(State(shared): State<AppState>) -> Response {
    let alerting = shared.alerting.clone();
    match tokio::task::spawn_blocking(move || alerting.reload()).await {
        Ok(Ok(set)) => {
            let mut view = rules_view(&set);
            view["status"] = json!("reloaded");
            Json(view).into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rules not reloaded",
            format!("{e}; the previous rules stay in force"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rules not reloaded",
            format!("the reload failed: {e}"),
        ),
    }
}

async fn sources(State(shared): State<AppState>) -> Response {
    Json(json!({"sources": snap(&shared).sources})).into_response()
}

async fn stream(
    State(shared): State<AppState>,
    slot: Option<Extension<Slot>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        // The socket holds its connection's slot of the limit while it lives.
        let _slot = slot;
        feed(shared, socket).await;
    })
}

/// The dashboard feed (format in `tally_audit::feed`): the whole snapshot,
/// then per tick the update that `crate::feed` built once for every
/// dashboard (or, for one that fell behind, its own).
async fn feed(shared: AppState, mut socket: WebSocket) {
    let (start, mut follower) = shared
        .feed
        .get_or_init(|| crate::feed::Feed::start(shared.snapshot.clone()))
        .follow();
    // A large agent's snapshot takes a while to encode: not on the runtime.
    let hello = tokio::task::spawn_blocking(move || crate::feed::encode_opening(&start))
        .await
        .ok()
        .flatten();
    if !send_feed(&mut socket, hello).await {
        return;
    }
    loop {
        tokio::select! {
            update = follower.next() => {
                if !send_feed(&mut socket, update).await {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Sends one frame, in its parts; false when there is none (the feed
/// ended) or the dashboard is gone.
async fn send_feed(socket: &mut WebSocket, parts: Option<crate::feed::Parts>) -> bool {
    let Some(parts) = parts else {
        return false;
    };
    for text in parts.iter() {
        if socket.send(WsMessage::Text(text.clone())).await.is_err() {
            return false;
        }
    }
    true
}

async fn ingest_ws(
    State(shared): State<AppState>,
    slot: Option<Extension<Slot>>,
    ws: WebSocketUpgrade,
) -> Response {
    if !shared.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    // Frames a little over the limit still get an error reply; far larger
    // ones end the connection, which bounds what one peer can make us hold.
    let frame_limit = shared.limits.max_message_bytes.saturating_mul(4);
    ws.max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            ingest_session(shared, socket).await;
        })
}

const MAX_IN_FLIGHT: usize = 10_000;

async fn ingest_session(shared: AppState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let hello_deadline = tokio::time::Instant::now() + shared.hello_timeout;
    let mut ingest = Ingest::new(shared);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(hello_deadline), if ingest.session.is_none() => {
                let shared = &ingest.shared;
                shared.metrics.connections_closed.with_label_values(&["hello_timeout"]).inc();
                let reply = ingest.refuse(&Refused {
                    seq: None,
                    error: tally_audit::Error::new(
                        Reason::Protocol,
                        format!(
                            "no hello within \"{}\": open the session with a hello first (--hello-timeout)",
                            humantime::format_duration(ingest.shared.hello_timeout)
                        ),
                    ),
                });
                let _ = sink.send(WsMessage::Text(reply.to_json().into())).await;
                let _ = sink.send(WsMessage::Close(None)).await;
                break;
            }
            done = in_flight.next(), if !in_flight.is_empty() => {
                let Some((seq, outcome)) = done else { continue };
                let Some(reply) = settle(seq, outcome) else { break };
                if sink.send(WsMessage::Text(reply.to_json().into())).await.is_err() {
                    break;
                }
            }
            frame = stream.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                let bytes = match frame {
                    Some(Ok(WsMessage::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(WsMessage::Binary(b))) => b.to_vec(),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | None => break,
                    Some(Err(e)) => {
                        debug!("ingest connection ended: {e}");
                        break;
                    }
                };
                match ingest.step(&bytes).await {
                    Step::Reply(reply) => {
                        if sink.send(WsMessage::Text(reply.to_json().into())).await.is_err() {
                            break;
                        }
                    }
                    Step::Later(seq, rx) => in_flight.push(async move { (seq, rx.await) }),
                }
            }
        }
    }
    // Let what was applied settle before the session closes.
    while let Some((seq, outcome)) = in_flight.next().await {
        if let Some(reply) = settle(seq, outcome) {
            let _ = sink.send(WsMessage::Text(reply.to_json().into())).await;
        }
    }
    ingest.close();
}

/// How many buffers of POST bodies are kept for later bodies (each as large
/// as the largest body read into it, at most the body limit).
const BODY_BUFFERS_KEPT: usize = 2;

/// A POST body, read into a buffer that goes back to
/// [`Shared::body_buffers`] when dropped: a steady feed of large batches
/// reuses the same memory, where a fresh buffer per body had its pages
/// faulted in and zeroed each time (a tenth of the agent's CPU at 100,000
/// lag partitions).
struct BodyBuffer<'a> {
    bytes: Vec<u8>,
    pool: &'a std::sync::Mutex<Vec<Vec<u8>>>,
}

impl std::ops::Deref for BodyBuffer<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for BodyBuffer<'_> {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < BODY_BUFFERS_KEPT
        {
            pool.push(bytes);
        }
    }
}

/// Reads a POST body within the size limit and the body timeout; an
/// answer to send instead when it cannot.
async fn read_body(shared: &Shared, request: Request) -> Result<BodyBuffer<'_>, Response> {
    use http_body_util::BodyExt;
    let limit = shared.limits.max_message_bytes.saturating_mul(16);
    let too_large = |size: String| {
        shared.metrics.refused("", Reason::Oversize);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::Oversize.as_str(),
            format!(
                "a body of {size} bytes is over the limit of {limit} bytes: send smaller batches (16 × --max-message-bytes)"
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&n| n > limit as u64) {
        return Err(too_large(format!("\"{size}\"")));
    }
    let pool = &shared.body_buffers;
    let mut buffer = BodyBuffer {
        bytes: pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default(),
        pool,
    };
    let mut body = request.into_body();
    // Grows with what arrives, never with what the headers say.
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buffer.bytes.len().saturating_add(data.len()) > limit {
                    return Ok(false);
                }
                buffer.bytes.extend_from_slice(&data);
            }
        }
        Ok::<bool, axum::Error>(true)
    };
    match tokio::time::timeout(shared.body_timeout, read).await {
        Ok(Ok(true)) => Ok(buffer),
        Ok(Ok(false)) => Err(too_large(format!("more than \"{limit}\""))),
        Ok(Err(e)) => {
            shared.metrics.refused("", Reason::Malformed);
            Err(error(
                StatusCode::BAD_REQUEST,
                Reason::Malformed.as_str(),
                format!("the body could not be read: {}", shown(&e.to_string())),
            ))
        }
        Err(_) => {
            shared.metrics.refused("", Reason::Protocol);
            Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body did not arrive within \"{}\" (--header-read-timeout)",
                    humantime::format_duration(shared.body_timeout)
                ),
            ))
        }
    }
}

async fn ingest_post(State(shared): State<AppState>, request: Request) -> Response {
    if !shared.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    let body = match read_body(&shared, request).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let items = match wire::split_batch(&body, &shared.limits) {
        Ok(items) => items,
        Err(e) => {
            shared.metrics.refused("", e.reason);
            return error(StatusCode::BAD_REQUEST, e.reason.as_str(), e.detail);
        }
    };
    let mut ingest = Ingest::new(shared.clone());
    let mut replies = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if i > 0 && ingest.session.is_none() {
            replies.push(ingest.refuse(&Refused {
                seq: None,
                error: tally_audit::Error::new(
                    Reason::Protocol,
                    "the batch's first element must be an accepted hello",
                ),
            }));
            continue;
        }
        let reply = match ingest.step(item.get().as_bytes()).await {
            Step::Reply(r) => r,
            Step::Later(seq, rx) => match settle(seq, rx.await) {
                Some(r) => r,
                None => {
                    ingest.close();
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not stored",
                        "the state database did not accept the batch; send it again",
                    );
                }
            },
        };
        replies.push(reply);
    }
    ingest.close();
    Json(replies).into_response()
}
