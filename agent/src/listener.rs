//! The agent's listener: it accepts connections up to a limit and serves
//! each as HTTP/1.1 with upgrades (for the WebSockets), with a deadline for
//! every request header.
//!
//! hyper's header read timeout runs whenever a connection waits for a
//! request head, so it closes a client that sends half a header and a
//! keep-alive connection that stays idle alike. A slot of the limit is held
//! for as long as the connection, or the WebSocket it became, lives; the
//! ingest WebSocket closes itself when no `hello` comes in time. So silent
//! sockets hold a slot for at most the timeout; and when every slot is taken,
//! a new connection closes the oldest one that has not sent a request yet,
//! so that a flood of silent sockets cannot keep a client that talks waiting
//! behind it. Only when every slot serves a real client does a new one wait
//! in the accept queue.
//!
//! With a certificate, every connection is TLS: the handshake runs under the
//! same header read timeout and counts as silence, so a client that opens a
//! socket and never says hello holds a slot no longer than one that never
//! sends a header; a client that speaks plain HTTP fails the handshake and
//! gets no answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::metrics::AgentMetrics;
use crate::tls::ServerTls;

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
pub(crate) struct Slot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The connections that have not sent a request yet, oldest first: the
/// ones a new connection may close when every slot is taken.
#[derive(Default)]
struct Silent {
    next: Mutex<(u64, BTreeMap<u64, Arc<Silence>>)>,
}

/// One connection's standing in [`Silent`].
struct Silence {
    id: u64,
    spoke: AtomicBool,
    evict: Notify,
}

impl Silent {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Arc<Silence>>)> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self) -> Arc<Silence> {
        let mut guard = self.lock();
        let id = guard.0;
        guard.0 += 1;
        let silence = Arc::new(Silence {
            id,
            spoke: AtomicBool::new(false),
            evict: Notify::new(),
        });
        guard.1.insert(id, silence.clone());
        silence
    }

    fn leave(&self, silence: &Silence) {
        self.lock().1.remove(&silence.id);
    }

    /// Closes the oldest connection that has not spoken; false when there is none.
    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().1.pop_first();
        match oldest {
            Some((_, silence)) => {
                silence.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets the open
/// requests finish (WebSockets are left to end on their own).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerTls>>,
    limits: ConnectionLimits,
    metrics: AgentMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let silent = Arc::new(Silent::default());
    let (stopping_tx, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
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
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every slot is taken: make room by closing the oldest
                // connection that has not sent a request; where all of them
                // serve real clients, wait for one to end.
                if silent.evict_oldest() {
                    metrics
                        .connections_closed
                        .with_label_values(&["evicted"])
                        .inc();
                }
                tokio::select! {
                    () = &mut stop => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let slot = Slot(Arc::new(permit));
        connections.spawn(connection(
            stream,
            tls.clone(),
            app.clone(),
            slot,
            limits.header_read_timeout,
            metrics.clone(),
            stopping.clone(),
            silent.clone(),
        ));
    }
    stopping_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    tls: Option<Arc<ServerTls>>,
    app: Router,
    slot: Slot,
    header_read_timeout: Duration,
    metrics: AgentMetrics,
    mut stopping: watch::Receiver<bool>,
    silent: Arc<Silent>,
) {
    let _ = stream.set_nodelay(true);
    let silence = silent.enter();
    let http = Http {
        app,
        slot,
        header_read_timeout,
        metrics,
    };
    match tls {
        None => http.serve(stream, &mut stopping, &silence, &silent).await,
        Some(tls) => {
            let handshake =
                tokio::time::timeout(header_read_timeout, tls.acceptor().accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(e)) => {
                        debug!("TLS handshake failed: {e}");
                        None
                    }
                    Err(_) => {
                        http.metrics
                            .connections_closed
                            .with_label_values(&["header_timeout"])
                            .inc();
                        debug!("closed a connection that did not finish its TLS handshake in time");
                        None
                    }
                },
                () = silence.evict.notified() => None,
                () = stopped(&mut stopping) => None,
            };
            if let Some(stream) = stream {
                http.serve(stream, &mut stopping, &silence, &silent).await;
            }
        }
    }
    silent.leave(&silence);
}

/// What serving HTTP on one connection needs.
struct Http {
    app: Router,
    slot: Slot,
    header_read_timeout: Duration,
    metrics: AgentMetrics,
}

impl Http {
    async fn serve<I>(
        self,
        io: I,
        stopping: &mut watch::Receiver<bool>,
        silence: &Arc<Silence>,
        silent: &Arc<Silent>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Http {
            app,
            slot,
            header_read_timeout,
            metrics,
        } = self;
        let (spoke, registry) = (silence.clone(), silent.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if !spoke.spoke.swap(true, Ordering::Relaxed) {
                registry.leave(&spoke);
            }
            request.extensions_mut().insert(slot.clone());
            let mut app = app.clone();
            tower_service::Service::call(&mut app, request)
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = silence.evict.notified() => {
                debug!("closed a connection that sent no request, to make room for a new one");
                Ok(())
            }
            () = stopped(stopping) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                metrics
                    .connections_closed
                    .with_label_values(&["header_timeout"])
                    .inc();
            }
            debug!("connection ended: {e}");
        }
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
