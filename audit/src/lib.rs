//! The shared vocabulary of tally.
//!
//! Everything that crosses a process boundary is defined here: event-time
//! [`Bucket`]s and their [`BucketWidth`], the [`Tier`]s that count records,
//! the wire [`Message`]s that emitters send to the agent and the [`Reply`]s
//! they get, and the [`emitter`] client that brokers and applications use to
//! stream cumulative counts and lag samples. [`books`] keeps one partition's
//! exact books, the same for tally's broker and for the collector.

pub mod books;
mod bucket;
pub mod emitter;
mod error;
pub mod feed;
pub mod latency;
pub mod snapshot;
mod tier;
pub mod tls;
mod topic;
pub mod wire;

pub use bucket::{Bucket, BucketWidth};
pub use error::{Error, Reason, Result};
pub use latency::LatencyBook;
pub use snapshot::{BucketStatus, CommitPoint, GroupStatus, PartitionStatus, Snapshot};
pub use tier::{Tier, TierKind};
pub use topic::{MAX_GROUP_LEN, MAX_TOPIC_LEN, validate_group, validate_topic};
pub use wire::{
    CellCounts, Cluster, ClusterState, CountEntry, Counts, Forget, GroupMetadata, GroupState,
    Hello, Lag, LagSample, Latency, LatencyHistogram, Message, PartitionMetadata, Reply,
    TopicMetadata,
};
