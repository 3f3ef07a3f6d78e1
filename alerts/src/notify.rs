//! Notifiers: a generic JSON webhook and Prometheus Alertmanager (v2 API).
//!
//! Each notifier URL has a task of its own; the evaluation hands it work
//! without waiting (a bounded queue for webhooks, the latest alert set for
//! Alertmanager), so a notifier that is slow or down never holds up the
//! evaluation. Failed requests are retried with exponential backoff, each
//! under a timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::state::{Alert, AlertState, Transition};
use crate::{Error, Result};

/// Where and how to notify.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyConfig {
    /// Alertmanager base URLs (`http://host:9093`); alerts go to `/api/v2/alerts` under each.
    pub alertmanagers: Vec<String>,
    /// Webhook URLs that get a JSON POST on every firing and resolution.
    pub webhooks: Vec<String>,
    /// The agent's URL as people reach it, for `generatorURL`.
    pub external_url: String,
    /// How often Alertmanager is sent the firing (and recently resolved) alerts again.
    pub resend_interval: Duration,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            alertmanagers: Vec::new(),
            webhooks: Vec::new(),
            external_url: "http://127.0.0.1:9400".into(),
            resend_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Checks a notifier URL: `http://` or `https://`, with a host.
pub fn check_url(url: &str) -> Result<()> {
    let bad = |reason: &str| Error::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else {
        return Err(bad(
            "expected an http:// or https:// URL such as http://127.0.0.1:9093",
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad(
            "expected a host after the scheme, such as http://127.0.0.1:9093",
        ));
    }
    Ok(())
}

impl NotifyConfig {
    /// Checks every URL and duration.
    pub fn check(&self) -> Result<()> {
        for url in self.alertmanagers.iter().chain(&self.webhooks) {
            check_url(url)?;
        }
        check_url(&self.external_url)?;
        if self.resend_interval < Duration::from_millis(100) {
            return Err(Error::Url {
                url: self.external_url.clone(),
                reason: format!(
                    "the resend interval \"{}\" is too short: expected 100ms or more",
                    humantime::format_duration(self.resend_interval)
                ),
            });
        }
        Ok(())
    }
}

/// The notifiers that `tally_notifications_total` counts, its `notifier` label.
pub const NOTIFIERS: [&str; 2] = ["alertmanager", "webhook"];
/// What became of a notification, the `result` label.
pub const RESULTS: [&str; 4] = ["sent", "retried", "failed", "dropped"];

/// Counts of notification attempts, per notifier kind and result.
#[derive(Debug, Default)]
pub struct NotifyStats {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl NotifyStats {
    fn add(&self, notifier: &'static str, result: &'static str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((notifier, result)).or_default() += 1;
    }

    /// How many times `notifier` ended with `result` (`sent`, `failed`, `retried`, `dropped`).
    pub fn get(&self, notifier: &str, result: &str) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.iter()
            .filter(|((n, r), _)| *n == notifier && *r == result)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// RFC 3339 time of an epoch-ms instant.
fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn generator_url(external: &str) -> String {
    format!("{}/api/v1/alerts", external.trim_end_matches('/'))
}

/// One alert in a webhook payload.
pub fn webhook_alert(a: &Alert, external_url: &str) -> Value {
    json!({
        "fingerprint": a.fingerprint,
        "alertname": a.alertname,
        "severity": a.severity,
        "state": a.state.as_str(),
        "labels": a.all_labels(),
        "annotations": a.annotations,
        "value": a.value,
        "starts_at": a.fired_at_ms.map(rfc3339),
        "ends_at": a.resolved_at_ms.map(rfc3339),
        "generator_url": generator_url(external_url),
    })
}

/// The webhook payload for one evaluation's transitions.
pub fn webhook_payload(transitions: &[Transition], external_url: &str) -> Value {
    let mut firing = Vec::new();
    let mut resolved = Vec::new();
    for t in transitions {
        match t {
            Transition::Fired(a) => firing.push(webhook_alert(a, external_url)),
            Transition::Resolved(a) => resolved.push(webhook_alert(a, external_url)),
        }
    }
    json!({
        "version": "1",
        "receiver": "tally",
        "status": if firing.is_empty() { "resolved" } else { "firing" },
        "external_url": external_url,
        "firing": firing,
        "resolved": resolved,
    })
}

/// The Alertmanager v2 body for the firing and resolved alerts of a book.
/// A firing alert's `endsAt` lies a few resend intervals ahead, so that
/// Alertmanager resolves it by itself if the agent goes away.
pub fn alertmanager_body<'a>(
    alerts: impl IntoIterator<Item = &'a Alert>,
    external_url: &str,
    resend: Duration,
    now_ms: i64,
) -> Value {
    let ahead = i64::try_from(resend.as_millis().saturating_mul(4)).unwrap_or(i64::MAX);
    let list: Vec<Value> = alerts
        .into_iter()
        .filter_map(|a| {
            let ends = match a.state {
                AlertState::Firing => now_ms.saturating_add(ahead),
                AlertState::Resolved => a.resolved_at_ms?,
                AlertState::Pending => return None,
            };
            Some(json!({
                "labels": a.all_labels(),
                "annotations": a.annotations,
                "startsAt": rfc3339(a.fired_at_ms.unwrap_or(a.active_since_ms)),
                "endsAt": rfc3339(ends),
                "generatorURL": generator_url(external_url),
            }))
        })
        .collect();
    Value::Array(list)
}

/// The running notifiers.
#[derive(Debug)]
pub struct Notifiers {
    cfg: NotifyConfig,
    webhooks: Vec<mpsc::Sender<Arc<Value>>>,
    alertmanager: Option<watch::Sender<Arc<Vec<Alert>>>>,
    stats: Arc<NotifyStats>,
}

const WEBHOOK_QUEUE: usize = 256;
const WEBHOOK_ATTEMPTS: u32 = 5;

impl Notifiers {
    /// Starts one task per URL (call inside a tokio runtime); `initial` is
    /// the alert set Alertmanager gets first (the restored book).
    pub fn start(cfg: NotifyConfig, stats: Arc<NotifyStats>, initial: Vec<Alert>) -> Notifiers {
        // https trusts the system's root certificates, through rustls with ring.
        let (tls, no_roots) = tally_audit::tls::system_client_config();
        if let Some(e) = no_roots {
            warn!("https notifier URLs will fail: {e}");
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap_or_else(|e| {
                warn!("cannot configure the notifier HTTP client ({e}); using defaults");
                reqwest::Client::new()
            });
        let mut webhooks = Vec::new();
        for url in &cfg.webhooks {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            tokio::spawn(webhook_task(client.clone(), url.clone(), rx, stats.clone()));
            webhooks.push(tx);
        }
        let alertmanager = (!cfg.alertmanagers.is_empty()).then(|| {
            let (tx, rx) = watch::channel(Arc::new(initial));
            for url in &cfg.alertmanagers {
                tokio::spawn(alertmanager_task(
                    client.clone(),
                    url.clone(),
                    rx.clone(),
                    cfg.clone(),
                    stats.clone(),
                ));
            }
            tx
        });
        Notifiers {
            cfg,
            webhooks,
            alertmanager,
            stats,
        }
    }

    /// Hands one evaluation's outcome to every notifier, without waiting:
    /// webhooks get the transitions, Alertmanager the current alert set (sent
    /// at once when something changed, else at the next resend).
    pub fn notify<'a>(&self, transitions: &[Transition], alerts: impl Iterator<Item = &'a Alert>) {
        if let Some(am) = &self.alertmanager {
            let set: Vec<Alert> = alerts
                .filter(|a| a.state != AlertState::Pending)
                .cloned()
                .collect();
            let urgent = !transitions.is_empty();
            am.send_if_modified(|current| {
                *current = Arc::new(set);
                urgent
            });
        }
        if transitions.is_empty() || self.webhooks.is_empty() {
            return;
        }
        let payload = Arc::new(webhook_payload(transitions, &self.cfg.external_url));
        for tx in &self.webhooks {
            if tx.try_send(payload.clone()).is_err() {
                self.stats.add("webhook", "dropped");
                warn!("a webhook queue is full: dropped a notification");
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> std::result::Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = response.text().await.unwrap_or_default();
        Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ))
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)))
}

async fn webhook_task(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Arc<Value>>,
    stats: Arc<NotifyStats>,
) {
    while let Some(payload) = rx.recv().await {
        let mut attempt = 0;
        loop {
            match post(&client, &url, &payload).await {
                Ok(()) => {
                    stats.add("webhook", "sent");
                    debug!(%url, "webhook notified");
                    break;
                }
                Err(e) if attempt + 1 < WEBHOOK_ATTEMPTS => {
                    stats.add("webhook", "retried");
                    debug!(%url, attempt, "webhook failed, retrying: {e}");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    stats.add("webhook", "failed");
                    warn!(%url, "webhook notification failed after {WEBHOOK_ATTEMPTS} attempts: {e}");
                    break;
                }
            }
        }
    }
}

async fn alertmanager_task(
    client: reqwest::Client,
    base: String,
    mut rx: watch::Receiver<Arc<Vec<Alert>>>,
    cfg: NotifyConfig,
    stats: Arc<NotifyStats>,
) {
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    let mut resend = tokio::time::interval(cfg.resend_interval);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = resend.tick() => {}
            _ = retry => {}
        }
        let alerts = rx.borrow_and_update().clone();
        if alerts.is_empty() {
            retry_at = None;
            continue;
        }
        let body = alertmanager_body(
            alerts.iter(),
            &cfg.external_url,
            cfg.resend_interval,
            now_ms(),
        );
        match post(&client, &url, &body).await {
            Ok(()) => {
                stats.add("alertmanager", "sent");
                if failures > 0 {
                    info!(%url, "Alertmanager reachable again");
                }
                failures = 0;
                retry_at = None;
            }
            Err(e) => {
                if failures == 0 {
                    warn!(%url, "cannot send alerts to Alertmanager (retrying with backoff): {e}");
                }
                stats.add("alertmanager", "failed");
                let wait = backoff(failures).min(cfg.resend_interval);
                failures = failures.saturating_add(1);
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(state: AlertState) -> Alert {
        Alert {
            fingerprint: "Lag{}".into(),
            alertname: "Lag".into(),
            severity: "critical".into(),
            labels: [("group".to_owned(), "billing".to_owned())].into(),
            annotations: [("summary".to_owned(), "billing lags".to_owned())].into(),
            state,
            active_since_ms: 1_000,
            state_since_ms: 2_000,
            fired_at_ms: Some(2_000),
            resolved_at_ms: (state == AlertState::Resolved).then_some(9_000),
            value: 5.0,
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9093").is_ok());
        assert!(check_url("http://am.example/base/").is_ok());
        let e = check_url("127.0.0.1:9093").unwrap_err().to_string();
        assert!(
            e.contains("\"127.0.0.1:9093\"") && e.contains("http://"),
            "{e}"
        );
        assert!(check_url("http://").is_err());
    }

    #[test]
    fn alertmanager_body_has_starts_ends_and_generator_url() {
        let alerts = [
            alert(AlertState::Firing),
            alert(AlertState::Resolved),
            alert(AlertState::Pending),
        ];
        let body = alertmanager_body(
            alerts.iter(),
            "http://tally:9400/",
            Duration::from_secs(60),
            10_000,
        );
        let list = body.as_array().unwrap();
        assert_eq!(list.len(), 2, "pending alerts are not sent");
        assert_eq!(list[0]["labels"]["alertname"], "Lag");
        assert_eq!(list[0]["labels"]["severity"], "critical");
        assert_eq!(list[0]["labels"]["group"], "billing");
        assert_eq!(list[0]["startsAt"], "1970-01-01T00:00:02.000Z");
        assert_eq!(list[0]["endsAt"], "1970-01-01T00:04:10.000Z");
        assert_eq!(list[1]["endsAt"], "1970-01-01T00:00:09.000Z");
        assert_eq!(list[0]["generatorURL"], "http://tally:9400/api/v1/alerts");
    }

    #[test]
    fn webhook_payload_splits_firing_and_resolved() {
        let t = [
            Transition::Fired(alert(AlertState::Firing)),
            Transition::Resolved(alert(AlertState::Resolved)),
        ];
        let p = webhook_payload(&t, "http://tally:9400");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["firing"][0]["state"], "firing");
        assert_eq!(p["firing"][0]["ends_at"], Value::Null);
        assert_eq!(p["resolved"][0]["ends_at"], "1970-01-01T00:00:09.000Z");
        let p = webhook_payload(&t[1..], "http://tally:9400");
        assert_eq!(p["status"], "resolved");
    }

    #[test]
    fn stats_count_per_notifier_and_result() {
        let s = NotifyStats::default();
        s.add("webhook", "sent");
        s.add("webhook", "sent");
        s.add("alertmanager", "failed");
        assert_eq!(s.get("webhook", "sent"), 2);
        assert_eq!(s.get("alertmanager", "failed"), 1);
        assert_eq!(s.get("alertmanager", "sent"), 0);
        assert!(NOTIFIERS.contains(&"webhook") && RESULTS.contains(&"dropped"));
    }
}
