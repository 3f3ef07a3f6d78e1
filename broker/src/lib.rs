//! tally's broker: a single-node, Kafka-compatible broker whose log and group
//! coordinator are instrumented to count records per topic and event-time
//! bucket.

mod api;
pub mod audit;
pub use tally_kafka::records as batch;
pub mod config;
pub mod context;
mod error;
pub mod groups;
pub mod guard;
pub mod log;
mod metrics;
pub mod producers;
pub mod server;
pub mod topics;
pub mod txn;

pub use api::{SASL_SUPPORTED, SUPPORTED};
pub use error::{Error, Result};
