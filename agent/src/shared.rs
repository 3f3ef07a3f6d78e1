//! What every connection, request handler and the ledger's task share: the
//! command channel to the ledger, the latest snapshot and its Prometheus
//! text, the metrics, the limits and the settings of the listener.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tally_alerts::Alerting;
use tally_audit::Snapshot;
use tally_audit::wire::{AcceptRange, Limits};
use tokio::sync::{mpsc, watch};

use crate::ingest::Command;
use crate::metrics::AgentMetrics;
use crate::now_ms;

impl Shared {
    /// The Prometheus text of the current snapshot: the cached one when this
    /// snapshot was rendered before, else rendered now (off the async
    /// threads), once however many scrapes wait for it.
    pub(crate) async fn exposition(&self) -> Arc<[axum::body::Bytes]> {
        let snapshot = self.snapshot.borrow().clone();
        let mut cached = self.rendered.lock().await;
        if let Some((s, text)) = cached.as_ref()
            && Arc::ptr_eq(s, &snapshot)
        {
            return text.clone();
        }
        let metrics = self.metrics.clone();
        let render = snapshot.clone();
        let text = match tokio::task::spawn_blocking(move || metrics.render_snapshot(&render)).await
        {
            Ok(text) => Arc::<[axum::body::Bytes]>::from(text),
            // The render panicked: serve the last text rather than none.
            Err(_) => {
                return cached
                    .as_ref()
                    .map_or_else(|| Arc::from(Vec::new()), |(_, t)| t.clone());
            }
        };
        self.metrics.renders.inc();
        *cached = Some((snapshot, text.clone()));
        text
    }

    /// The range of buckets accepted now.
    pub(crate) fn accept_range(&self) -> AcceptRange {
        AcceptRange::at(
            now_ms(),
            self.limits.width,
            self.retention_ms,
            self.grace_ms,
        )
    }
}

/// A snapshot and its Prometheus text.
pub(crate) type Rendered = (Arc<Snapshot>, Arc<[axum::body::Bytes]>);

/// What every connection and request handler shares.
pub(crate) struct Shared {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The Prometheus text of the last snapshot a scrape asked for, rendered
    /// then: no scrape, no render; many scrapes of one snapshot, one render.
    pub(crate) rendered: tokio::sync::Mutex<Option<Rendered>>,
    pub(crate) metrics: AgentMetrics,
    pub(crate) limits: Limits,
    /// Retention and grace, in milliseconds: what the accepted range of
    /// buckets given in each `welcome` is made of.
    pub(crate) retention_ms: u64,
    pub(crate) grace_ms: u64,
    /// How long an ingest WebSocket may wait before its `hello`.
    pub(crate) hello_timeout: Duration,
    /// How long a POST may take to send its body.
    pub(crate) body_timeout: Duration,
    pub(crate) token: Option<String>,
    pub(crate) protect_metrics: bool,
    pub(crate) ready: AtomicBool,
    /// Why the agent cannot serve its books (the stored state did not load):
    /// `/healthz` and `/readyz` say so instead of staying 200 and 503.
    pub(crate) failed: std::sync::OnceLock<String>,
    /// The alert rules in force and the notification counters.
    pub(crate) alerting: Arc<Alerting>,
    /// The state database, which the bucket view reads beyond the window.
    pub(crate) store_path: std::path::PathBuf,
    /// The dashboard feed's one update per tick, started by the first dashboard.
    pub(crate) feed: std::sync::OnceLock<crate::feed::Feed>,
    /// Buffers that `POST /api/v1/ingest` bodies were read into, kept for the
    /// next bodies (see [`crate::http`]'s `BodyBuffer`).
    pub(crate) body_buffers: std::sync::Mutex<Vec<Vec<u8>>>,
}
