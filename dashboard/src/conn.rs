//! The connection to the agent's feed: connecting, reading frames,
//! reconnecting with backoff, and telling the state what the link is doing.

use std::time::Duration;

use futures_util::StreamExt;
use tally_audit::feed::FeedMessage;
use tally_audit::tls::{AgentConnector, ConnectError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

use crate::{Error, Result};

/// What the connection reports to the screen.
#[derive(Debug)]
pub enum ConnEvent {
    /// An attempt starts.
    Connecting {
        /// 1 for the first attempt since the last good connection.
        attempt: u32,
    },
    /// The feed is open.
    Connected,
    /// One frame of the feed.
    Frame(FeedMessage),
    /// The attempt failed or the feed ended; the next attempt follows after `retry_in`.
    Down {
        /// What went wrong, for the user.
        error: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
}

/// Waits between attempts: doubling from `initial` up to `max`, back to
/// `initial` after a connection that delivered data.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; the one after is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Starts again from the initial wait.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The feed's WebSocket URL for the agent at `agent` (`http://host:port`,
/// `https://host:port`, `ws://` or `wss://`, with or without the path).
pub fn stream_url(agent: &str) -> Result<String> {
    let bad = |reason: &str| Error::AgentUrl {
        url: agent.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = agent
        .parse()
        .map_err(|_| bad("it is not a URL; expected e.g. http://127.0.0.1:9400"))?;
    let scheme = match uri.scheme_str() {
        Some("http" | "ws") => "ws",
        Some("https" | "wss") => "wss",
        Some(_) => {
            return Err(bad(
                "the scheme must be http:// or https:// (or ws://, wss://)",
            ));
        }
        None => {
            return Err(bad(
                "the scheme is missing; expected e.g. http://127.0.0.1:9400",
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(bad(
            "the host is missing; expected e.g. http://127.0.0.1:9400",
        ));
    };
    if uri.query().is_some() {
        return Err(bad(
            "a query string is not accepted; give the agent's base URL",
        ));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with("/api/v1/stream") {
        path.to_owned()
    } else {
        format!("{path}/api/v1/stream")
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` (through `connector`, which holds the TLS set-up)
/// again and again until `events` is closed, sending what happens.
pub async fn run(
    url: String,
    token: Option<String>,
    connector: AgentConnector,
    events: mpsc::Sender<ConnEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut attempt = 1;
    loop {
        if events
            .send(ConnEvent::Connecting { attempt })
            .await
            .is_err()
        {
            return;
        }
        let error = match session(&url, token.as_deref(), &connector, &events).await {
            Session::Closed => return,
            Session::Ended { got_data, error } => {
                if got_data {
                    backoff.reset();
                    attempt = 0;
                }
                error
            }
        };
        attempt += 1;
        let retry_in = backoff.next_wait();
        if events
            .send(ConnEvent::Down { error, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

enum Session {
    /// Nobody listens any more.
    Closed,
    /// The connection failed or ended.
    Ended { got_data: bool, error: String },
}

async fn session(
    url: &str,
    token: Option<&str>,
    connector: &AgentConnector,
    events: &mpsc::Sender<ConnEvent>,
) -> Session {
    let ended = |got_data, error: String| Session::Ended { got_data, error };
    let mut request = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => return ended(false, format!("bad URL \"{url}\": {e}")),
    };
    if let Some(t) = token {
        match HeaderValue::from_str(&format!("Bearer {t}")) {
            Ok(v) => {
                request.headers_mut().insert("Authorization", v);
            }
            Err(_) => return ended(false, "the token is not a valid header value".to_owned()),
        }
    }
    let socket = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(request)).await {
        Err(_) => return ended(false, format!("no answer within {CONNECT_TIMEOUT:?}")),
        Ok(Err(ConnectError::Handshake(e))) => return ended(false, describe(&e)),
        Ok(Err(e)) => return ended(false, e.to_string()),
        Ok(Ok((socket, _))) => socket,
    };
    if events.send(ConnEvent::Connected).await.is_err() {
        return Session::Closed;
    }
    let (_sink, mut stream) = socket.split();
    let mut got_data = false;
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                return ended(got_data, "the agent closed the feed".to_owned());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return ended(got_data, describe(&e)),
        };
        let message = match FeedMessage::from_json(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                return ended(
                    got_data,
                    format!("the agent sent a frame this dashboard cannot read ({e})"),
                );
            }
        };
        got_data = true;
        if events.send(ConnEvent::Frame(message)).await.is_err() {
            return Session::Closed;
        }
    }
}

fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(response) => match response.status().as_u16() {
            401 => "the agent refused the token (401): pass --token / TALLY_TOKEN".to_owned(),
            s => format!("the agent answered HTTP {s}"),
        },
        E::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn agent_urls_become_the_stream_url() {
        for (given, want) in [
            ("http://127.0.0.1:9400", "ws://127.0.0.1:9400/api/v1/stream"),
            (
                "http://127.0.0.1:9400/",
                "ws://127.0.0.1:9400/api/v1/stream",
            ),
            ("ws://h:1/api/v1/stream", "ws://h:1/api/v1/stream"),
            ("http://h:1/prefix", "ws://h:1/prefix/api/v1/stream"),
            ("https://h:1", "wss://h:1/api/v1/stream"),
            ("wss://h:1/api/v1/stream", "wss://h:1/api/v1/stream"),
        ] {
            assert_eq!(stream_url(given).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn a_bad_agent_url_is_named_in_the_error() {
        for bad in ["127.0.0.1:9400", "ftp://h:1", "http://", "not a url"] {
            let e = stream_url(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{bad}\"")), "{e}");
            assert!(e.contains("http://"), "says what is accepted: {e}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 250);
    }
}
