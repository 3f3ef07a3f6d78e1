//! Flags, environment variables and config files, merged in one place:
//! a flag (or its environment variable) wins over the config file, which wins
//! over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tally_agent::config::AgentConfig;
use tally_broker::config::BrokerConfig;

/// tally: end-to-end audit and consumer-lag monitoring for Kafka-style streams.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Log filter (e.g. info, debug, tally_agent=debug); RUST_LOG wins when set.
    #[arg(
        long,
        global = true,
        env = "TALLY_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub(crate) log: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the agent: ingest, ledger, evaluation, HTTP API and /metrics.
    Agent(AgentArgs),
    /// Run the Kafka-compatible broker.
    Broker(BrokerArgs),
    /// Watch Kafka clusters tally does not run: every group's lag and health, and the cluster's metadata, sent to the agent.
    Collect(CollectArgs),
    /// Run the demo: broker, agent and a Kafka workload that shows every status.
    Demo(DemoArgs),
    /// Watch an agent in the terminal: completeness, lag, alerts, sources.
    Dashboard(DashboardArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}): expected e.g. 500ms, 10s, 5m, 1h, 7d")
    })
}

/// A plain number of seconds, or a duration with its unit.
fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => duration(s),
    }
}

/// A `--mirror` rule, checked whole (both sides, the `*`s).
fn mirror_rule(s: &str) -> Result<tally_agent::mirror::MirrorConfig, String> {
    let rule: tally_agent::mirror::MirrorConfig = s.parse().map_err(|e| format!("{e}"))?;
    tally_agent::mirror::MirrorRules::parse(std::slice::from_ref(&rule))
        .map_err(|e| e.to_string())?;
    Ok(rule)
}

/// Flags of `tally agent`. Each has an environment variable and a config-file key.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// TOML config file; its keys are the flag names with underscores (see tally.example.toml).
    #[arg(long, env = "TALLY_AGENT_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address of the HTTP listener (ingest, API, /metrics) [default: 127.0.0.1:9400].
    #[arg(long, env = "TALLY_AGENT_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Folder of the state database [default: ./data/agent].
    #[arg(long, env = "TALLY_AGENT_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Width of the event-time buckets; every emitter must use the same [default: 60s].
    #[arg(long, env = "TALLY_AGENT_BUCKET_WIDTH", value_name = "DURATION", value_parser = duration)]
    pub(crate) bucket_width: Option<Duration>,
    /// How long a bucket stays open after it ends [default: 2 × bucket width].
    #[arg(long, env = "TALLY_AGENT_GRACE", value_name = "DURATION", value_parser = duration)]
    pub(crate) grace: Option<Duration>,
    /// How far back gauges, completeness and the bucket view reach [default: 1h].
    #[arg(long, env = "TALLY_AGENT_WINDOW", value_name = "DURATION", value_parser = duration)]
    pub(crate) window: Option<Duration>,
    /// How long cells and closed-bucket history are kept [default: 7d].
    #[arg(long, env = "TALLY_AGENT_RETENTION", value_name = "DURATION", value_parser = duration)]
    pub(crate) retention: Option<Duration>,
    /// How often the books are evaluated into a new snapshot [default: 1s].
    #[arg(long, env = "TALLY_AGENT_TICK", value_name = "DURATION", value_parser = duration)]
    pub(crate) tick: Option<Duration>,
    /// Commits per partition in the group-health window [default: 10].
    #[arg(long, env = "TALLY_AGENT_HEALTH_WINDOW", value_name = "N")]
    pub(crate) health_window: Option<usize>,
    /// Lag above zero with no commit for this long is `stop`, also on quiet topics [default: 5m].
    #[arg(long, env = "TALLY_AGENT_STOP_AFTER", value_name = "DURATION", value_parser = duration)]
    pub(crate) stop_after: Option<Duration>,
    /// Largest ingest message in bytes [default: 1048576].
    #[arg(long, env = "TALLY_AGENT_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// Most series (tier, topic, partition) one source may open [default: 100000].
    #[arg(long, env = "TALLY_AGENT_MAX_SERIES_PER_SOURCE", value_name = "N")]
    pub(crate) max_series_per_source: Option<usize>,
    /// Most series all sources together may open; a message that would open more is refused as `cardinality` [default: 1000000].
    #[arg(long, env = "TALLY_AGENT_MAX_SERIES", value_name = "N")]
    pub(crate) max_series: Option<usize>,
    /// Most connections open at once (HTTP and WebSocket); at the limit a new one closes the oldest that has sent no request yet, or waits for a slot [default: 1024].
    #[arg(long, env = "TALLY_AGENT_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// How long a client may take to send a request header (and a POST its body); idle keep-alive connections close after it too [default: 10s].
    #[arg(long, env = "TALLY_AGENT_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) header_read_timeout: Option<Duration>,
    /// How long an ingest WebSocket may stay open without sending its hello [default: 10s].
    #[arg(long, env = "TALLY_AGENT_HELLO_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) hello_timeout: Option<Duration>,
    /// Certificate chain (PEM) for HTTPS: with --tls-key the listener speaks HTTPS only (wss:// ingest, API, /metrics); reloaded on SIGHUP.
    #[arg(long, env = "TALLY_AGENT_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TALLY_AGENT_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Shared bearer token that ingest and the API require.
    #[arg(
        long,
        env = "TALLY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// Require the token on /metrics, /healthz and /readyz too.
    #[arg(long, env = "TALLY_AGENT_PROTECT_METRICS")]
    pub(crate) protect_metrics: bool,
    /// Push the metrics over OTLP/HTTP (protobuf) to this http or https URL; a URL without a path gets /v1/metrics [default: no push].
    #[arg(long, env = "TALLY_AGENT_OTLP_ENDPOINT", value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    /// How often to push over OTLP: seconds, or a duration such as 500ms or 1m [default: 10s].
    #[arg(long, env = "TALLY_AGENT_OTLP_INTERVAL", value_name = "SECS", value_parser = seconds_or_duration)]
    pub(crate) otlp_interval: Option<Duration>,
    /// Alert rules file (YAML; see alerts/examples/tally.rules.yaml); reloaded on SIGHUP.
    #[arg(long, env = "TALLY_AGENT_RULES", value_name = "FILE")]
    pub(crate) rules: Option<PathBuf>,
    /// Alertmanager base URL to send alerts to (repeat, or separate with commas).
    #[arg(
        long,
        env = "TALLY_AGENT_ALERTMANAGER_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) alertmanager_url: Vec<String>,
    /// Webhook URL that gets a JSON POST when an alert fires or resolves (repeat, or separate with commas).
    #[arg(
        long,
        env = "TALLY_AGENT_WEBHOOK_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) webhook_url: Vec<String>,
    /// A mirror to audit, FROM=TO as CLUSTER:TOPIC=CLUSTER:TOPIC (a:orders=b:a.orders); one
    /// `*` on both sides makes a pattern, TO filled with what it matched in FROM (a:*=b:a.*).
    /// The copy's broker count becomes tier mirror:<cluster> of the source topic (repeat, or
    /// separate with commas; replaces the config file's [[mirror]] rules).
    #[arg(
        long,
        env = "TALLY_AGENT_MIRROR",
        value_name = "FROM=TO",
        value_delimiter = ',',
        value_parser = mirror_rule
    )]
    pub(crate) mirror: Vec<tally_agent::mirror::MirrorConfig>,
    /// The agent's URL as people reach it, for the alerts' generatorURL [default: http://<listen>].
    #[arg(long, env = "TALLY_AGENT_EXTERNAL_URL", value_name = "URL")]
    pub(crate) external_url: Option<String>,
    /// How often firing alerts are sent to Alertmanager again [default: 1m].
    #[arg(long, env = "TALLY_AGENT_ALERT_RESEND", value_name = "DURATION", value_parser = duration)]
    pub(crate) alert_resend: Option<Duration>,
    /// How long one notification request may take [default: 10s].
    #[arg(long, env = "TALLY_AGENT_NOTIFY_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) notify_timeout: Option<Duration>,
    /// Print the effective config (defaults, file, environment and flags merged) as TOML and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

impl AgentArgs {
    /// The effective config.
    pub(crate) fn resolve(&self) -> anyhow::Result<AgentConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file \"{}\"", path.display()))?;
                AgentConfig::from_toml(&text, &path.display().to_string())?
            }
            None => AgentConfig::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )* };
        }
        take!(
            listen,
            data_dir,
            bucket_width,
            window,
            retention,
            tick,
            health_window,
            stop_after
        );
        take!(max_message_bytes, max_series_per_source, otlp_interval);
        take!(
            max_series,
            max_connections,
            header_read_timeout,
            hello_timeout
        );
        if self.otlp_endpoint.is_some() {
            cfg.otlp_endpoint = self.otlp_endpoint.clone();
        }
        if self.grace.is_some() {
            cfg.grace = self.grace;
        }
        if self.token.is_some() {
            cfg.token = self.token.clone();
        }
        if self.tls_cert.is_some() {
            cfg.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            cfg.tls_key = self.tls_key.clone();
        }
        cfg.protect_metrics |= self.protect_metrics;
        if !self.mirror.is_empty() {
            cfg.mirror = self.mirror.clone();
        }
        self.resolve_alerting(&mut cfg);
        cfg.ledger()?;
        cfg.notify(cfg.listen)?;
        Ok(cfg)
    }
}

impl AgentArgs {
    fn resolve_alerting(&self, cfg: &mut AgentConfig) {
        if self.rules.is_some() {
            cfg.rules = self.rules.clone();
        }
        if !self.alertmanager_url.is_empty() {
            cfg.alertmanager_url = self.alertmanager_url.clone();
        }
        if !self.webhook_url.is_empty() {
            cfg.webhook_url = self.webhook_url.clone();
        }
        if self.external_url.is_some() {
            cfg.external_url = self.external_url.clone();
        }
        if let Some(d) = self.alert_resend {
            cfg.alert_resend = d;
        }
        if let Some(d) = self.notify_timeout {
            cfg.notify_timeout = d;
        }
    }
}

/// Flags of `tally broker`. Each has an environment variable and a config-file key.
#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// TOML config file; its keys are the flag names with underscores (see tally-broker.example.toml).
    #[arg(long, env = "TALLY_BROKER_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address of the Kafka listener [default: 127.0.0.1:9092].
    #[arg(long, env = "TALLY_BROKER_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// host:port that clients are told to connect to [default: the listen address].
    #[arg(
        long,
        env = "TALLY_BROKER_ADVERTISED_LISTENER",
        value_name = "HOST:PORT"
    )]
    pub(crate) advertised_listener: Option<String>,
    /// Folder of the log and the broker's state [default: ./data/broker].
    #[arg(long, env = "TALLY_BROKER_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the broker's own /metrics [default: 127.0.0.1:9401].
    #[arg(long, env = "TALLY_BROKER_METRICS_LISTEN", value_name = "ADDR")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Serve no /metrics.
    #[arg(long, env = "TALLY_BROKER_NO_METRICS")]
    pub(crate) no_metrics: bool,
    /// Cluster name the broker reports under [default: local].
    #[arg(long, env = "TALLY_BROKER_CLUSTER", value_name = "NAME")]
    pub(crate) cluster: Option<String>,
    /// This broker's node id [default: 0].
    #[arg(long, env = "TALLY_BROKER_NODE_ID", value_name = "ID")]
    pub(crate) node_id: Option<i32>,
    /// The agent's ingest WebSocket URL (ws:// or wss://); "" counts without sending [default: ws://127.0.0.1:9400/api/v1/ingest].
    #[arg(long, env = "TALLY_BROKER_AGENT", value_name = "URL")]
    pub(crate) agent: Option<String>,
    /// CA certificate (PEM) that signed a wss:// agent's certificate [default: the system's root certificates].
    #[arg(long, env = "TALLY_BROKER_AGENT_CA", value_name = "FILE")]
    pub(crate) agent_ca: Option<PathBuf>,
    /// Bearer token the agent requires.
    #[arg(
        long,
        env = "TALLY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) agent_token: Option<String>,
    /// Certificate chain (PEM) of the Kafka listener; with --tls-key the listener speaks TLS only. Reloaded on SIGHUP.
    #[arg(long, env = "TALLY_BROKER_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TALLY_BROKER_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that client certificates must chain to: every client must present one (mTLS).
    #[arg(long, env = "TALLY_BROKER_TLS_CLIENT_CA", value_name = "FILE")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// SASL users, TOML ([[user]] name, password), readable by its owner only: every client must log in (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512). Reloaded on SIGHUP.
    #[arg(long, env = "TALLY_BROKER_SASL_USERS", value_name = "FILE")]
    pub(crate) sasl_users: Option<PathBuf>,
    /// Event-time bucket width; must equal the agent's [default: 60s].
    #[arg(long, env = "TALLY_BROKER_BUCKET_WIDTH", value_name = "DURATION", value_parser = duration)]
    pub(crate) bucket_width: Option<Duration>,
    /// Do not count or report (only to measure what the instrumentation costs).
    #[arg(long, env = "TALLY_BROKER_NO_INSTRUMENTATION")]
    pub(crate) no_instrumentation: bool,
    /// Create topics on Metadata requests: true or false [default: true].
    #[arg(long, env = "TALLY_BROKER_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub(crate) auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long, env = "TALLY_BROKER_DEFAULT_PARTITIONS", value_name = "N")]
    pub(crate) default_partitions: Option<i32>,
    /// Largest request frame in bytes [default: 104857600].
    #[arg(long, env = "TALLY_BROKER_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub(crate) max_frame_bytes: Option<usize>,
    /// Most client connections at once [default: 1024].
    #[arg(long, env = "TALLY_BROKER_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Longest a request may take to arrive, first byte to last; also how long a new connection may stay silent [default: 30s].
    #[arg(long, env = "TALLY_BROKER_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) request_timeout: Option<Duration>,
    /// Close a connection that sends no request for this long (Kafka's connections.max.idle.ms) [default: 10m].
    #[arg(long, env = "TALLY_BROKER_IDLE_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Most record bytes in one Fetch response (Kafka's fetch.max.bytes); the first batch is returned whole even past it [default: 57671680].
    #[arg(long, env = "TALLY_BROKER_FETCH_MAX_BYTES", value_name = "BYTES")]
    pub(crate) fetch_max_bytes: Option<usize>,
    /// Most bytes the compressed batches of one Produce request may decompress to [default: 268435456].
    #[arg(
        long,
        env = "TALLY_BROKER_MAX_DECOMPRESSED_BYTES",
        value_name = "BYTES"
    )]
    pub(crate) max_decompressed_bytes: Option<u64>,
    /// When appends reach the disk: always, interval:MS or never [default: interval:1000].
    #[arg(long, env = "TALLY_BROKER_FSYNC", value_name = "POLICY")]
    pub(crate) fsync: Option<String>,
    /// Roll a segment at this size in bytes [default: 1073741824].
    #[arg(long, env = "TALLY_BROKER_SEGMENT_BYTES", value_name = "BYTES")]
    pub(crate) segment_bytes: Option<u64>,
    /// Roll a segment this long after it was opened [default: 7d].
    #[arg(long, env = "TALLY_BROKER_SEGMENT_TIME", value_name = "DURATION", value_parser = duration)]
    pub(crate) segment_time: Option<Duration>,
    /// Default retention by time for topics; `retention.ms` overrides it [default: 7d].
    #[arg(long, env = "TALLY_BROKER_RETENTION", value_name = "DURATION", value_parser = duration)]
    pub(crate) retention: Option<Duration>,
    /// Default retention by size per partition; `retention.bytes` overrides it [default: unlimited].
    #[arg(long, env = "TALLY_BROKER_RETENTION_BYTES", value_name = "BYTES")]
    pub(crate) retention_bytes: Option<u64>,
    /// How often retention and segment rolling are checked [default: 30s].
    #[arg(long, env = "TALLY_BROKER_RETENTION_CHECK", value_name = "DURATION", value_parser = duration)]
    pub(crate) retention_check: Option<Duration>,
    /// How long a consumer group that was empty waits for more members before its first generation (Kafka's group.initial.rebalance.delay.ms) [default: 3s].
    #[arg(long, env = "TALLY_BROKER_GROUP_INITIAL_REBALANCE_DELAY", value_name = "DURATION", value_parser = duration)]
    pub(crate) group_initial_rebalance_delay: Option<Duration>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

impl BrokerArgs {
    /// The effective config.
    pub(crate) fn resolve(&self) -> anyhow::Result<BrokerConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file \"{}\"", path.display()))?;
                BrokerConfig::from_toml(&text, &path.display().to_string())?
            }
            None => BrokerConfig::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )* };
        }
        take!(
            listen,
            data_dir,
            cluster,
            node_id,
            auto_create_topics,
            default_partitions,
            max_frame_bytes
        );
        take!(
            max_connections,
            fsync,
            segment_bytes,
            segment_time,
            retention_check,
            agent,
            bucket_width
        );
        take!(
            request_timeout,
            idle_timeout,
            fetch_max_bytes,
            max_decompressed_bytes,
            group_initial_rebalance_delay
        );
        if self.agent_token.is_some() {
            cfg.agent_token = self.agent_token.clone();
        }
        if self.agent_ca.is_some() {
            cfg.agent_ca = self.agent_ca.clone();
        }
        for (flag, value) in [
            (&mut cfg.tls_cert, &self.tls_cert),
            (&mut cfg.tls_key, &self.tls_key),
            (&mut cfg.tls_client_ca, &self.tls_client_ca),
            (&mut cfg.sasl_users, &self.sasl_users),
        ] {
            if value.is_some() {
                flag.clone_from(value);
            }
        }
        if self.no_instrumentation {
            cfg.instrumentation = false;
        }
        if self.advertised_listener.is_some() {
            cfg.advertised_listener = self.advertised_listener.clone();
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        if self.no_metrics {
            cfg.metrics_listen = None;
        }
        if self.retention.is_some() {
            cfg.retention = self.retention;
        }
        if self.retention_bytes.is_some() {
            cfg.retention_bytes = self.retention_bytes;
        }
        cfg.check()?;
        Ok(cfg)
    }
}

/// Flags of `tally collect`. Each has a config-file key (the flag name with
/// underscores); a flag sets the value for every cluster, and a `[[cluster]]`
/// block's own key wins for its cluster.
#[derive(Debug, Args)]
pub(crate) struct CollectArgs {
    /// TOML config file: process keys (agent, data_dir, metrics_listen, bucket_width) and any cluster key at the top level, [[cluster]] blocks for several clusters (see tally-collect.example.toml).
    #[arg(long, env = "TALLY_COLLECT_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The cluster's bootstrap servers, HOST:PORT[,HOST:PORT…] (required without [[cluster]] blocks).
    #[arg(long, env = "TALLY_COLLECT_BOOTSTRAP", value_name = "HOST:PORT[,…]")]
    pub(crate) bootstrap: Option<String>,
    /// The cluster label of everything reported (required without [[cluster]] blocks); the source is collect-<cluster>.
    #[arg(long, env = "TALLY_COLLECT_CLUSTER", value_name = "NAME")]
    pub(crate) cluster: Option<String>,
    /// The agent's ingest WebSocket URL (ws:// or wss://); "" sends nothing [default: ws://127.0.0.1:9400/api/v1/ingest].
    #[arg(long, env = "TALLY_COLLECT_AGENT", value_name = "URL")]
    pub(crate) agent: Option<String>,
    /// Bearer token the agent requires.
    #[arg(
        long,
        env = "TALLY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) agent_token: Option<String>,
    /// CA certificate (PEM) that signed a wss:// agent's certificate [default: the system's root certificates].
    #[arg(long, env = "TALLY_COLLECT_AGENT_CA", value_name = "FILE")]
    pub(crate) agent_ca: Option<PathBuf>,
    /// Folder of the collector's state (commit times per cluster) [default: ./data/collect].
    #[arg(long, env = "TALLY_COLLECT_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the collector's own /metrics (tally_collect_*); "" turns it off [default: 127.0.0.1:9402].
    #[arg(long, env = "TALLY_COLLECT_METRICS_LISTEN", value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,
    /// Width of the event-time buckets; must equal the agent's [default: 60s].
    #[arg(long, env = "TALLY_COLLECT_BUCKET_WIDTH", value_name = "DURATION")]
    pub(crate) bucket_width: Option<String>,
    /// Topics to watch: a regex that matches the whole name [default: all but internal ones].
    #[arg(long, env = "TALLY_COLLECT_TOPICS", value_name = "REGEX")]
    pub(crate) topics: Option<String>,
    /// Topics not to watch: a regex that matches the whole name.
    #[arg(long, env = "TALLY_COLLECT_EXCLUDE_TOPICS", value_name = "REGEX")]
    pub(crate) exclude_topics: Option<String>,
    /// Also watch internal topics (__consumer_offsets and other names that start with __).
    #[arg(long, env = "TALLY_COLLECT_INCLUDE_INTERNAL")]
    pub(crate) include_internal: bool,
    /// Consumer groups to watch: a regex that matches the whole name [default: all].
    #[arg(long, env = "TALLY_COLLECT_GROUPS", value_name = "REGEX")]
    pub(crate) groups: Option<String>,
    /// Consumer groups not to watch: a regex that matches the whole name.
    #[arg(long, env = "TALLY_COLLECT_EXCLUDE_GROUPS", value_name = "REGEX")]
    pub(crate) exclude_groups: Option<String>,
    /// Groups that read committed data only (isolation.level=read_committed): their lag is measured against the last stable offset.
    #[arg(
        long,
        env = "TALLY_COLLECT_READ_COMMITTED_GROUPS",
        value_name = "REGEX"
    )]
    pub(crate) read_committed_groups: Option<String>,
    /// How often offsets are polled [default: 10s].
    #[arg(long, env = "TALLY_COLLECT_LAG_INTERVAL", value_name = "DURATION")]
    pub(crate) lag_interval: Option<String>,
    /// How often topics, partitions and groups are discovered again [default: 30s].
    #[arg(long, env = "TALLY_COLLECT_METADATA_INTERVAL", value_name = "DURATION")]
    pub(crate) metadata_interval: Option<String>,
    /// An Empty group with no new commit for this long is forgotten (Burrow's expiry) [default: 7d].
    #[arg(
        long,
        env = "TALLY_COLLECT_FORGET_EMPTY_GROUPS_AFTER",
        value_name = "DURATION"
    )]
    pub(crate) forget_empty_groups_after: Option<String>,
    /// How long one request to a broker may take [default: 30s].
    #[arg(long, env = "TALLY_COLLECT_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub(crate) request_timeout: Option<String>,
    /// Watched topics whose records the collector reads, once, for exact books per event-time bucket (broker = consumed + pending + expired + skipped): a regex that matches the whole name [default: every watched topic].
    #[arg(long, env = "TALLY_COLLECT_AUDIT_TOPICS", value_name = "REGEX")]
    pub(crate) audit_topics: Option<String>,
    /// Read no records at all: lag, health and metadata only (no books).
    #[arg(long, env = "TALLY_COLLECT_NO_AUDIT")]
    pub(crate) no_audit: bool,
    /// The most bytes per second the collector fetches from a cluster to read its records: 1048576, 500KB, 10MiB [default: no cap].
    #[arg(long, env = "TALLY_COLLECT_MAX_READ_RATE", value_name = "BYTES/s")]
    pub(crate) max_read_rate: Option<String>,
    /// Where an audited partition read for the first time starts: earliest (all the log still holds) or latest (what is appended from now on) [default: earliest].
    #[arg(long, env = "TALLY_COLLECT_START", value_name = "earliest|latest")]
    pub(crate) start: Option<String>,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl [default: plaintext].
    #[arg(long, env = "TALLY_COLLECT_SECURITY_PROTOCOL", value_name = "PROTOCOL")]
    pub(crate) security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.
    #[arg(long, env = "TALLY_COLLECT_SASL_MECHANISM", value_name = "MECHANISM")]
    pub(crate) sasl_mechanism: Option<String>,
    /// The SASL user.
    #[arg(long, env = "TALLY_COLLECT_SASL_USERNAME", value_name = "USER")]
    pub(crate) sasl_username: Option<String>,
    /// The SASL password (prefer the environment variable or --sasl-password-file; never printed).
    #[arg(
        long,
        env = "TALLY_COLLECT_SASL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub(crate) sasl_password: Option<String>,
    /// A file holding the SASL password, readable by its owner only.
    #[arg(long, env = "TALLY_COLLECT_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub(crate) sasl_password_file: Option<PathBuf>,
    /// A file holding the OAUTHBEARER token, read again at each login.
    #[arg(
        long,
        env = "TALLY_COLLECT_SASL_OAUTHBEARER_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub(crate) sasl_oauthbearer_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the cluster's TLS [default: the system's root certificates].
    #[arg(long, env = "TALLY_COLLECT_SSL_CA", value_name = "FILE")]
    pub(crate) ssl_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that require one (mTLS).
    #[arg(long, env = "TALLY_COLLECT_SSL_CERT", value_name = "FILE")]
    pub(crate) ssl_cert: Option<PathBuf>,
    /// Private key (PEM) of --ssl-cert.
    #[arg(long, env = "TALLY_COLLECT_SSL_KEY", value_name = "FILE")]
    pub(crate) ssl_key: Option<PathBuf>,
    /// Print the effective settings (passwords and tokens redacted) and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

impl CollectArgs {
    /// The effective config: the file's top level with the flags over it, and each
    /// [[cluster]] block over that.
    pub(crate) fn resolve(&self) -> anyhow::Result<tally_collect::config::CollectConfig> {
        use tally_collect::config::{Bootstrap, ClusterKeys, CollectConfig, FileConfig};
        let mut file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file \"{}\"", path.display()))?;
                FileConfig::parse(&text, &path.display().to_string())?
            }
            None => FileConfig::default(),
        };
        let p = &mut file.process;
        if self.agent.is_some() {
            p.agent.clone_from(&self.agent);
        }
        if self.agent_token.is_some() {
            p.agent_token.clone_from(&self.agent_token);
        }
        if self.agent_ca.is_some() {
            p.agent_ca.clone_from(&self.agent_ca);
        }
        if self.data_dir.is_some() {
            p.data_dir.clone_from(&self.data_dir);
        }
        if self.metrics_listen.is_some() {
            p.metrics_listen.clone_from(&self.metrics_listen);
        }
        if self.bucket_width.is_some() {
            p.bucket_width.clone_from(&self.bucket_width);
        }
        let flags = ClusterKeys {
            cluster: self.cluster.clone(),
            bootstrap: self.bootstrap.clone().map(Bootstrap::Joined),
            security_protocol: self.security_protocol.clone(),
            sasl_mechanism: self.sasl_mechanism.clone(),
            sasl_username: self.sasl_username.clone(),
            sasl_password: self.sasl_password.clone(),
            sasl_password_file: self.sasl_password_file.clone(),
            sasl_oauthbearer_token_file: self.sasl_oauthbearer_token_file.clone(),
            ssl_ca: self.ssl_ca.clone(),
            ssl_cert: self.ssl_cert.clone(),
            ssl_key: self.ssl_key.clone(),
            topics: self.topics.clone(),
            exclude_topics: self.exclude_topics.clone(),
            include_internal: self.include_internal.then_some(true),
            groups: self.groups.clone(),
            exclude_groups: self.exclude_groups.clone(),
            read_committed_groups: self.read_committed_groups.clone(),
            lag_interval: self.lag_interval.clone(),
            metadata_interval: self.metadata_interval.clone(),
            forget_empty_groups_after: self.forget_empty_groups_after.clone(),
            request_timeout: self.request_timeout.clone(),
            audit_topics: self.audit_topics.clone(),
            audit: self.no_audit.then_some(false),
            max_read_rate: self.max_read_rate.clone(),
            start: self.start.clone(),
        };
        if !file.clusters.is_empty() && (self.cluster.is_some() || self.bootstrap.is_some()) {
            anyhow::bail!(
                "--cluster and --bootstrap name one cluster; the config file \"{}\" has [[cluster]] blocks: put the cluster there",
                self.config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        let defaults = file.defaults.overridden_by(&flags);
        Ok(CollectConfig::resolve(
            &file.process,
            &defaults,
            &file.clusters,
        )?)
    }
}

/// The effective collector settings as TOML, secrets redacted.
pub(crate) fn collect_config_toml(cfg: &tally_collect::config::CollectConfig) -> String {
    let mut out = String::new();
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    out.push_str(&format!("agent = {}\n", q(&cfg.agent)));
    if cfg.agent_token.is_some() {
        out.push_str("agent_token = \"<redacted>\"\n");
    }
    if let Some(ca) = &cfg.agent_ca {
        out.push_str(&format!("agent_ca = {}\n", q(&ca.display().to_string())));
    }
    out.push_str(&format!(
        "data_dir = {}\n",
        q(&cfg.data_dir.display().to_string())
    ));
    out.push_str(&format!(
        "metrics_listen = {}\n",
        q(&cfg
            .metrics_listen
            .map(|a| a.to_string())
            .unwrap_or_default())
    ));
    out.push_str(&format!(
        "bucket_width = {}\n",
        q(&humantime::format_duration(cfg.bucket_width).to_string())
    ));
    for c in &cfg.clusters {
        out.push_str("\n[[cluster]]\n");
        out.push_str(&format!("cluster = {}\n", q(&c.name)));
        out.push_str(&format!(
            "bootstrap = {}\n",
            q(&c.client.bootstrap.join(","))
        ));
        out.push_str(&format!(
            "security_protocol = {}\n",
            q(&c.client.security_protocol.to_string())
        ));
        if let Some(m) = &c.client.sasl_mechanism {
            out.push_str(&format!("sasl_mechanism = {}\n", q(&m.to_string())));
        }
        if let Some(u) = &c.client.sasl_username {
            out.push_str(&format!("sasl_username = {}\n", q(u)));
        }
        if c.client.sasl_password.is_some() {
            out.push_str("sasl_password = \"<redacted>\"\n");
        }
        for (key, path) in [
            (
                "sasl_oauthbearer_token_file",
                &c.client.sasl_oauthbearer_token_file,
            ),
            ("ssl_ca", &c.client.tls.ca),
            ("ssl_cert", &c.client.tls.cert),
            ("ssl_key", &c.client.tls.key),
        ] {
            if let Some(p) = path {
                out.push_str(&format!("{key} = {}\n", q(&p.display().to_string())));
            }
        }
        let f = &c.filters;
        for (key, filter) in [
            ("topics", &f.topics),
            ("exclude_topics", &f.exclude_topics),
            ("groups", &f.groups),
            ("exclude_groups", &f.exclude_groups),
            ("read_committed_groups", &f.read_committed_groups),
            ("audit_topics", &c.audit_topics),
        ] {
            if let Some(filter) = filter {
                out.push_str(&format!("{key} = {}\n", q(filter.pattern())));
            }
        }
        out.push_str(&format!("include_internal = {}\n", f.include_internal));
        out.push_str(&format!("audit = {}\n", c.audit_topics.is_some()));
        if let Some(rate) = c.tail.max_read_rate {
            out.push_str(&format!("max_read_rate = {}\n", q(&rate.to_string())));
        }
        out.push_str(&format!(
            "start = {}\n",
            q(match c.tail.start {
                tally_collect::tail::StartAt::Earliest => "earliest",
                tally_collect::tail::StartAt::Latest => "latest",
            })
        ));
        for (key, d) in [
            ("lag_interval", c.lag_interval),
            ("metadata_interval", c.metadata_interval),
            ("forget_empty_groups_after", c.forget_empty_groups_after),
            ("request_timeout", c.client.request_timeout),
        ] {
            out.push_str(&format!(
                "{key} = {}\n",
                q(&humantime::format_duration(d).to_string())
            ));
        }
    }
    out
}

/// Flags of `tally demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Address of the broker's Kafka listener.
    #[arg(
        long,
        env = "TALLY_DEMO_KAFKA_LISTEN",
        default_value = "127.0.0.1:9092",
        value_name = "ADDR"
    )]
    pub(crate) kafka_listen: SocketAddr,
    /// Address of the broker's /metrics.
    #[arg(
        long,
        env = "TALLY_DEMO_METRICS_LISTEN",
        default_value = "127.0.0.1:9401",
        value_name = "ADDR"
    )]
    pub(crate) metrics_listen: SocketAddr,
    /// Address of the agent's HTTP listener.
    #[arg(
        long,
        env = "TALLY_DEMO_AGENT_LISTEN",
        default_value = "127.0.0.1:9400",
        value_name = "ADDR"
    )]
    pub(crate) agent_listen: SocketAddr,
    /// Folder for the demo's state [default: a temporary folder, removed at exit].
    #[arg(long, env = "TALLY_DEMO_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Bucket width of the demo (short, so statuses change while you watch).
    #[arg(long, env = "TALLY_DEMO_BUCKET_WIDTH", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub(crate) bucket_width: Duration,
    /// Run headless: no live screen, a summary table at the end.
    #[arg(long)]
    pub(crate) no_tui: bool,
    /// Stop on its own after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub(crate) duration: Option<u64>,
}

/// Flags of `tally dashboard`. Each has an environment variable.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The agent's base URL (http://, https://, ws:// or wss://); the feed is its /api/v1/stream.
    #[arg(
        long,
        env = "TALLY_DASHBOARD_AGENT",
        default_value = "http://127.0.0.1:9400",
        value_name = "URL"
    )]
    pub(crate) agent: String,
    /// Bearer token the agent requires.
    #[arg(
        long,
        env = "TALLY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// CA certificate (PEM) that signed an https:// agent's certificate [default: the system's root certificates].
    #[arg(long, env = "TALLY_DASHBOARD_AGENT_CA", value_name = "FILE")]
    pub(crate) agent_ca: Option<PathBuf>,
    /// How often the screen is redrawn when no data arrives (clocks, staleness).
    #[arg(long, env = "TALLY_DASHBOARD_TICK", default_value = "1s", value_parser = duration, value_name = "DURATION")]
    pub(crate) tick: Duration,
}

impl DashboardArgs {
    /// The dashboard's config; the URL is checked here so that a bad one is
    /// refused before the terminal is taken over.
    pub(crate) fn resolve(&self) -> anyhow::Result<tally_dashboard::DashboardConfig> {
        tally_dashboard::conn::stream_url(&self.agent)?;
        let mut cfg = tally_dashboard::DashboardConfig::new(self.agent.clone());
        cfg.token = self.token.clone();
        if let Some(ca) = &self.agent_ca {
            // A CA file that cannot be used is refused before the terminal is taken over.
            tally_audit::tls::client_config(Some(ca))?;
            cfg.agent_ca = Some(ca.clone());
        }
        cfg.tick = self.tick.max(Duration::from_millis(50));
        Ok(cfg)
    }
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Agent(args) => {
            let cfg = args.resolve()?;
            if args.print_config {
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            runtime.block_on(tally_agent::service::run(cfg))?;
            Ok(())
        }
        Command::Broker(args) => {
            let cfg = args.resolve()?;
            if args.print_config {
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            runtime.block_on(tally_broker::server::run(
                cfg,
                tally_agent::service::shutdown_signal(),
            ))?;
            Ok(())
        }
        Command::Collect(args) => {
            let cfg = args.resolve()?;
            if args.print_config {
                print!("{}", collect_config_toml(&cfg));
                return Ok(());
            }
            runtime.block_on(tally_collect::run(
                cfg,
                tally_agent::service::shutdown_signal(),
            ))?;
            Ok(())
        }
        Command::Demo(args) => runtime.block_on(crate::demo::run(args)),
        Command::Dashboard(args) => {
            let cfg = args.resolve()?;
            let _quiet = crate::QuietLog::new();
            runtime.block_on(tally_dashboard::run(cfg))?;
            Ok(())
        }
    }
}
