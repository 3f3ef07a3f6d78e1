//! `tally demo`: an agent and a synthetic pipeline in one process.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use tally_agent::config::AgentConfig;
use tally_audit::BucketWidth;

use crate::cli::DemoArgs;
use crate::summary;
use crate::synthetic::{self, Synthetic};

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
    let cfg = AgentConfig {
        listen: args.agent_listen,
        data_dir: data_dir.join("agent"),
        bucket_width: args.bucket_width,
        grace: Some(args.bucket_width * 2),
        window: Duration::from_secs(600).max(args.bucket_width * 10),
        stop_after: Duration::from_secs(30),
        ..AgentConfig::default()
    };
    let agent = tally_agent::service::start(cfg).await?;
    let url = format!("ws://{}/api/v1/ingest", agent.addr());
    eprintln!(
        "tally demo: agent on http://{} (try /api/v1/topics, /api/v1/groups, /metrics); data in {}",
        agent.addr(),
        data_dir.display()
    );
    let (broker, clients) = synthetic::emitters(&url, width, None);
    let mut pipeline = Synthetic::new(width);
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = every_second.tick() => {}
            _ = tally_agent::service::shutdown_signal() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let now = tally_agent::service::now_ms();
        pipeline.step(now);
        pipeline.emit(&broker, &clients, now);
        seconds += 1;
        if !args.no_tui && seconds.is_multiple_of(2) {
            // Until the terminal dashboard lands, redraw the summary in place.
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "\x1b[2J\x1b[H{}\n(ctrl-c to stop)\n",
                summary::render(&agent.snapshot())
            );
            let _ = out.flush();
        } else if args.no_tui && seconds.is_multiple_of(10) {
            eprintln!("tally demo: {seconds}s");
        }
    }
    broker.flush(Duration::from_secs(3)).await;
    clients.flush(Duration::from_secs(3)).await;
    // One more evaluation so that the summary holds the last counts.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    println!("{}", summary::render(&agent.snapshot()));
    broker.shutdown().await;
    clients.shutdown().await;
    agent.shutdown().await;
    Ok(())
}
