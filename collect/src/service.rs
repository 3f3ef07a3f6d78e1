//! The collector process: one watch per cluster, each with its own emitter (source
//! `collect-<cluster>`), and the collector's own `/metrics`.

use std::future::Future;

use tally_audit::BucketWidth;
use tally_audit::TierKind;
use tally_audit::emitter::{Emitter, EmitterConfig};
use tracing::info;

use crate::cluster::ClusterWatch;
use crate::config::CollectConfig;
use crate::metrics::{self, Metrics};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state folder.
    #[error("cannot use the data folder \"{path}\": {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The /metrics listener.
    #[error("cannot listen for /metrics on \"{addr}\": {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

/// Runs the collector until `shutdown` resolves.
pub async fn run(cfg: CollectConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let metrics = Metrics::new();
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    if let Some(addr) = cfg.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone())
            .await
            .map_err(|source| StartError::Metrics {
                addr: addr.to_string(),
                source,
            })?;
        info!(%bound, "collector /metrics listening");
    }
    let width_ms = u64::try_from(cfg.bucket_width.as_millis()).unwrap_or(u64::MAX);
    let width = BucketWidth::new(width_ms).map_err(|e| StartError::Config(e.to_string()))?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut emitters = Vec::new();
    for settings in cfg.clusters {
        let emitter = if cfg.agent.is_empty() {
            None
        } else {
            let mut ec = EmitterConfig::new(
                cfg.agent.clone(),
                format!("collect-{}", settings.name),
                settings.name.clone(),
                if settings.audit_topics.is_some() {
                    vec![TierKind::Broker, TierKind::Group]
                } else {
                    vec![TierKind::Group]
                },
                width,
            );
            ec.token.clone_from(&cfg.agent_token);
            ec.agent_ca.clone_from(&cfg.agent_ca);
            let e = Emitter::start(ec);
            emitters.push(e.clone());
            Some(e)
        };
        info!(
            cluster = %settings.name,
            bootstrap = %settings.client.bootstrap.join(","),
            security_protocol = %settings.client.security_protocol,
            lag_interval = ?settings.lag_interval,
            "watching cluster"
        );
        let watch = ClusterWatch::new(settings, metrics.clone(), emitter, &cfg.data_dir, width)
            .map_err(|source| StartError::DataDir {
                path: cfg.data_dir.display().to_string(),
                source,
            })?;
        tasks.push(tokio::spawn(watch.run(stop_rx.clone())));
    }
    shutdown.await;
    info!("stopping the collector");
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for e in emitters {
        e.shutdown().await;
    }
    Ok(())
}
