//! The broker's settings, as read from a TOML file and merged with flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::{FsyncPolicy, LogConfig};
use crate::{Error, Result};

/// Every setting of `tally broker`. Field names are the config-file keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address of the Kafka listener.
    pub listen: SocketAddr,
    /// `host:port` clients are told to connect to (Metadata); default: the listen address.
    pub advertised_listener: Option<String>,
    /// Folder of the log, offsets and state.
    pub data_dir: PathBuf,
    /// Address of the broker's own /metrics; empty turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster name audit counts are filed under.
    pub cluster: String,
    /// This broker's node id.
    pub node_id: i32,
    /// The agent's ingest WebSocket URL; empty counts without sending.
    pub agent: String,
    /// The bearer token the agent requires, if any (`--print-config` shows `<redacted>`).
    #[serde(serialize_with = "redacted")]
    pub agent_token: Option<String>,
    /// A PEM file of the CA that signed the agent's certificate, for a
    /// `wss://` agent; without one the system's root certificates are trusted.
    pub agent_ca: Option<PathBuf>,
    /// The listener's certificate chain (PEM); with `tls_key`, the Kafka
    /// listener speaks TLS only. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A CA (PEM) that client certificates must chain to: with it, every
    /// client must present one (mTLS). Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
    /// The SASL users (TOML, `[[user]] name = "…" password = "…"`, readable
    /// by its owner only): with it, every connection must authenticate
    /// (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512). Reloaded on SIGHUP.
    pub sasl_users: Option<PathBuf>,
    /// The event-time bucket width; must equal the agent's.
    #[serde(with = "humantime_serde")]
    pub bucket_width: Duration,
    /// Count records per bucket and stream them to the agent (off only to
    /// measure what the counting costs).
    pub instrumentation: bool,
    /// Create a topic when Metadata names one that does not exist.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, or of a CreateTopics asking for -1.
    pub default_partitions: i32,
    /// Largest request frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most client connections at once. At the limit, a new connection takes
    /// the place of one with no request in progress: the oldest that never
    /// completed a request, else the one idle the longest, so silent sockets
    /// cannot fill it.
    pub max_connections: usize,
    /// The longest a request may take to arrive, from its first byte to its
    /// last; also how long a new connection may stay silent before its first
    /// request. A connection over it is closed.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Close a connection that sends no request for this long (Kafka's
    /// `connections.max.idle.ms`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The most record bytes in one Fetch response (Kafka's
    /// `fetch.max.bytes`); the first batch of the first partition with data
    /// is returned whole even past it.
    pub fetch_max_bytes: usize,
    /// The most bytes the compressed batches of one Produce request may
    /// decompress to (each batch at most 128 MiB); a partition over it is
    /// refused with MESSAGE_TOO_LARGE and nothing of it is appended.
    pub max_decompressed_bytes: u64,
    /// When appended records reach the disk: `always`, `interval:MS` or `never`.
    pub fsync: String,
    /// Roll a segment at this size.
    pub segment_bytes: u64,
    /// Roll a segment this long after its first record.
    #[serde(with = "humantime_serde")]
    pub segment_time: Duration,
    /// Delete segments older than this (default for topics; `retention.ms` overrides).
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Delete old segments beyond this size per partition (default for topics).
    pub retention_bytes: Option<u64>,
    /// How often retention and segment rolling are checked.
    #[serde(with = "humantime_serde")]
    pub retention_check: Duration,
    /// How long a consumer group that was empty waits for more members
    /// before its first generation (Kafka's `group.initial.rebalance.delay.ms`).
    #[serde(with = "humantime_serde")]
    pub group_initial_rebalance_delay: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let log = LogConfig::default();
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_listener: None,
            data_dir: PathBuf::from("./data/broker"),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9401))),
            cluster: "local".into(),
            node_id: 0,
            agent: "ws://127.0.0.1:9400/api/v1/ingest".into(),
            agent_token: None,
            agent_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            sasl_users: None,
            bucket_width: Duration::from_secs(60),
            instrumentation: true,
            auto_create_topics: true,
            default_partitions: 1,
            max_frame_bytes: 100 * 1024 * 1024,
            max_connections: 1024,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            fetch_max_bytes: 55 * 1024 * 1024,
            max_decompressed_bytes: 256 * 1024 * 1024,
            fsync: "interval:1000".into(),
            segment_bytes: log.segment_bytes,
            segment_time: Duration::from_millis(log.segment_ms as u64),
            retention: Some(Duration::from_millis(log.retention_ms as u64)),
            retention_bytes: None,
            retention_check: Duration::from_secs(30),
            group_initial_rebalance_delay: Duration::from_secs(3),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "fsync \"{s}\" is not a policy: expected always, never or interval:MS (e.g. interval:1000)"
                    ))
                }),
        }
    }
}

/// A secret as `--print-config` shows it: that there is one, never its value.
fn redacted<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

impl BrokerConfig {
    /// Reads a TOML config file; unknown keys and bad values are errors that name them.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("config file \"{origin}\": {e}")))
    }

    /// The config as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The fsync policy, checked.
    pub fn fsync_policy(&self) -> Result<FsyncPolicy> {
        self.fsync.parse()
    }

    /// The log settings topics get by default.
    pub fn log_defaults(&self) -> LogConfig {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: ms(self.segment_time),
            retention_ms: self.retention.map_or(-1, ms),
            retention_bytes: self
                .retention_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            ..LogConfig::default()
        }
    }

    /// Checks every setting.
    pub fn check(&self) -> Result<()> {
        self.fsync_policy()?;
        if self.max_frame_bytes < 1024 {
            return Err(Error::Config(format!(
                "max_frame_bytes \"{}\" is too small: expected 1024 or more",
                self.max_frame_bytes
            )));
        }
        if !(1..=10_000).contains(&self.default_partitions) {
            return Err(Error::Config(format!(
                "default_partitions \"{}\" is out of range: expected 1 to 10000",
                self.default_partitions
            )));
        }
        if self.segment_bytes < 1024 {
            return Err(Error::Config(format!(
                "segment_bytes \"{}\" is too small: expected 1024 or more",
                self.segment_bytes
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config(
                "max_connections \"0\" would refuse every client".into(),
            ));
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!(
                    "{key} \"{value:?}\" would close every connection: expected a duration of at least 1ms (e.g. 30s)"
                )));
            }
        }
        if !(1..=i32::MAX as usize).contains(&self.fetch_max_bytes) {
            return Err(Error::Config(format!(
                "fetch_max_bytes \"{}\" is out of range: expected 1 to {} (default 57671680, 55 MiB)",
                self.fetch_max_bytes,
                i32::MAX
            )));
        }
        if self.max_decompressed_bytes < 1024 {
            return Err(Error::Config(format!(
                "max_decompressed_bytes \"{}\" is too small: expected 1024 or more (default 268435456, 256 MiB)",
                self.max_decompressed_bytes
            )));
        }
        self.width()?;
        let websocket = self.agent.starts_with("ws://") || self.agent.starts_with("wss://");
        if !self.agent.is_empty() && !websocket {
            return Err(Error::Config(format!(
                "agent \"{}\" is not a WebSocket URL: expected ws://HOST:PORT/api/v1/ingest, or empty to send nothing",
                self.agent
            )));
        }
        if let Some(ca) = &self.agent_ca {
            tally_audit::tls::client_config(Some(ca))
                .map_err(|e| Error::Config(format!("agent_ca: {e}")))?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(Error::Config(
                    "tls_cert (--tls-cert) is set without tls_key (--tls-key): a TLS listener needs both the certificate and its private key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "tls_key (--tls-key) is set without tls_cert (--tls-cert): a TLS listener needs both the certificate and its private key".into(),
                ));
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(Error::Config(
                "tls_client_ca (--tls-client-ca) needs a TLS listener: set tls_cert (--tls-cert) and tls_key (--tls-key) too".into(),
            ));
        }
        tally_audit::validate_topic(&self.cluster).map_err(|_| {
            Error::Config(format!(
                "cluster \"{}\": expected 1 to 249 characters of [a-zA-Z0-9._-]",
                self.cluster
            ))
        })?;
        Ok(())
    }

    /// The bucket width, checked.
    pub fn width(&self) -> Result<tally_audit::BucketWidth> {
        let ms = u64::try_from(self.bucket_width.as_millis()).unwrap_or(u64::MAX);
        tally_audit::BucketWidth::new(ms).map_err(|e| Error::Config(format!("bucket_width: {e}")))
    }

    /// The `(host, port)` clients are told to use.
    pub fn advertised(&self) -> (String, i32) {
        if let Some(a) = &self.advertised_listener
            && let Some((host, port)) = a.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            return (host.to_owned(), port);
        }
        (self.listen.ip().to_string(), i32::from(self.listen.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse_and_bad_ones_are_named() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Always
        );
        assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
        assert_eq!(
            "interval:250".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        let e = "sometimes".parse::<FsyncPolicy>().unwrap_err().to_string();
        assert!(e.contains("\"sometimes\""), "{e}");
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
    }

    #[test]
    fn defaults_are_loopback_and_valid() {
        let c = BrokerConfig::default();
        c.check().unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.advertised(), ("127.0.0.1".to_owned(), 9092));
        let round = BrokerConfig::from_toml(&c.to_toml(), "x").unwrap();
        assert_eq!(round, c);
        assert_eq!(c.fetch_max_bytes, 57_671_680, "Kafka's fetch.max.bytes");
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn the_example_config_holds_the_defaults() {
        let text = include_str!("../../tally-broker.example.toml");
        let c = BrokerConfig::from_toml(text, "tally-broker.example.toml").unwrap();
        assert_eq!(c, BrokerConfig::default());
    }

    #[test]
    fn limits_that_cannot_work_are_named() {
        let bad = |tune: fn(&mut BrokerConfig)| {
            let mut c = BrokerConfig::default();
            tune(&mut c);
            c.check().unwrap_err().to_string()
        };
        let e = bad(|c| c.fetch_max_bytes = 0);
        assert!(e.contains("fetch_max_bytes \"0\""), "{e}");
        let e = bad(|c| c.max_decompressed_bytes = 10);
        assert!(e.contains("max_decompressed_bytes \"10\""), "{e}");
        let e = bad(|c| c.idle_timeout = Duration::ZERO);
        assert!(e.contains("idle_timeout \"0ns\""), "{e}");
        let e = bad(|c| c.request_timeout = Duration::ZERO);
        assert!(e.contains("request_timeout"), "{e}");
        let e = bad(|c| c.tls_cert = Some("cert.pem".into()));
        assert!(e.contains("--tls-key"), "{e}");
        let e = bad(|c| c.tls_key = Some("key.pem".into()));
        assert!(e.contains("--tls-cert"), "{e}");
        let e = bad(|c| c.tls_client_ca = Some("ca.pem".into()));
        assert!(e.contains("--tls-client-ca"), "{e}");
    }
}
