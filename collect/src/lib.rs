//! `tally collect`: watches Kafka clusters that tally does not run (Apache Kafka,
//! Redpanda, MSK, Confluent Cloud), from outside through the Kafka protocol, and reports
//! every consumer group's lag and health, and the clusters' metadata, to the agent with
//! the same wire messages the instrumented broker sends (DESIGN.md §9). Several clusters
//! are watched from one process, each with its own security settings; a cluster that
//! cannot be reached shows as `tally_collect_up{cluster} 0` and affects no other.
//!
//! - [`config`]: the settings (flags and a TOML file with `[[cluster]]` blocks);
//! - [`lag`]: the lag arithmetic (ends, record timestamps, estimates, commit times);
//! - [`cluster`]: one cluster's discovery and lag polls;
//! - [`offsets_topic`]: commit times read from `__consumer_offsets`;
//! - [`tail`]: the exact books of the audited topics, from their records, and their
//!   end-to-end latency;
//! - [`metrics`]: the collector's own `/metrics`;
//! - [`service`]: the process.

pub mod cluster;
pub mod config;
pub mod lag;
pub mod metrics;
pub mod offsets_topic;
pub mod service;
mod state_file;
pub mod tail;

pub use service::run;

/// The wall clock, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
