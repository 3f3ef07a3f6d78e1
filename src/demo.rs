//! `tally demo`: the broker, the agent and a workload through the Kafka
//! protocol, in one process; and a second broker (cluster `replica`) that a
//! mirror in the workload copies `orders` to, audited as tier
//! `mirror:replica` of `orders`.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use tally_agent::config::AgentConfig;
use tally_audit::BucketWidth;
use tally_broker::config::BrokerConfig;

use crate::cli::DemoArgs;
use crate::summary;
use crate::workload;

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let width_ms = u64::try_from(args.bucket_width.as_millis()).unwrap_or(u64::MAX);
    let width = BucketWidth::new(width_ms).context("--bucket-width")?;
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tally-demo-")
                .tempdir()
                .context("cannot create a temporary folder")?;
            temp.path().to_path_buf()
        }
    };
    let agent_cfg = AgentConfig {
        listen: args.agent_listen,
        data_dir: data_dir.join("agent"),
        bucket_width: args.bucket_width,
        grace: Some(args.bucket_width * 2),
        window: Duration::from_secs(600).max(args.bucket_width * 10),
        stop_after: Duration::from_secs(30),
        // The example rules, so that the demo's lagging, stalled and
        // expiring groups fire alerts.
        rules_text: Some(tally_alerts::EXAMPLE_RULES.to_owned()),
        mirror: vec![tally_agent::mirror::MirrorConfig {
            from: format!("local:{}", workload::MIRRORED),
            to: format!("replica:{}", workload::MIRROR_COPY),
        }],
        ..AgentConfig::default()
    };
    let agent = tally_agent::service::start(agent_cfg).await?;
    let ingest = format!("ws://{}/api/v1/ingest", agent.addr());
    let broker_cfg = BrokerConfig {
        listen: args.kafka_listen,
        data_dir: data_dir.join("broker"),
        metrics_listen: Some(args.metrics_listen),
        agent: ingest.clone(),
        bucket_width: args.bucket_width,
        retention_check: Duration::from_secs(2),
        // The demo's groups start at once: nobody else is joining them.
        group_initial_rebalance_delay: Duration::ZERO,
        ..BrokerConfig::default()
    };
    let broker = tally_broker::server::start(broker_cfg).await?;
    let bootstrap = broker.addr().to_string();
    // The second cluster, on a port of its own choosing.
    let replica_cfg = BrokerConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.join("broker-replica"),
        metrics_listen: None,
        agent: ingest.clone(),
        cluster: "replica".to_owned(),
        bucket_width: args.bucket_width,
        group_initial_rebalance_delay: Duration::ZERO,
        ..BrokerConfig::default()
    };
    let replica = tally_broker::server::start(replica_cfg)
        .await
        .context("cannot start the second cluster's broker")?;
    let replica_bootstrap = replica.addr().to_string();
    eprintln!(
        "tally demo: Kafka on {bootstrap} (cluster local; a mirror copies orders to cluster replica on {replica_bootstrap}), agent on http://{} (/api/v1/topics, /api/v1/groups, /metrics), broker metrics on http://{}/metrics; data in {}",
        agent.addr(),
        broker
            .metrics_addr()
            .map_or_else(String::new, |a| a.to_string()),
        data_dir.display()
    );
    let pipeline = workload::start(&bootstrap, &replica_bootstrap, &ingest, width).await?;
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // One listener for the whole run, so that a signal arriving between two
    // ticks is not lost.
    let shutdown = tally_agent::service::shutdown_signal();
    tokio::pin!(shutdown);
    // Without a terminal to draw on (output to a file or a pipe), run headless.
    let tui = !args.no_tui && std::io::stdout().is_terminal();
    let mut shown = Ok(());
    if !tui {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        loop {
            tokio::select! {
                _ = every_second.tick() => {}
                _ = &mut shutdown => break,
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            seconds += 1;
            if seconds.is_multiple_of(10) {
                eprintln!("tally demo: {seconds}s");
            }
        }
    } else {
        // The dashboard, on the demo's own agent, until `q` (or ctrl-c,
        // which raw mode delivers as a key), a signal, or --duration.
        let dashboard = tally_dashboard::DashboardConfig::new(format!("http://{}", agent.addr()));
        let stop = async {
            match deadline {
                Some(d) => tokio::select! {
                    _ = &mut shutdown => {}
                    _ = tokio::time::sleep_until(d) => {}
                },
                None => (&mut shutdown).await,
            }
        };
        let quiet = crate::QuietLog::new();
        shown = tally_dashboard::run_until(dashboard, stop).await;
        drop(quiet);
    }
    pipeline.stop().await;
    broker.shutdown().await;
    replica.shutdown().await;
    // One more evaluation so that the summary holds the last counts.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    println!("{}", summary::render(&agent.snapshot()));
    agent.shutdown().await;
    shown.context("the dashboard failed")
}
