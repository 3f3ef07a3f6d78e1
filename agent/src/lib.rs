//! The tally agent: it ingests audit messages from emitters, keeps the audit
//! ledger and each consumer group's health, evaluates them on a tick into an
//! immutable snapshot, and serves that snapshot over HTTP, Prometheus and a
//! WebSocket feed. Its state lives in SQLite under the data directory.

mod compact;
pub mod config;
mod error;
mod feed;
pub mod health;
mod http;
mod ingest;
pub mod ledger;
mod listener;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod service;
mod shared;
pub mod store;
mod tls;

pub use error::{Error, Result};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
