//! `tally`: the command line. Each subcommand wires flags, environment and
//! config file into one of the library crates.

mod cli;
mod demo;
mod summary;
mod workload;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli.log);
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause said once even where a message
/// already quotes the one beneath it.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| LogWriter)
        .init();
}

/// Set while the dashboard owns the terminal: log lines would tear its
/// screen, so they are dropped until it is gone.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Drops log lines while alive (the dashboard is on screen).
pub(crate) struct QuietLog;

impl QuietLog {
    pub(crate) fn new() -> QuietLog {
        QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
        QuietLog
    }
}

impl Drop for QuietLog {
    fn drop(&mut self) {
        QUIET.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Standard error, unless a [`QuietLog`] is alive.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
