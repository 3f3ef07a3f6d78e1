//! The running agent: the ledger task that applies messages and evaluates on
//! its tick, the writer thread that commits to SQLite before anything is
//! acknowledged, and the HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_alerts::{Alerting, Evaluator};
use tally_audit::wire::Limits;
use tally_audit::{Message, Snapshot};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::config::AgentConfig;
use crate::ingest::{Command, Outcome};
use crate::ledger::{Applied, Ledger};
use crate::metrics::AgentMetrics;
use crate::shared::Shared;
use crate::store::{ColdReader, Store, WriteBatch};
use crate::{Error, Result};

pub use crate::now_ms;

/// A running agent. Dropping it does not stop it; call [`RunningAgent::shutdown`].
pub struct RunningAgent {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    otlp: Option<crate::otlp::OtlpExport>,
}

impl RunningAgent {
    /// The address the HTTP listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Waits until the agent stops (it stops on [`RunningAgent::shutdown`] or a fatal error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }

    /// Stops accepting, lets in-flight writes commit, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.server.await;
        if let Some(otlp) = self.otlp.take() {
            otlp.shutdown().await;
        }
    }
}

/// The rows one message changed, and who waits for them to be stored; or
/// (with no ack) rows of no message: sources, history, alert state.
struct Piece {
    batch: WriteBatch,
    ack: Option<oneshot::Sender<Outcome>>,
}

/// Pieces to store in one transaction, each under a savepoint of its own, so
/// that a piece that cannot be stored fails alone.
struct Flush {
    pieces: Vec<Piece>,
    /// The ledger's generation these rows close ([`Ledger::seal`]).
    generation: u64,
    /// Copy the write-ahead log into the database file after writing (see
    /// [`Store::checkpoint`]).
    checkpoint: bool,
}

impl Flush {
    fn absorb(&mut self, more: Flush) {
        self.pieces.extend(more.pieces);
        self.generation = self.generation.max(more.generation);
        self.checkpoint |= more.checkpoint;
    }
}

/// Starts the agent: binds the listener, loads stored state, and serves.
///
/// The listener answers `/healthz` at once and `/readyz` with 200 once the
/// stored state is loaded; ingest waits for the load.
pub async fn start(cfg: AgentConfig) -> Result<RunningAgent> {
    let ledger_cfg = cfg.ledger()?;
    // A bad rules file stops the start, before anything listens.
    let alerting = Alerting::new(cfg.rules_source())?;
    // So does a certificate or key that cannot be used.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(crate::tls::ServerTls::load(cert, key)?)),
        _ => None,
    };
    let listener = bind(cfg.listen).map_err(|e| Error::Io {
        what: format!("cannot listen on \"{}\"", cfg.listen),
        source: e,
    })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        what: "listener address".into(),
        source: e,
    })?;
    let notify_cfg = cfg.notify(addr)?;
    let store = Store::open(&cfg.data_dir)?;
    let (commands_tx, commands_rx) = mpsc::channel(4096);
    let empty = Snapshot {
        width_ms: ledger_cfg.width.ms(),
        grace_ms: ledger_cfg.grace_ms,
        window_ms: ledger_cfg.window_ms,
        ..Snapshot::default()
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(empty));
    let metrics = AgentMetrics::new();
    metrics.register_alerting(alerting.clone());
    let shared = Arc::new(Shared {
        commands: commands_tx,
        snapshot: snapshot_rx.clone(),
        rendered: tokio::sync::Mutex::new(None),
        metrics: metrics.clone(),
        limits: Limits {
            max_message_bytes: cfg.max_message_bytes,
            ..Limits::new(ledger_cfg.width)
        },
        retention_ms: ledger_cfg.retention_ms,
        grace_ms: ledger_cfg.grace_ms,
        hello_timeout: cfg.hello_timeout,
        body_timeout: cfg.header_read_timeout,
        token: cfg.token.clone(),
        protect_metrics: cfg.protect_metrics,
        ready: AtomicBool::new(false),
        failed: std::sync::OnceLock::new(),
        alerting: alerting.clone(),
        store_path: store.path().to_path_buf(),
        feed: std::sync::OnceLock::new(),
        body_buffers: std::sync::Mutex::new(Vec::new()),
    });

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let connection_limits = crate::listener::ConnectionLimits {
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout,
    };
    let metrics_for_listener = shared.metrics.clone();
    let app = crate::http::router(shared.clone());
    let tick = cfg.tick;
    let loader_shared = shared.clone();
    let loader_alerting = shared.alerting.clone();
    let server = tokio::spawn(async move {
        let ledger_task = tokio::spawn(async move {
            let started = Instant::now();
            let restored = tokio::task::spawn_blocking(move || restore(store, ledger_cfg)).await;
            let (store, ledger, alert_state, warm) = match restored {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    error!("cannot load stored state: {e}");
                    let _ = loader_shared
                        .failed
                        .set(format!("cannot load stored state: {e}"));
                    return;
                }
                Err(e) => {
                    error!("state loader failed: {e}");
                    let _ = loader_shared
                        .failed
                        .set(format!("the state loader failed: {e}"));
                    return;
                }
            };
            let skipped = ledger.restore_skipped();
            loader_shared
                .metrics
                .store_rows_skipped
                .set(i64::try_from(skipped.rows).unwrap_or(i64::MAX));
            if skipped.rows > 0 {
                warn!(
                    rows = skipped.rows,
                    first = ?skipped.examples,
                    "left out stored rows that cannot be read or used; the rest is loaded"
                );
            }
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "stored state loaded; the window's cells are read in while the agent serves"
            );
            let evaluator = Evaluator::new(alerting, notify_cfg, alert_state.as_deref());
            // The ledger gets a thread (and a runtime) of its own: its work
            // (a tick's evaluation, a chunk of cells read in, a large
            // message) then never holds up the tasks of the listener, which
            // keep the runtime's workers.
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let failed = loader_shared.clone();
            let spawned = std::thread::Builder::new()
                .name("tally-ledger".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(run_ledger(
                            ledger,
                            evaluator,
                            (store, warm),
                            commands_rx,
                            Arc::new(snapshot_tx),
                            loader_shared,
                            tick,
                        )),
                        Err(e) => {
                            error!("cannot start the ledger's runtime: {e}");
                            let _ = loader_shared
                                .failed
                                .set(format!("cannot start the ledger's runtime: {e}"));
                        }
                    }
                    let _ = done_tx.send(());
                });
            match spawned {
                Ok(_) => {
                    let _ = done_rx.await;
                }
                Err(e) => {
                    error!("cannot start the ledger's thread: {e}");
                    let _ = failed
                        .failed
                        .set(format!("cannot start the ledger's thread: {e}"));
                }
            }
        });
        let reloads = tokio::spawn(reload_on_hangup(loader_alerting, tls.clone()));
        let serve = crate::listener::serve(
            listener,
            app,
            tls,
            connection_limits,
            metrics_for_listener,
            async move {
                let _ = stop_rx.await;
            },
        );
        serve.await;
        reloads.abort();
        ledger_task.abort();
        let _ = ledger_task.await;
    });
    info!(%addr, scheme = cfg.scheme(), "agent listening");
    let otlp = match &cfg.otlp_endpoint {
        Some(url) => {
            match crate::otlp::OtlpExport::start(
                url,
                cfg.otlp_interval,
                snapshot_rx.clone(),
                metrics,
            ) {
                Ok(export) => Some(export),
                Err(e) => {
                    server.abort();
                    return Err(e);
                }
            }
        }
        None => None,
    };
    Ok(RunningAgent {
        addr,
        stop: Some(stop_tx),
        server,
        snapshot: snapshot_rx,
        otlp,
    })
}

/// Binds the listener with a long accept queue (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections, hostile or not, then waits
/// to be accepted instead of having its SYNs dropped and retried a second
/// later.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Where and what the window's stored cells are read from after a start
/// (see [`warm_up`]).
struct WarmUp {
    path: std::path::PathBuf,
    /// The halves of the window's buckets, one per reader thread.
    halves: [std::ops::Range<i64>; 2],
}

/// Loads the stored state the agent needs to be ready (DESIGN §8): the
/// sources, series, lag health, the window's history and each (series,
/// bucket)'s sum of the window, read beside the rest on a thread of its own.
/// The window's cells, which only later counts need (the last value of each
/// source), are read in after the agent is ready ([`warm_up`]); until then a
/// count reads its cell from the file, as a late count does.
fn restore(
    store: Store,
    cfg: crate::ledger::LedgerConfig,
) -> Result<(Store, Ledger, Option<String>, WarmUp)> {
    let now = now_ms();
    let started = Instant::now();
    let from = cfg.resident_from(now);
    let path = store.path().to_path_buf();
    let (meta, sums) = std::thread::scope(|scope| {
        let sums = scope.spawn(|| Store::read_sums(&path, from));
        let meta = store.load_without_cells(from);
        let sums = sums
            .join()
            .unwrap_or_else(|_| Err(Error::Config("the state reader thread panicked".into())));
        (meta, sums)
    });
    let (meta, (sums, unread)) = (meta?, sums?);
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        series = meta.series.len(),
        history = meta.history.len(),
        health = meta.health.len(),
        sums = sums.len(),
        "loaded everything but the cells"
    );
    let alert_state = meta
        .kv
        .iter()
        .find(|(k, _)| k == tally_alerts::STATE_KEY)
        .map(|(_, v)| v.clone());
    let width = cfg.width.ms() as i64;
    let mut ledger = Ledger::restore(cfg, meta)?;
    ledger.restore_sums(sums);
    ledger.note_unread(unread);
    ledger.attach_cold(Box::new(ColdReader::open(store.path())?), now);
    ledger.begin_warming();
    // The window's buckets split in two at a bucket boundary; the newest
    // half also takes whatever lies in the future.
    let middle = from.saturating_add((now.saturating_sub(from) / 2) / width * width);
    let warm = WarmUp {
        path,
        halves: [from..middle, middle..i64::MAX],
    };
    Ok((store, ledger, alert_state, warm))
}

/// What a reader of the window's cells hands the ledger.
enum Warm {
    Cells(Vec<crate::store::CellRow>),
    Done(Result<crate::store::Skipped>),
}

/// Starts two threads that read the window's stored cells, each half of its
/// buckets, in chunks, into `tx`; each ends with [`Warm::Done`].
fn warm_up(warm: WarmUp, tx: mpsc::Sender<Warm>) {
    for (i, buckets) in warm.halves.into_iter().enumerate() {
        let path = warm.path.clone();
        let sender = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tally-warm-{i}"))
            .spawn(move || {
                let read = Store::stream_cells(&path, 65_536, buckets, |chunk| {
                    sender.blocking_send(Warm::Cells(chunk)).is_ok()
                });
                let _ = sender.blocking_send(Warm::Done(read));
            });
        if let Err(e) = spawned {
            let _ = tx.try_send(Warm::Done(Err(Error::Config(format!(
                "cannot start a reader of the stored cells: {e}"
            )))));
        }
    }
}

/// Reloads the alert rules, where they come from a file, and the
/// listener's certificate and key on SIGHUP.
async fn reload_on_hangup(alerting: Arc<Alerting>, tls: Option<Arc<crate::tls::ServerTls>>) {
    #[cfg(unix)]
    {
        let rules = matches!(alerting.source(), Some(tally_alerts::RulesSource::File(_)));
        if !rules && tls.is_none() {
            return;
        }
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!(
                "cannot listen for SIGHUP: reload the rules with POST /api/v1/rules/reload; a new certificate needs a restart"
            );
            return;
        };
        while hangup.recv().await.is_some() {
            if rules {
                info!("SIGHUP: reloading the alert rules");
                // A failed reload keeps the rules in force and is logged.
                let _ = alerting.reload();
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => info!("SIGHUP: reloaded the TLS certificate and key"),
                    Err(e) => error!("SIGHUP: the TLS certificate in force is kept: {e}"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (alerting, tls);
}

async fn run_ledger(
    mut ledger: Ledger,
    mut evaluator: Evaluator,
    (store, warm): (Store, WarmUp),
    mut commands: mpsc::Receiver<Command>,
    snapshot: Arc<watch::Sender<Arc<Snapshot>>>,
    shared: Arc<Shared>,
    tick: Duration,
) {
    let (flush_tx, flush_rx) = mpsc::channel::<Flush>(8);
    // The newest generation of the ledger's rows that is committed: what the
    // ledger may drop from memory and read back from the file.
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = std::thread::Builder::new()
        .name("tally-store".into())
        .spawn({
            let metrics = shared.metrics.clone();
            let committed = committed.clone();
            move || write_loop(store, flush_rx, &metrics, &committed)
        });
    if let Err(e) = writer {
        error!("cannot start the store writer: {e}");
        let _ = shared
            .failed
            .set(format!("cannot start the store writer: {e}"));
        return;
    }
    // The snapshot is published as soon as it is evaluated; `/metrics` renders
    // it when a scrape asks (see `Shared::exposition`).
    let publish = |ledger: &mut Ledger, evaluator: &mut Evaluator| {
        let now = now_ms();
        ledger.evict(now, committed.load(Ordering::Acquire));
        let mut snap = ledger.evaluate(now);
        // The alerts are part of the same snapshot as the books they judge.
        evaluator.evaluate(&mut snap);
        shared.metrics.ledger_cells.set(ledger.cell_count() as i64);
        snapshot.send_replace(Arc::new(snap));
    };
    let first = Instant::now();
    publish(&mut ledger, &mut evaluator);
    debug!(
        elapsed_ms = first.elapsed().as_millis() as u64,
        "first evaluation"
    );
    shared.ready.store(true, Ordering::Release);
    shared.metrics.ready.set(1);
    // Ready: now the window's cells are read in, beside the ingest.
    let warming_since = Instant::now();
    let (warm_tx, mut warm_rx) = mpsc::channel::<Warm>(4);
    let mut readers = if ledger.is_warming() {
        warm.halves.len()
    } else {
        0
    };
    if readers > 0 {
        warm_up(warm, warm_tx);
    }
    let mut warm_failed = false;
    let skipped_at_start = ledger.restore_skipped().rows;
    // Copy the write-ahead log into the file after the next flush.
    let mut checkpoint = false;

    let mut pieces: Vec<Piece> = Vec::new();
    let mut evaluate = tokio::time::interval(tick);
    evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(Duration::from_millis(5));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Retention moves by a bucket at a time: the first prune waits a minute,
    // so that it does not hold up the first ticks after a start.
    let mut prune = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                handle(&mut ledger, cmd, &mut pieces, &shared);
                // Drain what is queued so that one flush carries many messages.
                while let Ok(cmd) = commands.try_recv() {
                    handle(&mut ledger, cmd, &mut pieces, &shared);
                    if pieces.len() >= 4096 {
                        break;
                    }
                }
            }
            _ = flush.tick() => {
                let mut batch = ledger.take_dirty();
                take_alert_state(&mut evaluator, &mut batch);
                if !batch.is_empty() {
                    pieces.push(Piece { batch, ack: None });
                }
                if !pieces.is_empty() || checkpoint {
                    // Every row handed out so far is in this flush: the
                    // generation sealed here is committed with it.
                    let f = Flush {
                        pieces: std::mem::take(&mut pieces),
                        generation: ledger.seal(),
                        checkpoint: std::mem::take(&mut checkpoint),
                    };
                    if flush_tx.send(f).await.is_err() {
                        error!("the store writer stopped; the agent stops acknowledging");
                        break;
                    }
                }
            }
            Some(warm) = warm_rx.recv(), if readers > 0 => match warm {
                Warm::Cells(chunk) => ledger.warm_cells(chunk),
                Warm::Done(read) => {
                    readers -= 1;
                    match read {
                        Ok(unread) => ledger.note_unread(unread),
                        Err(e) => {
                            warm_failed = true;
                            warn!("cannot read the window's stored cells in; counts keep reading theirs from the file: {e}");
                        }
                    }
                    if readers == 0 {
                        // The readers kept the log from being copied into
                        // the file meanwhile (the closes of the first
                        // evaluation, some MB): copied after the next
                        // flush, rather than at the commit of the first
                        // message that comes.
                        checkpoint = true;
                    }
                    if readers == 0 && !warm_failed {
                        ledger.warmed();
                        shared.metrics.ledger_cells.set(ledger.cell_count() as i64);
                        let skipped = ledger.restore_skipped();
                        shared.metrics.store_rows_skipped.set(
                            i64::try_from(skipped.rows).unwrap_or(i64::MAX),
                        );
                        if skipped.rows > skipped_at_start {
                            warn!(
                                rows = skipped.rows - skipped_at_start,
                                first = ?skipped.examples,
                                "left out stored rows that cannot be read or used (cells of the window); the rest is loaded"
                            );
                        }
                        info!(
                            cells = ledger.cell_count(),
                            elapsed_ms = warming_since.elapsed().as_millis() as u64,
                            "the window's stored cells are in memory"
                        );
                    }
                }
            },
            _ = evaluate.tick() => publish(&mut ledger, &mut evaluator),
            _ = prune.tick() => {
                match ledger.prune(now_ms(), committed.load(Ordering::Acquire)) {
                    Ok(Some(batch)) => {
                        debug!(
                            before = batch.prune_before.unwrap_or_default(),
                            "pruning the buckets older than the retention"
                        );
                        // The messages' rows still waiting for the next flush
                        // belong to the generation sealed here: they go in the
                        // same flush, so that this generation's commit covers them.
                        let mut all = std::mem::take(&mut pieces);
                        all.push(Piece { batch, ack: None });
                        let f = Flush { pieces: all, generation: ledger.seal(), checkpoint: false };
                        if flush_tx.send(f).await.is_err() {
                            error!("the store writer stopped; the agent stops acknowledging");
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!("cannot prune by retention now, trying again in a minute: {e}"),
                }
            }
        }
    }
    let mut batch = ledger.take_dirty();
    take_alert_state(&mut evaluator, &mut batch);
    pieces.push(Piece { batch, ack: None });
    let _ = flush_tx
        .send(Flush {
            pieces,
            generation: ledger.seal(),
            checkpoint: false,
        })
        .await;
}

/// Adds the alert states to the batch when they changed, so that a restarted
/// agent knows what it already announced.
fn take_alert_state(evaluator: &mut Evaluator, batch: &mut WriteBatch) {
    if let Some(state) = evaluator.take_state() {
        batch.kv.push((tally_alerts::STATE_KEY.to_owned(), state));
    }
}

fn handle(ledger: &mut Ledger, cmd: Command, pieces: &mut Vec<Piece>, shared: &Shared) {
    let now = now_ms();
    match cmd {
        Command::Hello { hello, reply } => {
            let session = ledger.hello(&hello, now).map_err(|e| match e {
                Error::Audit(a) => a,
                other => tally_audit::Error::new(tally_audit::Reason::BadField, other.to_string()),
            });
            let _ = reply.send(session);
        }
        Command::Apply {
            session,
            message,
            done,
        } => {
            let result = match &message {
                Message::Counts(c) => ledger.apply_counts(session, c.seq, &c.counts, now),
                Message::Lag(l) => ledger
                    .apply_lag(session, l, now)
                    .map(|()| Applied::default()),
                Message::Latency(l) => ledger
                    .apply_latency(session, l, now)
                    .map(|_| Applied::default()),
                Message::Forget(f) => ledger
                    .apply_forget(session, f, now)
                    .map(|()| Applied::default()),
                Message::Cluster(c) => ledger
                    .apply_cluster(session, c, now)
                    .map(|()| Applied::default()),
                Message::Hello(_) => Err(Error::Audit(tally_audit::Error::new(
                    tally_audit::Reason::Protocol,
                    "a session is already open on this connection: send hello once",
                ))),
            };
            match result {
                Ok(applied) => {
                    let out_of_range = applied.out_of_range;
                    if applied.duplicate_source > 0 {
                        let cluster = ledger.cluster_of(session).unwrap_or_default();
                        shared.metrics.refused_entries(
                            &cluster,
                            tally_audit::Reason::DuplicateSource,
                            applied.duplicate_source as u64,
                        );
                        if applied.first_duplicate {
                            warn!(
                                cluster = %cluster,
                                source = %ledger.source_name(session).unwrap_or_default(),
                                entries = applied.duplicate_source,
                                "refused broker and group counts (duplicate_source): another source reports those tiers of the topic in this cluster; a collector beside an instrumented broker, or two collectors, for one cluster? (logged once per source; counted in tally_ingest_errors_total)"
                            );
                        }
                    }
                    if out_of_range > 0 {
                        let cluster = ledger.cluster_of(session).unwrap_or_default();
                        shared.metrics.refused_entries(
                            &cluster,
                            tally_audit::Reason::BucketOutOfRange,
                            out_of_range as u64,
                        );
                        debug!(
                            out_of_range,
                            "dropped count entries whose bucket is outside the accepted range"
                        );
                    }
                    pieces.push(Piece {
                        batch: ledger.take_message_rows(),
                        ack: Some(done),
                    });
                }
                Err(e) => {
                    let err = match e {
                        Error::Audit(a) => a,
                        other => tally_audit::Error::new(
                            tally_audit::Reason::BadField,
                            other.to_string(),
                        ),
                    };
                    ledger.refused(Some(session));
                    let cluster = ledger.cluster_of(session).unwrap_or_default();
                    shared.metrics.refused(&cluster, err.reason);
                    warn!(reason = %err.reason, "ingest refused: {}", err.detail);
                    let _ = done.send(Err(err));
                }
            }
        }
        Command::Refused { session } => ledger.refused(session),
        Command::Goodbye { session } => ledger.goodbye(session),
        Command::Plans {
            cluster,
            topic,
            reply,
        } => {
            let _ = reply.send(ledger.topic_plans(cluster.as_deref(), &topic));
        }
    }
}

fn write_loop(
    mut store: Store,
    mut flushes: mpsc::Receiver<Flush>,
    metrics: &AgentMetrics,
    committed: &std::sync::atomic::AtomicU64,
) {
    // A flush whose transaction failed (a full disk, a lock held too long),
    // kept with its acks and written again, with what arrived meanwhile: its
    // rows are the ledger's newest values, which no resend would bring back
    // (a resend of an applied value changes nothing).
    let mut retry: Option<Flush> = None;
    let mut failures = 0_u32;
    loop {
        let mut f = match retry.take() {
            Some(mut f) => {
                // Taking in what arrives meanwhile, so that the ledger's
                // task never waits on a full channel.
                let until = Instant::now() + RETRY_PAUSE;
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                    while let Ok(more) = flushes.try_recv() {
                        f.absorb(more);
                    }
                }
                f
            }
            None => match flushes.blocking_recv() {
                Some(f) => f,
                None => break,
            },
        };
        // Merge what queued up meanwhile into one transaction.
        while let Ok(more) = flushes.try_recv() {
            f.absorb(more);
        }
        let generation = f.generation;
        let checkpoint = f.checkpoint;
        match write_flush(&mut store, f) {
            Ok(refused) => {
                if refused > 0 {
                    metrics.refused_entries("", tally_audit::Reason::BadField, refused);
                }
                if failures > 0 {
                    info!(
                        attempts = failures + 1,
                        "the state database took the rows again"
                    );
                    failures = 0;
                }
                committed.fetch_max(generation, Ordering::Release);
                if checkpoint {
                    let started = Instant::now();
                    match store.checkpoint() {
                        Ok((log, copied)) => debug!(
                            log,
                            copied,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "copied the write-ahead log into the state database"
                        ),
                        Err(e) => warn!(
                            "cannot copy the write-ahead log into the state database now: {e}"
                        ),
                    }
                }
            }
            Err(failed) => {
                let (f, e) = *failed;
                // Logged once per run of failures, not on every attempt.
                if failures == 0 {
                    error!(
                        "cannot write the state database, trying again every {} ms; nothing is acknowledged meanwhile: {e}",
                        RETRY_PAUSE.as_millis()
                    );
                }
                failures = failures.saturating_add(1);
                retry = Some(f);
            }
        }
    }
    if let Some(f) = retry
        && let Err(failed) = write_flush(&mut store, f)
    {
        error!(
            "stopping with rows the state database did not take; their emitters resend them: {}",
            failed.1
        );
    }
}

/// How long the writer waits before writing a failed flush again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Stores one flush and answers its messages: each that was stored gets its
/// ack, one whose rows cannot be stored gets an error of its own. Returns how
/// many messages were refused because their rows could not be stored; when
/// the transaction fails as a whole, the flush itself (no one answered yet)
/// and the error.
fn write_flush(store: &mut Store, f: Flush) -> std::result::Result<u64, Box<(Flush, Error)>> {
    let mut refused = 0;
    let batches: Vec<&WriteBatch> = f.pieces.iter().map(|p| &p.batch).collect();
    let outcomes = match store.write_each(&batches) {
        Ok(outcomes) => outcomes,
        Err(e) => return Err(Box::new((f, e))),
    };
    for (piece, outcome) in f.pieces.into_iter().zip(outcomes) {
        match (piece.ack, outcome) {
            (Some(ack), Ok(())) => {
                let _ = ack.send(Ok(()));
            }
            (Some(ack), Err(e)) => {
                refused += 1;
                error!("a message's rows cannot be stored, it is refused alone: {e}");
                let _ = ack.send(Err(tally_audit::Error::new(
                    tally_audit::Reason::BadField,
                    format!("not stored: {e}"),
                )));
            }
            (None, Err(e)) => error!("rows of no message cannot be stored: {e}"),
            (None, Ok(())) => {}
        }
    }
    Ok(refused)
}

/// Runs the agent until ctrl-c (or SIGTERM).
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let mut agent = start(cfg).await?;
    tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            agent.shutdown().await;
        }
        _ = agent.wait() => {}
    }
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CellRow, SourceRow};

    fn cell(source: u32, seq: u64) -> CellRow {
        CellRow {
            source,
            series: 0,
            partition: 0,
            bucket: 60_000,
            epoch: 1,
            seq,
            counts: tally_audit::CellCounts {
                records: 5,
                ..Default::default()
            },
        }
    }

    fn piece(batch: WriteBatch) -> (Piece, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Piece {
                batch,
                ack: Some(tx),
            },
            rx,
        )
    }

    /// A flush whose transaction fails as a whole (here another connection
    /// holds the write lock past the busy timeout, as a full disk would fail
    /// every write) is not dropped: it is written again once the database
    /// takes it, and only then acknowledged and counted as committed.
    #[test]
    fn a_flush_that_fails_whole_is_written_again_then_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blocker = rusqlite::Connection::open(store.path()).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (tx, rx) = mpsc::channel(8);
        let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = std::thread::spawn({
            let committed = committed.clone();
            move || write_loop(store, rx, &AgentMetrics::new(), &committed)
        });
        let (p, mut ack) = piece(WriteBatch {
            cells: vec![cell(0, 1)],
            ..WriteBatch::default()
        });
        tx.blocking_send(Flush {
            pieces: vec![p],
            generation: 7,
            checkpoint: true,
        })
        .unwrap();
        // Past the writer's 5 s busy timeout: its first attempt failed.
        std::thread::sleep(Duration::from_secs(6));
        assert!(ack.try_recv().is_err(), "not acknowledged while not stored");
        assert_eq!(committed.load(Ordering::Acquire), 0);
        blocker.execute_batch("COMMIT").unwrap();
        assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
        assert_eq!(committed.load(Ordering::Acquire), 7);
        drop(tx);
        writer.join().unwrap();
        let stored = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(stored.cells, vec![cell(0, 1)]);
    }

    #[test]
    fn a_message_that_cannot_be_stored_does_not_cost_the_others_their_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let cells = |c| WriteBatch {
            cells: vec![c],
            ..WriteBatch::default()
        };
        let (first, first_rx) = piece(cells(cell(0, 1)));
        let (bad, mut bad_rx) = piece(cells(cell(1, u64::MAX)));
        let (last, mut last_rx) = piece(cells(cell(2, 3)));
        let sources = Piece {
            batch: WriteBatch {
                sources: vec![SourceRow {
                    id: 0,
                    name: "a".into(),
                    cluster: "local".into(),
                    tier_kinds: "[]".into(),
                    epoch: 1,
                    last_seen_ms: 1,
                    messages: 1,
                    errors: 0,
                }],
                ..WriteBatch::default()
            },
            ack: None,
        };
        let refused = write_flush(
            &mut store,
            Flush {
                pieces: vec![first, bad, last, sources],
                generation: 1,
                checkpoint: false,
            },
        );
        assert_eq!(refused.ok(), Some(1));
        assert_eq!(first_rx.blocking_recv().unwrap(), Ok(()));
        assert_eq!(last_rx.try_recv().unwrap(), Ok(()));
        let refused = bad_rx.try_recv().unwrap().unwrap_err();
        assert!(refused.detail.contains("cell.seq"), "{}", refused.detail);
        let loaded = store.load().unwrap();
        let stored: Vec<u32> = loaded.cells.iter().map(|c| c.source).collect();
        assert_eq!(stored, [0, 2]);
        assert_eq!(loaded.sources.len(), 1);
    }
}
