//! The collector's settings: one set for the process (agent, data folder, /metrics) and
//! one per watched cluster.
//!
//! A config file is TOML. Its top level holds the process's keys (`agent`,
//! `agent_token`, `agent_ca`, `data_dir`, `metrics_listen`, `bucket_width`) and, as
//! defaults for every cluster, any cluster key; each `[[cluster]]` block names one
//! cluster and may override any cluster key. The keys are the flag names with
//! underscores. Without `[[cluster]]` blocks the top level (with the flags) describes
//! the one cluster watched.
//!
//! Every bad value is an error that names the key, the cluster and the value (never a
//! password).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use regex::Regex;

use crate::tail::{StartAt, TailSettings};
use serde::{Deserialize, Serialize};
use tally_kafka::client::{ClientConfig, SaslMechanism, SecurityProtocol};
use tally_kafka::sasl::Password;
use tally_kafka::tls::ClientTlsFiles;

/// A configuration error, for a person: it names the key and the value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

type Result<T> = std::result::Result<T, ConfigError>;

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError(message.into()))
}

/// The settings of one cluster as a config file or the flags give them: every key
/// optional, so that a `[[cluster]]` block overrides only what it names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterKeys {
    /// The cluster label of everything reported about it.
    pub cluster: Option<String>,
    /// Bootstrap servers, `host:port`, as one comma-separated string or a list.
    pub bootstrap: Option<Bootstrap>,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub sasl_mechanism: Option<String>,
    /// The SASL user.
    pub sasl_username: Option<String>,
    /// The SASL password (prefer `sasl_password_file`); never printed.
    #[serde(serialize_with = "redacted")]
    pub sasl_password: Option<String>,
    /// A file holding the SASL password (readable by its owner only).
    pub sasl_password_file: Option<PathBuf>,
    /// A file holding the OAUTHBEARER token, read again at each login.
    pub sasl_oauthbearer_token_file: Option<PathBuf>,
    /// The CA (PEM) to trust instead of the system's roots.
    pub ssl_ca: Option<PathBuf>,
    /// A client certificate (PEM), for clusters that require one.
    pub ssl_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub ssl_key: Option<PathBuf>,
    /// Topics to watch (a regex that matches the whole name); default all.
    pub topics: Option<String>,
    /// Topics not to watch (a regex that matches the whole name).
    pub exclude_topics: Option<String>,
    /// Also watch internal topics (`__consumer_offsets`, any `__` name).
    pub include_internal: Option<bool>,
    /// Groups to watch (a regex that matches the whole name); default all.
    pub groups: Option<String>,
    /// Groups not to watch.
    pub exclude_groups: Option<String>,
    /// Groups whose lag is measured against the last stable offset.
    pub read_committed_groups: Option<String>,
    /// How often offsets are polled (e.g. `10s`).
    pub lag_interval: Option<String>,
    /// How often topics, partitions and groups are discovered again (e.g. `30s`).
    pub metadata_interval: Option<String>,
    /// An Empty group with no commit for this long is forgotten (e.g. `7d`).
    pub forget_empty_groups_after: Option<String>,
    /// How long one request to a broker may take (e.g. `30s`).
    pub request_timeout: Option<String>,
    /// Watched topics whose records are read for exact books (a regex that matches the
    /// whole name); default: every watched topic.
    pub audit_topics: Option<String>,
    /// `false` reads no records at all (lag and metadata only).
    pub audit: Option<bool>,
    /// The most bytes per second the books' reading may fetch from the cluster
    /// (`10MiB`, `500KB`, `1048576`); default: no cap.
    pub max_read_rate: Option<String>,
    /// Where an audited partition read for the first time starts: `earliest` or `latest`.
    pub start: Option<String>,
}

/// Bootstrap servers: `"a:9092,b:9092"` or `["a:9092", "b:9092"]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bootstrap {
    /// A comma-separated list.
    Joined(String),
    /// A list.
    List(Vec<String>),
}

impl Bootstrap {
    fn servers(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            Bootstrap::Joined(s) => s.split(',').collect(),
            Bootstrap::List(v) => v.iter().map(String::as_str).collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn redacted<S: serde::Serializer>(
    value: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

impl ClusterKeys {
    /// `self` with every key that `over` sets taken from `over`.
    pub fn overridden_by(&self, over: &ClusterKeys) -> ClusterKeys {
        macro_rules! pick {
            ($($f:ident),*) => { ClusterKeys { $( $f: over.$f.clone().or_else(|| self.$f.clone()), )* } };
        }
        pick!(
            cluster,
            bootstrap,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            sasl_password_file,
            sasl_oauthbearer_token_file,
            ssl_ca,
            ssl_cert,
            ssl_key,
            topics,
            exclude_topics,
            include_internal,
            groups,
            exclude_groups,
            read_committed_groups,
            lag_interval,
            metadata_interval,
            forget_empty_groups_after,
            request_timeout,
            audit_topics,
            audit,
            max_read_rate,
            start
        )
    }
}

/// The process-wide keys of a config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessKeys {
    /// The agent's ingest URL (`ws://` or `wss://`); empty sends nothing.
    pub agent: Option<String>,
    /// The bearer token the agent requires; never printed.
    #[serde(serialize_with = "redacted")]
    pub agent_token: Option<String>,
    /// A CA (PEM) that signed the agent's certificate.
    pub agent_ca: Option<PathBuf>,
    /// The collector's durable state.
    pub data_dir: Option<PathBuf>,
    /// The collector's own /metrics; empty turns it off.
    pub metrics_listen: Option<String>,
    /// The event-time bucket width; must equal the agent's (e.g. `60s`).
    pub bucket_width: Option<String>,
}

const PROCESS_KEYS: &[&str] = &[
    "agent",
    "agent_token",
    "agent_ca",
    "data_dir",
    "metrics_listen",
    "bucket_width",
];

/// A config file, split into its three parts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileConfig {
    /// The process-wide keys.
    pub process: ProcessKeys,
    /// The top level's cluster keys: defaults for every cluster.
    pub defaults: ClusterKeys,
    /// The `[[cluster]]` blocks.
    pub clusters: Vec<ClusterKeys>,
}

impl FileConfig {
    /// Parses a config file's text; `origin` (its path) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(format!("config file \"{origin}\": {e}")))?;
        // `cluster` is the name of the one cluster at the top level (`cluster = "…"`),
        // or the [[cluster]] blocks.
        let blocks = match table.remove("cluster") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(name @ toml::Value::String(_)) => {
                table.insert("cluster".to_owned(), name);
                Vec::new()
            }
            Some(other) => {
                return err(format!(
                    "config file \"{origin}\": `cluster` must be a name (cluster = \"…\") or [[cluster]] blocks, not a {}",
                    other.type_str()
                ));
            }
        };
        let mut process = toml::Table::new();
        for key in PROCESS_KEYS {
            if let Some(v) = table.remove(*key) {
                process.insert((*key).to_owned(), v);
            }
        }
        let process: ProcessKeys = toml::Value::Table(process)
            .try_into()
            .map_err(|e| ConfigError(format!("config file \"{origin}\": {e}")))?;
        let defaults: ClusterKeys = toml::Value::Table(table).try_into().map_err(|e| {
            ConfigError(format!(
                "config file \"{origin}\": {e} (top-level keys: {}, and any cluster key)",
                PROCESS_KEYS.join(", ")
            ))
        })?;
        let mut clusters = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.into_iter().enumerate() {
            let keys: ClusterKeys = block.try_into().map_err(|e| {
                ConfigError(format!(
                    "config file \"{origin}\", [[cluster]] block {}: {e}",
                    i + 1
                ))
            })?;
            clusters.push(keys);
        }
        Ok(FileConfig {
            process,
            defaults,
            clusters,
        })
    }
}

/// A regex that must match a whole name.
#[derive(Clone)]
pub struct NameFilter {
    source: String,
    regex: Regex,
}

impl NameFilter {
    /// Compiles `pattern` anchored at both ends; the error names `key` and the pattern.
    pub fn new(key: &str, pattern: &str) -> Result<NameFilter> {
        let anchored = format!("^(?:{pattern})$");
        let regex = regex::RegexBuilder::new(&anchored)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                ConfigError(format!(
                    "{key} \"{pattern}\" is not a regular expression: {}",
                    e.to_string().lines().last().unwrap_or_default()
                ))
            })?;
        Ok(NameFilter {
            source: pattern.to_owned(),
            regex,
        })
    }

    /// A filter that every name matches (`.*`).
    pub fn everything() -> NameFilter {
        NameFilter {
            source: ".*".to_owned(),
            regex: regex::Regex::new("^(?:.*)$")
                .unwrap_or_else(|_| unreachable!("\".*\" is a regular expression")),
        }
    }

    /// The pattern as given (not anchored).
    pub fn pattern(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

impl fmt::Debug for NameFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

/// Which topics and groups a cluster's collector watches.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Topics to watch (all when `None`).
    pub topics: Option<NameFilter>,
    /// Topics left out.
    pub exclude_topics: Option<NameFilter>,
    /// Watch internal topics too.
    pub include_internal: bool,
    /// Groups to watch (all when `None`).
    pub groups: Option<NameFilter>,
    /// Groups left out.
    pub exclude_groups: Option<NameFilter>,
    /// Groups measured against the last stable offset.
    pub read_committed_groups: Option<NameFilter>,
}

impl Filters {
    /// Whether a topic is watched; `internal` is what Metadata says of it.
    pub fn topic(&self, name: &str, internal: bool) -> bool {
        if (internal || name.starts_with("__")) && !self.include_internal {
            return false;
        }
        self.topics.as_ref().is_none_or(|f| f.matches(name))
            && !self
                .exclude_topics
                .as_ref()
                .is_some_and(|f| f.matches(name))
    }

    /// Whether a group is watched.
    pub fn group(&self, name: &str) -> bool {
        self.groups.as_ref().is_none_or(|f| f.matches(name))
            && !self
                .exclude_groups
                .as_ref()
                .is_some_and(|f| f.matches(name))
    }

    /// Whether a group reads committed data only.
    pub fn read_committed(&self, name: &str) -> bool {
        self.read_committed_groups
            .as_ref()
            .is_some_and(|f| f.matches(name))
    }
}

/// Everything about one watched cluster, checked.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Its label.
    pub name: String,
    /// How to reach it.
    pub client: ClientConfig,
    /// What to watch.
    pub filters: Filters,
    /// How often offsets are polled.
    pub lag_interval: Duration,
    /// How often discovery runs again.
    pub metadata_interval: Duration,
    /// An Empty group with no commit for this long is forgotten.
    pub forget_empty_groups_after: Duration,
    /// Watched topics whose records are read for exact books (none when `None`:
    /// `audit = false`).
    pub audit_topics: Option<NameFilter>,
    /// How the audited partitions are read.
    pub tail: TailSettings,
}

/// The whole collector's settings, checked.
#[derive(Clone, Debug)]
pub struct CollectConfig {
    /// The agent's ingest URL; empty sends nothing.
    pub agent: String,
    /// The bearer token the agent requires.
    pub agent_token: Option<String>,
    /// A CA (PEM) that signed the agent's certificate.
    pub agent_ca: Option<PathBuf>,
    /// The collector's durable state.
    pub data_dir: PathBuf,
    /// The collector's own /metrics (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    /// The bucket width (the agent's).
    pub bucket_width: Duration,
    /// The watched clusters, at least one, names unique.
    pub clusters: Vec<ClusterSettings>,
}

/// The defaults of the process-wide keys.
pub const DEFAULT_AGENT: &str = "ws://127.0.0.1:9400/api/v1/ingest";
/// Where the collector keeps its state by default.
pub const DEFAULT_DATA_DIR: &str = "./data/collect";
/// The collector's own /metrics by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9402";

/// A byte rate: a whole number of bytes per second, or one with a unit (`KB`, `MB`,
/// `GB` in powers of 1000, `KiB`, `MiB`, `GiB` in powers of 1024).
fn parse_rate(value: &str, cluster: &str) -> Result<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && unit_bytes > 0 => Ok(n.saturating_mul(unit_bytes)),
        _ => err(format!(
            "max_read_rate \"{value}\"{} is not a byte rate: expected bytes per second, e.g. 1048576, 500KB, 10MiB",
            in_cluster(cluster)
        )),
    }
}

fn parse_duration(
    key: &str,
    cluster: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration> {
    let Some(v) = value else { return Ok(default) };
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        ConfigError(format!(
            "{key} \"{v}\"{} is not a duration ({e}): expected e.g. 500ms, 10s, 5m, 1h, 7d",
            in_cluster(cluster)
        ))
    })?;
    if d.is_zero() {
        return err(format!(
            "{key} \"{v}\"{} must be more than zero",
            in_cluster(cluster)
        ));
    }
    Ok(d)
}

fn in_cluster(cluster: &str) -> String {
    if cluster.is_empty() {
        String::new()
    } else {
        format!(" (cluster \"{cluster}\")")
    }
}

fn check_host_port(server: &str, cluster: &str) -> Result<()> {
    let bad = || {
        err(format!(
            "bootstrap server \"{server}\"{} is not HOST:PORT (e.g. kafka-1.example.com:9092)",
            in_cluster(cluster)
        ))
    };
    let Some((host, port)) = server.rsplit_once(':') else {
        return bad();
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return bad();
    }
    Ok(())
}

/// Reads a secret file that only its owner may read.
fn read_secret_file(key: &str, path: &Path, cluster: &str) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| {
            ConfigError(format!(
                "{key} \"{}\"{}: cannot read it: {e}",
                path.display(),
                in_cluster(cluster)
            ))
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return err(format!(
                "{key} \"{}\"{}: other users can read it (mode {:o}); make it readable by its owner only (chmod 600)",
                path.display(),
                in_cluster(cluster),
                mode & 0o777
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "{key} \"{}\"{}: cannot read it: {e}",
            path.display(),
            in_cluster(cluster)
        ))
    })?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return err(format!(
            "{key} \"{}\"{} is empty",
            path.display(),
            in_cluster(cluster)
        ));
    }
    Ok(secret)
}

impl ClusterSettings {
    /// Checks one cluster's keys (the top level's defaults already merged in).
    pub fn resolve(keys: &ClusterKeys) -> Result<ClusterSettings> {
        let name = keys.cluster.clone().unwrap_or_default();
        if name.is_empty() {
            return err(
                "a cluster has no name: give --cluster NAME (or `cluster = \"…\"` in each [[cluster]] block)",
            );
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || name.len() > 249
        {
            return err(format!(
                "cluster \"{name}\" is not a valid name: use 1 to 249 of [a-zA-Z0-9._-]"
            ));
        }
        let bootstrap = keys
            .bootstrap
            .as_ref()
            .map(Bootstrap::servers)
            .unwrap_or_default();
        if bootstrap.is_empty() {
            return err(format!(
                "cluster \"{name}\" has no bootstrap servers: give --bootstrap HOST:PORT[,…] (or `bootstrap = \"…\"`)"
            ));
        }
        for server in &bootstrap {
            check_host_port(server, &name)?;
        }
        let security_protocol = match &keys.security_protocol {
            Some(v) => SecurityProtocol::from_str(v)
                .map_err(|e| ConfigError(format!("security_protocol{}: {e}", in_cluster(&name))))?,
            None => SecurityProtocol::Plaintext,
        };
        let sasl_mechanism =
            match &keys.sasl_mechanism {
                Some(v) => Some(SaslMechanism::from_str(v).map_err(|e| {
                    ConfigError(format!("sasl_mechanism{}: {e}", in_cluster(&name)))
                })?),
                None => None,
            };
        let sasl = matches!(
            security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        let tls = matches!(
            security_protocol,
            SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
        );
        let sasl_password = match (&keys.sasl_password, &keys.sasl_password_file) {
            (Some(_), Some(_)) => {
                return err(format!(
                    "cluster \"{name}\" gives both sasl_password and sasl_password_file: give one"
                ));
            }
            (Some(p), None) => Some(Password::new(p.clone())),
            (None, Some(path)) => Some(Password::new(read_secret_file(
                "sasl_password_file",
                path,
                &name,
            )?)),
            (None, None) => None,
        };
        if sasl {
            let Some(mechanism) = sasl_mechanism else {
                return err(format!(
                    "cluster \"{name}\" uses security_protocol \"{security_protocol}\" but gives no sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
                ));
            };
            if mechanism == SaslMechanism::OauthBearer {
                if keys.sasl_oauthbearer_token_file.is_none() {
                    return err(format!(
                        "cluster \"{name}\" uses OAUTHBEARER but gives no sasl_oauthbearer_token_file"
                    ));
                }
            } else {
                if keys.sasl_username.as_deref().is_none_or(str::is_empty) {
                    return err(format!(
                        "cluster \"{name}\" uses SASL but gives no sasl_username"
                    ));
                }
                if sasl_password.is_none() {
                    return err(format!(
                        "cluster \"{name}\" uses SASL but gives no sasl_password (or sasl_password_file)"
                    ));
                }
            }
        } else if sasl_mechanism.is_some() {
            return err(format!(
                "cluster \"{name}\" gives sasl_mechanism with security_protocol \"{security_protocol}\": use sasl_plaintext or sasl_ssl"
            ));
        }
        if !tls && (keys.ssl_ca.is_some() || keys.ssl_cert.is_some() || keys.ssl_key.is_some()) {
            return err(format!(
                "cluster \"{name}\" gives ssl_* files with security_protocol \"{security_protocol}\": use ssl or sasl_ssl"
            ));
        }
        if keys.ssl_cert.is_some() != keys.ssl_key.is_some() {
            return err(format!(
                "cluster \"{name}\": ssl_cert and ssl_key go together"
            ));
        }
        let filter = |key: &str, value: &Option<String>| -> Result<Option<NameFilter>> {
            value
                .as_deref()
                .map(|p| {
                    NameFilter::new(key, p)
                        .map_err(|e| ConfigError(format!("{}{}", e.0, in_cluster(&name))))
                })
                .transpose()
        };
        let filters = Filters {
            topics: filter("topics", &keys.topics)?,
            exclude_topics: filter("exclude_topics", &keys.exclude_topics)?,
            include_internal: keys.include_internal.unwrap_or(false),
            groups: filter("groups", &keys.groups)?,
            exclude_groups: filter("exclude_groups", &keys.exclude_groups)?,
            read_committed_groups: filter("read_committed_groups", &keys.read_committed_groups)?,
        };
        let lag_interval = parse_duration(
            "lag_interval",
            &name,
            keys.lag_interval.as_deref(),
            Duration::from_secs(10),
        )?;
        let metadata_interval = parse_duration(
            "metadata_interval",
            &name,
            keys.metadata_interval.as_deref(),
            Duration::from_secs(30),
        )?;
        let forget_empty_groups_after = parse_duration(
            "forget_empty_groups_after",
            &name,
            keys.forget_empty_groups_after.as_deref(),
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let request_timeout = parse_duration(
            "request_timeout",
            &name,
            keys.request_timeout.as_deref(),
            Duration::from_secs(30),
        )?;
        let client = ClientConfig {
            bootstrap,
            client_id: "tally-collect".to_owned(),
            security_protocol,
            sasl_mechanism,
            sasl_username: keys.sasl_username.clone(),
            sasl_password,
            sasl_oauthbearer_token_file: keys.sasl_oauthbearer_token_file.clone(),
            tls: ClientTlsFiles {
                ca: keys.ssl_ca.clone(),
                cert: keys.ssl_cert.clone(),
                key: keys.ssl_key.clone(),
            },
            request_timeout,
            ..ClientConfig::default()
        };
        let audit_topics = if keys.audit == Some(false) {
            None
        } else {
            Some(filter("audit_topics", &keys.audit_topics)?.unwrap_or_else(NameFilter::everything))
        };
        let max_read_rate = keys
            .max_read_rate
            .as_deref()
            .map(|v| parse_rate(v, &name))
            .transpose()?;
        let start = match keys.start.as_deref().map(str::trim) {
            None | Some("earliest") => StartAt::Earliest,
            Some("latest") => StartAt::Latest,
            Some(other) => {
                return err(format!(
                    "start \"{other}\"{} is not a start: expected earliest or latest",
                    in_cluster(&name)
                ));
            }
        };
        Ok(ClusterSettings {
            name,
            client,
            filters,
            lag_interval,
            metadata_interval,
            forget_empty_groups_after,
            audit_topics,
            tail: TailSettings {
                start,
                max_read_rate,
                ..TailSettings::default()
            },
        })
    }
}

impl CollectConfig {
    /// Checks the whole configuration: the process keys, and every cluster (the
    /// `[[cluster]]` blocks over the top-level defaults, or the top level alone).
    pub fn resolve(
        process: &ProcessKeys,
        defaults: &ClusterKeys,
        blocks: &[ClusterKeys],
    ) -> Result<CollectConfig> {
        let metrics_listen = match process.metrics_listen.as_deref() {
            None => Some(DEFAULT_METRICS_LISTEN.parse().map_err(|_| ConfigError("bad default".into()))?),
            Some("") => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "metrics_listen \"{v}\" is not an address: expected IP:PORT such as 127.0.0.1:9402 (or empty for none)"
                ))
            })?),
        };
        let bucket_width = parse_duration(
            "bucket_width",
            "",
            process.bucket_width.as_deref(),
            Duration::from_secs(60),
        )?;
        if bucket_width.as_millis() % 1000 != 0 {
            return err(format!(
                "bucket_width \"{}\" must be a whole number of seconds",
                humantime::format_duration(bucket_width)
            ));
        }
        let agent = process
            .agent
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT.to_owned());
        if !(agent.is_empty() || agent.starts_with("ws://") || agent.starts_with("wss://")) {
            return err(format!(
                "agent \"{agent}\" is not a ws:// or wss:// URL (e.g. {DEFAULT_AGENT}); empty sends nothing"
            ));
        }
        let mut clusters = Vec::new();
        if blocks.is_empty() {
            clusters.push(ClusterSettings::resolve(defaults)?);
        } else {
            for block in blocks {
                clusters.push(ClusterSettings::resolve(&defaults.overridden_by(block))?);
            }
        }
        let mut names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return err(format!("cluster \"{}\" is named twice", w[0]));
        }
        Ok(CollectConfig {
            agent,
            agent_token: process.agent_token.clone(),
            agent_ca: process.agent_ca.clone(),
            data_dir: process
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            metrics_listen,
            bucket_width,
            clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<CollectConfig> {
        let file = FileConfig::parse(text, "test.toml")?;
        CollectConfig::resolve(&file.process, &file.defaults, &file.clusters)
    }

    #[test]
    fn books_read_every_watched_topic_unless_told_otherwise() {
        let cfg = resolve(
            "[[cluster]]\ncluster = \"a\"\nbootstrap = \"h:1\"\n\n\
             [[cluster]]\ncluster = \"b\"\nbootstrap = \"h:2\"\naudit = false\n\n\
             [[cluster]]\ncluster = \"c\"\nbootstrap = \"h:3\"\naudit_topics = \"orders\"\nmax_read_rate = \"10MiB\"\nstart = \"latest\"\n",
        )
        .unwrap();
        let [a, b, c] = &cfg.clusters[..] else {
            panic!("three clusters: {:?}", cfg.clusters.len())
        };
        assert!(a.audit_topics.as_ref().unwrap().matches("anything"));
        assert_eq!(a.tail.max_read_rate, None);
        assert_eq!(a.tail.start, StartAt::Earliest);
        assert!(b.audit_topics.is_none());
        let only = c.audit_topics.as_ref().unwrap();
        assert!(only.matches("orders") && !only.matches("orders-eu"));
        assert_eq!(c.tail.max_read_rate, Some(10 << 20));
        assert_eq!(c.tail.start, StartAt::Latest);
    }

    #[test]
    fn a_bad_read_rate_or_start_is_named() {
        for (key, value) in [
            ("max_read_rate", "fast"),
            ("max_read_rate", "0"),
            ("max_read_rate", "10 parsecs"),
            ("start", "middle"),
        ] {
            let err = resolve(&format!(
                "cluster = \"a\"\nbootstrap = \"h:1\"\n{key} = \"{value}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.0.contains(&format!("{key} \"{value}\"")),
                "{key}: {}",
                err.0
            );
        }
        for (value, bytes) in [("1048576", 1 << 20), ("500KB", 500_000), ("2 GiB", 2 << 30)] {
            assert_eq!(parse_rate(value, "a").unwrap(), bytes, "{value}");
        }
    }

    #[test]
    fn two_clusters_override_the_top_level() {
        let cfg = resolve(
            r#"
            agent = "ws://127.0.0.1:1/api/v1/ingest"
            lag_interval = "5s"
            exclude_groups = "tmp-.*"
            [[cluster]]
            cluster = "a"
            bootstrap = "127.0.0.1:9092, 127.0.0.1:9093"
            [[cluster]]
            cluster = "b"
            bootstrap = ["127.0.0.1:9192"]
            lag_interval = "1s"
            "#,
        )
        .expect("valid");
        assert_eq!(cfg.clusters.len(), 2);
        assert_eq!(
            cfg.clusters[0].client.bootstrap,
            ["127.0.0.1:9092", "127.0.0.1:9093"]
        );
        assert_eq!(cfg.clusters[0].lag_interval, Duration::from_secs(5));
        assert_eq!(cfg.clusters[1].lag_interval, Duration::from_secs(1));
        assert!(!cfg.clusters[1].filters.group("tmp-1"));
        assert!(cfg.clusters[1].filters.group("billing"));
        assert_eq!(
            cfg.metrics_listen,
            Some("127.0.0.1:9402".parse().expect("addr"))
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("cluster = \"a\"\nbootstrap = \"h:1\"\nbogus = 1", "bogus"),
            (
                "cluster = \"a\"\nbootstrap = \"h:1\"\ntopics = \"(\"",
                "topics \"(\"",
            ),
            ("cluster = \"a\"", "no bootstrap"),
            (
                "cluster = \"a\"\nbootstrap = \"nohostport\"",
                "\"nohostport\"",
            ),
            (
                "cluster = \"a\"\nbootstrap = \"h:1\"\nsecurity_protocol = \"tls\"",
                "'tls'",
            ),
            (
                "cluster = \"a\"\nbootstrap = \"h:1\"\nlag_interval = \"soon\"",
                "\"soon\"",
            ),
            (
                "cluster = \"a\"\nbootstrap = \"h:1\"\nsecurity_protocol = \"sasl_ssl\"",
                "sasl_mechanism",
            ),
            (
                "[[cluster]]\ncluster = \"a\"\nbootstrap = \"h:1\"\nfoo = 2",
                "foo",
            ),
            (
                "[[cluster]]\ncluster = \"a\"\nbootstrap = \"h:1\"\n[[cluster]]\ncluster = \"a\"\nbootstrap = \"h:2\"",
                "named twice",
            ),
        ];
        for (text, needle) in cases {
            let e = resolve(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?}: {e:?} should name {needle:?}");
        }
    }

    #[test]
    fn the_example_config_reads() {
        let text = include_str!("../../tally-collect.example.toml");
        let file =
            FileConfig::parse(text, "tally-collect.example.toml").expect("the example parses");
        let names: Vec<_> = file
            .clusters
            .iter()
            .map(|c| c.cluster.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["local", "prod"]);
        // Without its password file (which only exists on the user's machine) it resolves.
        let mut clusters = file.clusters.clone();
        clusters[1].sasl_password_file = None;
        clusters[1].sasl_password = Some("x".into());
        let cfg = CollectConfig::resolve(&file.process, &file.defaults, &clusters).expect("valid");
        assert_eq!(
            cfg.clusters[1].client.security_protocol,
            SecurityProtocol::SaslSsl
        );
        assert_eq!(cfg.clusters[1].lag_interval, Duration::from_secs(5));
        assert_eq!(cfg.clusters[0].lag_interval, Duration::from_secs(10));
    }

    #[test]
    fn filters_match_whole_names_and_leave_internal_topics_out() {
        let f = Filters {
            topics: Some(NameFilter::new("topics", "orders|pay.*").expect("regex")),
            ..Filters::default()
        };
        assert!(f.topic("orders", false));
        assert!(!f.topic("orders-dlq", false));
        assert!(f.topic("payments", false));
        let all = Filters::default();
        assert!(!all.topic("__consumer_offsets", true));
        assert!(!all.topic("__anything", false));
        let internal = Filters {
            include_internal: true,
            ..Filters::default()
        };
        assert!(internal.topic("__consumer_offsets", true));
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "secret-pw\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let text = format!(
            "cluster = \"a\"\nbootstrap = \"h:1\"\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_file = \"{}\"",
            path.display()
        );
        let e = resolve(&text).expect_err("world-readable").to_string();
        assert!(e.contains("chmod 600") && !e.contains("secret-pw"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let cfg = resolve(&text).expect("owner-only");
        let pw = cfg.clusters[0]
            .client
            .sasl_password
            .as_ref()
            .expect("password");
        assert_eq!(pw.expose(), "secret-pw");
    }
}
