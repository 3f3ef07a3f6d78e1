//! The agent's listener: it accepts connections up to a limit and serves
//! each as HTTP/1.1 with upgrades (for the WebSockets), with a deadline for
//! every request header.
//!
//! hyper's header read timeout runs whenever a connection waits for a
//! request head, so it closes a client that sends half a header and a
//! keep-alive connection that stays idle alike. A slot of the limit is held
//! for as long as the connection, or the WebSocket it became, lives; the
//! ingest WebSocket closes itself when no `hello` comes in time. So silent
//! sockets hold a slot for at most the timeout, and a client beyond the limit
//! waits in the accept queue for a slot instead of being refused.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::metrics::AgentMetrics;

/// How the listener bounds its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Time to send a request header, or to start the next on a keep-alive connection.
    pub(crate) header_read_timeout: Duration,
}

/// A slot of the connection limit. Every request carries one (as an
/// extension); a WebSocket handler keeps it for as long as the socket lives.
#[derive(Clone)]
pub(crate) struct Slot(#[allow(dead_code)] Arc<SlotInner>);

struct SlotInner {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets the open
/// requests finish (WebSockets are left to end on their own).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: AgentMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Take a slot before accepting, so that a client beyond the limit
        // waits in the accept queue until a slot frees.
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        metrics.connections.inc();
        let slot = Slot(Arc::new(SlotInner {
            _permit: permit,
            open: metrics.connections.clone(),
        }));
        connections.spawn(connection(
            stream,
            app.clone(),
            slot,
            limits.header_read_timeout,
            metrics.clone(),
            stopping.clone(),
        ));
    }
    stopping_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    app: Router,
    slot: Slot,
    header_read_timeout: Duration,
    metrics: AgentMetrics,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(slot.clone());
        let mut app = app.clone();
        tower_service::Service::call(&mut app, request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stopping) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics
                .connections_timed_out
                .with_label_values(&["header"])
                .inc();
        }
        debug!("connection ended: {e}");
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
