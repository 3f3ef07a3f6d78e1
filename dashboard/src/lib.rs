//! tally's terminal dashboard: a client of the agent's `/api/v1/stream`
//! feed, drawn with ratatui.
//!
//! The parts follow the data: [`conn`] keeps the WebSocket to the agent
//! open and reports frames and link changes; [`state`] reduces them into
//! one [`State`](state::State) (pure); [`input`] turns keys into actions on
//! that state (pure); [`view`] draws the state (pure, one module per tab).
//! [`run`] wires them to a real terminal.

pub mod conn;
mod error;
pub mod input;
pub mod state;
pub mod view;

use std::future::Future;
use std::io::{IsTerminal as _, Stdout};
use std::sync::Once;
use std::time::Duration;

use crossterm::event::{Event, EventStream};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

pub use error::{Error, Result};

use crate::conn::ConnEvent;
use crate::state::{Link, State};

/// How the dashboard runs.
#[derive(Clone)]
pub struct DashboardConfig {
    /// The agent's base URL, e.g. `http://127.0.0.1:9400` or `https://agent:9400`.
    pub agent: String,
    /// The agent's bearer token, where it requires one.
    pub token: Option<String>,
    /// A PEM file of the CA that signed an `https://` agent's certificate;
    /// without one the system's root certificates are trusted.
    pub agent_ca: Option<std::path::PathBuf>,
    /// How often the screen is redrawn when nothing arrives (clocks, staleness).
    pub tick: Duration,
    /// Whether to draw in colour (false where `NO_COLOR` is set).
    pub color: bool,
}

impl DashboardConfig {
    /// The dashboard of the agent at `agent`, redrawn every second, in
    /// colour unless `NO_COLOR` is set to something non-empty.
    pub fn new(agent: impl Into<String>) -> DashboardConfig {
        DashboardConfig {
            agent: agent.into(),
            token: None,
            agent_ca: None,
            tick: Duration::from_secs(1),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: show only whether there is one.
        f.debug_struct("DashboardConfig")
            .field("agent", &self.agent)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("agent_ca", &self.agent_ca)
            .field("tick", &self.tick)
            .field("color", &self.color)
            .finish()
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs the dashboard in this terminal until the user quits.
pub async fn run(cfg: DashboardConfig) -> Result<()> {
    run_until(cfg, std::future::pending()).await
}

/// Runs the dashboard until the user quits or `stop` completes. The
/// terminal is restored on every way out: return, error, drop and panic.
pub async fn run_until(cfg: DashboardConfig, stop: impl Future<Output = ()>) -> Result<()> {
    let url = conn::stream_url(&cfg.agent)?;
    if !std::io::stdout().is_terminal() {
        return Err(Error::NotATerminal);
    }
    let (tx, mut rx) = mpsc::channel(256);
    let connector = tally_audit::tls::AgentConnector::new(cfg.agent_ca.clone());
    let feed = tokio::spawn(conn::run(url, cfg.token.clone(), connector, tx));
    let _abort = AbortOnDrop(feed);
    let mut terminal = TerminalGuard::enter()?;
    let mut state = State::new(cfg.agent.clone(), cfg.color);
    state.now_ms = now_ms();
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut dirty = true;
    loop {
        if dirty {
            terminal
                .terminal
                .draw(|frame| view::render(&state, frame))?;
            dirty = false;
        }
        tokio::select! {
            () = &mut stop => break,
            event = rx.recv() => {
                let Some(event) = event else { break };
                on_conn(&mut state, event);
                // Take whatever else is waiting before drawing once.
                while let Ok(event) = rx.try_recv() {
                    on_conn(&mut state, event);
                }
                dirty = true;
            }
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => {
                    input::handle_key(&mut state, key);
                    dirty = true;
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            _ = tick.tick() => {
                state.now_ms = now_ms();
                dirty = true;
            }
        }
        if state.quit {
            break;
        }
    }
    Ok(())
}

fn on_conn(state: &mut State, event: ConnEvent) {
    let now = now_ms();
    match event {
        ConnEvent::Connecting { attempt } => state.set_link(Link::Connecting { attempt }, now),
        ConnEvent::Connected => state.set_link(Link::Connected, now),
        ConnEvent::Frame(message) => state.feed(message, now),
        ConnEvent::Down { error, retry_in } => state.set_link(
            Link::Disconnected {
                error,
                retry_at_ms: now + i64::try_from(retry_in.as_millis()).unwrap_or(0),
            },
            now,
        ),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The terminal in raw mode on the alternate screen; restored when dropped.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard> {
        install_panic_hook();
        enable_raw_mode()?;
        let mut stdout = std::io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen) {
            restore();
            return Err(e.into());
        }
        let terminal = match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e.into());
            }
        };
        let mut guard = TerminalGuard { terminal };
        guard.terminal.hide_cursor()?;
        guard.terminal.clear()?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        restore();
    }
}

/// Leaves raw mode and the alternate screen; harmless when not in them.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// A panic restores the terminal before its message is printed, so that the
/// message is readable and the shell usable.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
