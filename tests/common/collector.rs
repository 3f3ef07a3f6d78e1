//! A running `tally collect` for the collector's end-to-end tests: it reports to a
//! test's agent, keeps its state in a folder (`<dir>/state`), polls lag and metadata
//! every second, logs `tally_collect` at debug into `<dir>/collect-<port>.log`, and
//! is killed when dropped.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Agent, free_port, metric, tail, tally, try_get};

/// A running `tally collect`.
pub struct Collector {
    /// The process (a test may kill -9 it).
    pub child: Child,
    /// Its own /metrics.
    pub metrics: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl Collector {
    /// Starts it with `args` (the cluster, or `--config`) in a folder of its own,
    /// and waits until its /metrics answers.
    pub fn start(agent: &Agent, args: &[&str]) -> Collector {
        let owned = tempfile::tempdir().unwrap();
        let dir = owned.path().to_owned();
        Collector::launch(agent, &dir, args, Some(owned))
    }

    /// A collector on `broker` as cluster `copy`, reading the topics `topics` (a
    /// regex) for its books, in 60 s buckets: the second view of a broker whose own
    /// instrumentation reports as `local`.
    pub fn copy_of(agent: &Agent, broker: &super::Broker, topics: &str) -> Collector {
        Collector::start(
            agent,
            &[
                "--cluster",
                "copy",
                "--bootstrap",
                broker.addr(),
                "--bucket-width",
                "60s",
                "--audit-topics",
                topics,
            ],
        )
    }

    /// Starts it with `args` keeping its state in `dir` (which a restart may reuse),
    /// and waits until its /metrics answers.
    pub fn start_in(agent: &Agent, dir: &Path, args: &[&str]) -> Collector {
        std::fs::create_dir_all(dir).unwrap();
        Collector::launch(agent, dir, args, None)
    }

    fn launch(
        agent: &Agent,
        dir: &Path,
        args: &[&str],
        owned: Option<tempfile::TempDir>,
    ) -> Collector {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("collect-{}.log", metrics.port()));
        let child = tally()
            .args([
                "collect",
                "--agent",
                &format!("ws://{}/api/v1/ingest", agent.addr),
            ])
            .args(["--metrics-listen", &metrics.to_string(), "--data-dir"])
            .arg(dir.join("state"))
            .args(["--lag-interval", "1s", "--metadata-interval", "1s"])
            .args(args)
            .env_remove("RUST_LOG")
            .env("TALLY_LOG", "info,tally_collect=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut c = Collector {
            child,
            metrics,
            log,
            dir: dir.to_owned(),
            _owned: owned,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("tally collect exited with {status}: {}", c.log());
            }
            if try_get(metrics, "/metrics", None).is_ok() {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "collector /metrics never came up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its folder (`state/` inside holds what it saves).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its /metrics text ("" when it does not answer).
    pub fn metrics(&self) -> String {
        try_get(self.metrics, "/metrics", None)
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// One series of `cluster`.
    pub fn metric(&self, name: &str, cluster: &str) -> Option<f64> {
        metric(&self.metrics(), name, &[("cluster", cluster)])
    }

    /// `tally_collect_up{cluster}`.
    pub fn up(&self, cluster: &str) -> Option<f64> {
        self.metric("tally_collect_up", cluster)
    }

    /// Polls `f` until it returns Some, for up to `secs` seconds; the log's tail
    /// on a timeout.
    pub fn until<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&Collector) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
