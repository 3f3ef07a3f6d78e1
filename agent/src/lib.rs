//! The tally agent: it ingests audit messages from emitters, keeps the audit
//! ledger and each consumer group's health, evaluates them on a tick into an
//! immutable snapshot, and serves that snapshot over HTTP, Prometheus and a
//! WebSocket feed. Its state lives in SQLite under the data directory.

pub mod config;
mod error;
mod feed;
pub mod health;
mod http;
pub mod ledger;
mod listener;
pub mod metrics;
pub mod otlp;
pub mod service;
pub mod store;
mod tls;

pub use error::{Error, Result};
