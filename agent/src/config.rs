//! The agent's settings, as read from a TOML file and merged with flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_alerts::{NotifyConfig, RulesSource};
use tally_audit::BucketWidth;

use crate::health::HealthConfig;
use crate::ledger::LedgerConfig;
use crate::mirror::{MirrorConfig, MirrorRules};
use crate::{Error, Result};

/// Every setting of `tally agent`. Field names are the config-file keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Address of the HTTP listener (API, ingest, metrics).
    pub listen: SocketAddr,
    /// Folder of the state database.
    pub data_dir: PathBuf,
    /// Width of the event-time buckets.
    #[serde(with = "humantime_serde")]
    pub bucket_width: Duration,
    /// How long after a bucket ends it stays open; default 2 × width.
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
    /// How far back gauges, completeness and the bucket view reach.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long cells and closed-bucket history are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the books are evaluated into a new snapshot.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Commits per partition in the Burrow window.
    pub health_window: usize,
    /// Lag above zero with no commit for this long is `stop`, even on a quiet partition.
    #[serde(with = "humantime_serde")]
    pub stop_after: Duration,
    /// Largest ingest message, in bytes.
    pub max_message_bytes: usize,
    /// Most series one source may open.
    pub max_series_per_source: usize,
    /// Most series all sources together may open.
    pub max_series: usize,
    /// Most connections (HTTP and WebSocket) open at once; at the limit a new one
    /// closes the oldest that has sent no request yet, or waits for a slot.
    pub max_connections: usize,
    /// How long a client may take to send a request's header (and a POST its
    /// body); a keep-alive connection idle for this long is closed too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long an ingest WebSocket may stay open without a `hello`.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Certificate chain (PEM) of the listener; with `tls_key` it speaks
    /// HTTPS only. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Shared bearer token for ingest and the API.
    #[serde(serialize_with = "redacted")]
    pub token: Option<String>,
    /// Also require the token on /metrics, /healthz and /readyz.
    pub protect_metrics: bool,
    /// OTLP/HTTP endpoint to push the metrics to (none: no push).
    pub otlp_endpoint: Option<String>,
    /// How often the metrics are pushed over OTLP.
    #[serde(with = "humantime_serde")]
    pub otlp_interval: Duration,
    /// Alert rules file (YAML, see alerts/examples/tally.rules.yaml); none: no alerts.
    pub rules: Option<PathBuf>,
    /// Alertmanager base URLs (`http://127.0.0.1:9093`) that alerts are sent to.
    pub alertmanager_url: Vec<String>,
    /// Webhook URLs that get a JSON POST when an alert fires or resolves.
    pub webhook_url: Vec<String>,
    /// The agent's URL as people reach it, for the alerts' generatorURL; default http://<listen>.
    pub external_url: Option<String>,
    /// How often firing alerts are sent to Alertmanager again.
    #[serde(with = "humantime_serde")]
    pub alert_resend: Duration,
    /// How long one notification request may take.
    #[serde(with = "humantime_serde")]
    pub notify_timeout: Duration,
    /// Mirror rules (`[[mirror]] from = "a:orders" to = "b:a.orders"`): the
    /// destination's `broker` count becomes tier `mirror:<cluster>` of the
    /// source topic.
    pub mirror: Vec<MirrorConfig>,
    /// Rules as YAML text, used instead of `rules` (the demo's built-in
    /// rules); not a config-file key.
    #[serde(skip)]
    pub rules_text: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            data_dir: PathBuf::from("./data/agent"),
            bucket_width: Duration::from_millis(BucketWidth::DEFAULT.ms()),
            grace: None,
            window: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 86_400),
            tick: Duration::from_secs(1),
            health_window: HealthConfig::default().window,
            stop_after: Duration::from_millis(HealthConfig::default().stop_after_ms as u64),
            max_message_bytes: tally_audit::wire::DEFAULT_MAX_MESSAGE_BYTES,
            max_series_per_source: 100_000,
            max_series: crate::ledger::DEFAULT_MAX_SERIES,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            token: None,
            protect_metrics: false,
            otlp_endpoint: None,
            otlp_interval: Duration::from_secs(10),
            rules: None,
            alertmanager_url: Vec::new(),
            webhook_url: Vec::new(),
            external_url: None,
            alert_resend: Duration::from_secs(60),
            notify_timeout: Duration::from_secs(10),
            mirror: Vec::new(),
            rules_text: None,
        }
    }
}

/// What `--print-config` shows of a secret: that there is one, never its value.
pub const REDACTED: &str = "<redacted>";

fn redacted<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some(REDACTED),
        None => s.serialize_none(),
    }
}

impl AgentConfig {
    /// Reads a TOML config file; unknown keys and bad values are errors that name them.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("config file \"{origin}\": {e}")))
    }

    /// The config as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The bucket width, checked.
    pub fn width(&self) -> Result<BucketWidth> {
        let ms = u64::try_from(self.bucket_width.as_millis()).unwrap_or(u64::MAX);
        BucketWidth::new(ms).map_err(|e| Error::Config(format!("bucket_width: {e}")))
    }

    /// Checks every setting and derives the ledger's.
    pub fn ledger(&self) -> Result<LedgerConfig> {
        let width = self.width()?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut cfg = LedgerConfig::new(width);
        if let Some(grace) = self.grace {
            cfg.grace_ms = ms(grace);
        }
        cfg.window_ms = ms(self.window);
        cfg.retention_ms = ms(self.retention);
        cfg.mirrors = MirrorRules::parse(&self.mirror)?;
        cfg.live_ms = ms(self.tick)
            .saturating_mul(3)
            .max(crate::ledger::MIN_LIVE_MS);
        if cfg.window_ms < width.ms() + cfg.grace_ms {
            return Err(Error::Config(format!(
                "window \"{}\" is shorter than one bucket plus grace ({} ms): no bucket would ever be judged",
                humantime::format_duration(self.window),
                width.ms() + cfg.grace_ms
            )));
        }
        if cfg.retention_ms < cfg.window_ms {
            return Err(Error::Config(format!(
                "retention \"{}\" is shorter than the window \"{}\"",
                humantime::format_duration(self.retention),
                humantime::format_duration(self.window)
            )));
        }
        if self.tick < Duration::from_millis(10) {
            return Err(Error::Config(format!(
                "tick \"{}\" is too short: expected 10ms or more",
                humantime::format_duration(self.tick)
            )));
        }
        if self.health_window < 2 {
            return Err(Error::Config(format!(
                "health_window \"{}\" is too small: expected 2 commits or more",
                self.health_window
            )));
        }
        if self.max_message_bytes < 1024 {
            return Err(Error::Config(format!(
                "max_message_bytes \"{}\" is too small: expected 1024 or more",
                self.max_message_bytes
            )));
        }
        if let Some(t) = &self.token
            && t.is_empty()
        {
            return Err(Error::Config(
                "token is empty: leave it unset to disable authentication".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Config(
                "tls_cert and tls_key go together: give both (PEM files) for HTTPS, or neither"
                    .into(),
            ));
        }
        if let Some(url) = &self.otlp_endpoint {
            crate::otlp::endpoint(url)?;
        }
        if self.otlp_interval < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "otlp_interval \"{}\" is too short: expected 100ms or more",
                humantime::format_duration(self.otlp_interval)
            )));
        }
        if self.max_series_per_source == 0 || self.max_series == 0 {
            return Err(Error::Config(format!(
                "max_series_per_source \"{}\" and max_series \"{}\" must be 1 or more",
                self.max_series_per_source, self.max_series
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config(
                "max_connections \"0\" would accept no one: expected 1 or more".into(),
            ));
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("hello_timeout", self.hello_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(Error::Config(format!(
                    "{name} \"{}\" is too short: expected 100ms or more",
                    humantime::format_duration(value)
                )));
            }
        }
        cfg.max_series_per_source = self.max_series_per_source;
        cfg.max_series = self.max_series;
        cfg.health = HealthConfig {
            window: self.health_window,
            stop_after_ms: i64::try_from(ms(self.stop_after)).unwrap_or(i64::MAX),
        };
        Ok(cfg)
    }
}

impl AgentConfig {
    /// Where the alert rules come from, if anywhere.
    pub fn rules_source(&self) -> Option<RulesSource> {
        match (&self.rules_text, &self.rules) {
            (Some(text), _) => Some(RulesSource::Text {
                origin: "built-in rules".into(),
                text: text.clone(),
            }),
            (None, Some(path)) => Some(RulesSource::File(path.clone())),
            (None, None) => None,
        }
    }

    /// `https` when the listener has a certificate, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The notifiers' settings, checked; `listen` is the bound address, the
    /// default of `external_url`.
    pub fn notify(&self, listen: SocketAddr) -> Result<NotifyConfig> {
        let cfg = NotifyConfig {
            alertmanagers: self.alertmanager_url.clone(),
            webhooks: self.webhook_url.clone(),
            external_url: self
                .external_url
                .clone()
                .unwrap_or_else(|| format!("{}://{listen}", self.scheme())),
            resend_interval: self.alert_resend,
            timeout: self.notify_timeout,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_valid() {
        let cfg = AgentConfig::default();
        assert!(cfg.listen.ip().is_loopback());
        let ledger = cfg.ledger().unwrap();
        assert_eq!(ledger.grace_ms, 120_000);
    }

    #[test]
    fn file_keys_and_durations_parse() {
        let cfg = AgentConfig::from_toml(
            "listen = \"127.0.0.1:9999\"\nbucket_width = \"10s\"\nwindow = \"30m\"\ntoken = \"s3cret\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.ledger().unwrap().width.ms(), 10_000);
        let printed = cfg.to_toml();
        assert!(
            !printed.contains("s3cret") && printed.contains("token = \"<redacted>\""),
            "{printed}"
        );
        let round = AgentConfig::from_toml(&printed, "round trip").unwrap();
        assert_eq!(
            AgentConfig {
                token: cfg.token.clone(),
                ..round
            },
            cfg
        );
    }

    #[test]
    fn alerting_keys_parse_and_urls_are_checked() {
        let cfg = AgentConfig::from_toml(
            "rules = \"r.yaml\"\nalertmanager_url = [\"http://127.0.0.1:9093\"]\nwebhook_url = [\"http://127.0.0.1:8080/hook\"]\nalert_resend = \"30s\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(
            matches!(cfg.rules_source(), Some(RulesSource::File(p)) if p.as_os_str() == "r.yaml")
        );
        let notify = cfg.notify(cfg.listen).unwrap();
        assert_eq!(notify.alertmanagers, ["http://127.0.0.1:9093"]);
        assert_eq!(notify.external_url, "http://127.0.0.1:9400");
        assert_eq!(notify.resend_interval, Duration::from_secs(30));
        let bad = AgentConfig {
            webhook_url: vec!["localhost:8080".into()],
            ..AgentConfig::default()
        };
        let err = bad.notify(bad.listen).unwrap_err().to_string();
        assert!(
            err.contains("\"localhost:8080\"") && err.contains("http://"),
            "{err}"
        );
    }

    #[test]
    fn mirror_rules_parse_from_the_file_and_a_bad_one_is_named() {
        let cfg = AgentConfig::from_toml(
            "[[mirror]]\nfrom = \"a:*\"\nto = \"b:a.*\"\n\n[[mirror]]\nfrom = \"a:orders\"\nto = \"c:orders\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(cfg.mirror.len(), 2);
        let ledger = cfg.ledger().unwrap();
        assert_eq!(
            ledger.mirrors.source_of("b", "a.orders"),
            Some(("a", "orders".to_owned()))
        );
        assert_eq!(
            ledger.mirrors.source_of("c", "orders"),
            Some(("a", "orders".to_owned()))
        );
        let bad =
            AgentConfig::from_toml("[[mirror]]\nfrom = \"a:*\"\nto = \"b:orders\"\n", "a.toml")
                .unwrap();
        let err = bad.ledger().unwrap_err().to_string();
        assert!(
            err.contains("a:*=b:orders") && err.contains("one side only"),
            "{err}"
        );
        let unknown =
            AgentConfig::from_toml("[[mirror]]\nfrom = \"a:x\"\ntoo = \"b:x\"\n", "a.toml")
                .unwrap_err()
                .to_string();
        assert!(unknown.contains("too"), "{unknown}");
    }

    #[test]
    fn the_example_config_file_parses() {
        let text = include_str!("../../tally.example.toml");
        let cfg = AgentConfig::from_toml(text, "tally.example.toml").unwrap();
        cfg.ledger().unwrap();
        cfg.notify(cfg.listen).unwrap();
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = AgentConfig::from_toml("lissen = \"x\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml") && err.contains("lissen"), "{err}");
        let err = AgentConfig::from_toml("bucket_width = \"ten\"", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bucket_width") || err.contains("ten"), "{err}");
        let cfg = AgentConfig::from_toml("bucket_width = \"10ms\"", "a.toml").unwrap();
        let err = cfg.ledger().unwrap_err().to_string();
        assert!(err.contains("\"10\""), "{err}");
        let cfg = AgentConfig::from_toml("window = \"1s\"", "a.toml").unwrap();
        assert!(cfg.ledger().unwrap_err().to_string().contains("window"));
        let cfg = AgentConfig::from_toml("max_connections = 0", "a.toml").unwrap();
        let err = cfg.ledger().unwrap_err().to_string();
        assert!(err.contains("max_connections \"0\""), "{err}");
        let cfg = AgentConfig::from_toml("hello_timeout = \"5ms\"", "a.toml").unwrap();
        let err = cfg.ledger().unwrap_err().to_string();
        assert!(err.contains("hello_timeout \"5ms\""), "{err}");
    }
}
