//! The seam between routing and the wire: a [`Transport`] sends one request to one
//! broker and returns the body of its answer. The real one is [`Connections`]
//! (super::conn); tests put canned clusters behind the same trait, so that routing and
//! retries are tested without a socket.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Error, Result};

/// A boxed future that can cross threads (the trait must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerAddr {
    /// Host name or address, as the metadata or the bootstrap list gives it.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddr {
    /// A broker at `host` and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerAddr {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port` (an IPv6 host in brackets: `[::1]:9092`).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::InvalidSetting {
            setting: "bootstrap server",
            value: text.to_owned(),
            accepted: "host:port, e.g. 'kafka-1.example.com:9092' or '[::1]:9092'",
        };
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(BrokerAddr::new(host, port))
    }

    /// From the host and port of a Metadata or FindCoordinator answer; `None` when the
    /// port cannot be a TCP port.
    pub fn from_wire(host: &str, port: i32) -> Option<Self> {
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        Some(BrokerAddr::new(host, port))
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The versions of each API that a broker speaks, as its ApiVersions answer lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiVersions(Arc<HashMap<i16, (i16, i16)>>);

impl ApiVersions {
    /// From (api key, min, max) triples.
    pub fn new(apis: impl IntoIterator<Item = (i16, i16, i16)>) -> Self {
        ApiVersions(Arc::new(
            apis.into_iter()
                .map(|(key, min, max)| (key, (min, max)))
                .collect(),
        ))
    }

    /// The range of `api_key` that the broker speaks, if any.
    pub fn range(&self, api_key: i16) -> Option<(i16, i16)> {
        self.0.get(&api_key).copied()
    }
}

/// One request, encoded, with what the wire layer needs to frame it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The API key.
    pub api_key: i16,
    /// The API's name, for errors and timeouts.
    pub api: &'static str,
    /// The version the body is encoded in.
    pub version: i16,
    /// The request header version that goes with it.
    pub header_version: i16,
    /// The response header version that goes with it.
    pub response_header_version: i16,
    /// The body, without header.
    pub body: Bytes,
}

/// Sends requests to brokers. Implementations may pipeline: several calls may be in
/// flight on one broker at once.
pub trait Transport: Send + Sync + 'static {
    /// The versions `broker` speaks (connecting first if needed).
    fn api_versions<'a>(&'a self, broker: &'a BrokerAddr) -> BoxFuture<'a, Result<ApiVersions>>;

    /// Sends `request` to `broker` and returns the body of its answer (after the response
    /// header).
    fn send<'a>(
        &'a self,
        broker: &'a BrokerAddr,
        request: RawRequest,
    ) -> BoxFuture<'a, Result<Bytes>>;

    /// Drops the connection to `broker`, if any, so that the next call opens a new one.
    fn disconnect(&self, broker: &BrokerAddr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let a = BrokerAddr::parse("kafka-1:9092").unwrap();
        assert_eq!(a, BrokerAddr::new("kafka-1", 9092));
        assert_eq!(a.to_string(), "kafka-1:9092");
        let v6 = BrokerAddr::parse("[::1]:9093").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:9093");
        for bad in ["kafka", "kafka:", ":9092", "kafka:99999", "kafka:x"] {
            let err = BrokerAddr::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
        assert_eq!(BrokerAddr::from_wire("h", -1), None);
    }
}
