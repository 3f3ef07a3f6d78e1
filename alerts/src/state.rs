//! The alerts' state machine: inactive → pending → firing → resolved.
//!
//! Pure: every step takes the time from its caller, so tests drive it with a
//! fake clock, and the whole book serialises to JSON so that the agent can
//! store it and a restarted agent goes on where it stopped — an alert that
//! was firing stays firing and is not announced again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tally_audit::Snapshot;
use tally_audit::snapshot::AlertInfo;

use crate::eval::{self, Active};
use crate::rules::{Rule, RuleSet};
use crate::{Error, Result, template};

/// Where an alert stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds, for less than the rule's `for`.
    Pending,
    /// The condition has held for the rule's `for`; notifiers were told.
    Firing,
    /// Was firing, and the condition no longer holds.
    Resolved,
}

impl AlertState {
    /// The state's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert: a rule and one set of labels it found active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `alertname` and every label, as one stable key.
    pub fingerprint: String,
    /// The rule's name.
    pub alertname: String,
    /// The rule's severity.
    pub severity: String,
    /// The kind's labels and the rule's labels (not `alertname` or `severity`).
    pub labels: BTreeMap<String, String>,
    /// The rule's annotations with the labels and value substituted.
    pub annotations: BTreeMap<String, String>,
    /// The state.
    pub state: AlertState,
    /// When the condition started to hold, epoch ms.
    pub active_since_ms: i64,
    /// When the alert entered its state, epoch ms.
    pub state_since_ms: i64,
    /// When it started firing, epoch ms.
    pub fired_at_ms: Option<i64>,
    /// When it resolved, epoch ms.
    pub resolved_at_ms: Option<i64>,
    /// The latest value that crossed the threshold.
    pub value: f64,
}

impl Alert {
    /// The labels with `alertname` and `severity`, as Alertmanager takes them.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.insert("alertname".into(), self.alertname.clone());
        l.insert("severity".into(), self.severity.clone());
        l
    }

    /// The alert as the agent's API shows it.
    pub fn info(&self) -> AlertInfo {
        AlertInfo {
            alertname: self.alertname.clone(),
            state: self.state.as_str().to_owned(),
            severity: self.severity.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            since_ms: self.state_since_ms,
            value: self.value,
        }
    }
}

/// What a step changed that notifiers must hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// The alert started firing.
    Fired(Alert),
    /// The alert was firing and is resolved.
    Resolved(Alert),
}

/// Every alert the rules have raised, by fingerprint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertBook {
    alerts: BTreeMap<String, Alert>,
    keep_resolved_ms: i64,
    changed: bool,
}

/// How long a resolved alert stays in the book by default (shown, and re-sent
/// to Alertmanager).
pub const KEEP_RESOLVED_MS: i64 = 15 * 60 * 1000;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    alerts: Vec<Alert>,
}

fn fingerprint(alertname: &str, severity: &str, labels: &BTreeMap<String, String>) -> String {
    let mut s = format!("{alertname}{{severity={severity:?}");
    for (k, v) in labels {
        s.push_str(&format!(",{k}={v:?}"));
    }
    s.push('}');
    s
}

impl AlertBook {
    /// An empty book that keeps resolved alerts for `keep_resolved_ms`.
    pub fn new(keep_resolved_ms: i64) -> AlertBook {
        AlertBook {
            alerts: BTreeMap::new(),
            keep_resolved_ms,
            changed: false,
        }
    }

    /// A book from what [`AlertBook::to_json`] wrote.
    pub fn restore(json: &str, keep_resolved_ms: i64) -> Result<AlertBook> {
        let stored: Stored = serde_json::from_str(json).map_err(|e| Error::State(e.to_string()))?;
        if stored.version != 1 {
            return Err(Error::State(format!(
                "version \"{}\" is not one this agent reads: expected 1",
                stored.version
            )));
        }
        Ok(AlertBook {
            alerts: stored
                .alerts
                .into_iter()
                .map(|a| (a.fingerprint.clone(), a))
                .collect(),
            keep_resolved_ms,
            changed: false,
        })
    }

    /// The book as JSON, to store.
    pub fn to_json(&self) -> String {
        let stored = Stored {
            version: 1,
            alerts: self.alerts.values().cloned().collect(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Whether a state changed since the last call (values alone do not count).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every alert: pending, firing and recently resolved.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// The alerts as the agent's API shows them.
    pub fn infos(&self) -> Vec<AlertInfo> {
        self.alerts.values().map(Alert::info).collect()
    }

    /// Evaluates every rule over `snapshot` and steps the machine.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        rules: &RuleSet,
        snapshot: &Snapshot,
    ) -> Vec<Transition> {
        let found: Vec<(&Rule, Active)> = rules
            .rules
            .iter()
            .flat_map(|r| eval::active(r, snapshot).into_iter().map(move |a| (r, a)))
            .collect();
        self.step(now_ms, &found)
    }

    /// Steps the machine at `now_ms` with what the rules found active.
    pub fn step(&mut self, now_ms: i64, found: &[(&Rule, Active)]) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (rule, active) in found {
            let mut labels = active.labels.clone();
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), v.clone());
            }
            let key = fingerprint(&rule.name, &rule.severity, &labels);
            let mut for_template = labels.clone();
            for_template.insert("alertname".into(), rule.name.clone());
            for_template.insert("severity".into(), rule.severity.clone());
            let annotations = rule
                .annotations
                .iter()
                .map(|(k, t)| (k.clone(), template::render(t, &for_template, active.value)))
                .collect();
            seen.insert(key.clone());
            let alert = self.alerts.entry(key.clone()).or_insert_with(|| Alert {
                fingerprint: key,
                alertname: rule.name.clone(),
                severity: rule.severity.clone(),
                labels,
                annotations: BTreeMap::new(),
                state: AlertState::Resolved,
                active_since_ms: now_ms,
                state_since_ms: now_ms,
                fired_at_ms: None,
                resolved_at_ms: None,
                value: active.value,
            });
            alert.value = active.value;
            alert.annotations = annotations;
            if alert.state == AlertState::Resolved {
                // New, or back after resolving: it starts over.
                alert.state = AlertState::Pending;
                alert.active_since_ms = now_ms;
                alert.state_since_ms = now_ms;
                alert.fired_at_ms = None;
                alert.resolved_at_ms = None;
                self.changed = true;
            }
            let held = now_ms.saturating_sub(alert.active_since_ms);
            if alert.state == AlertState::Pending
                && held >= i64::try_from(rule.for_ms).unwrap_or(i64::MAX)
            {
                alert.state = AlertState::Firing;
                alert.state_since_ms = now_ms;
                alert.fired_at_ms = Some(now_ms);
                self.changed = true;
                transitions.push(Transition::Fired(alert.clone()));
            }
        }
        let keep = self.keep_resolved_ms;
        let mut changed = false;
        self.alerts.retain(|key, alert| {
            if seen.contains(key) {
                return true;
            }
            match alert.state {
                // Pending that stops holding goes back to inactive, unannounced.
                AlertState::Pending => {
                    changed = true;
                    false
                }
                AlertState::Firing => {
                    alert.state = AlertState::Resolved;
                    alert.state_since_ms = now_ms;
                    alert.resolved_at_ms = Some(now_ms);
                    changed = true;
                    transitions.push(Transition::Resolved(alert.clone()));
                    true
                }
                AlertState::Resolved => {
                    let gone = now_ms.saturating_sub(alert.state_since_ms) > keep;
                    changed |= gone;
                    !gone
                }
            }
        });
        self.changed |= changed;
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(for_: &str) -> RuleSet {
        RuleSet::parse(
            &format!(
                "rules:\n  - name: Lag\n    kind: consumer_lag\n    records: 10\n    for: {for_}\n    labels: {{team: pay}}\n    annotations: {{summary: \"{{{{ $labels.group }}}} lags {{{{ $value }}}}\"}}\n"
            ),
            "t",
        )
        .unwrap()
    }

    fn lag(group: &str, value: f64) -> Active {
        Active {
            labels: [
                ("cluster".to_owned(), "local".to_owned()),
                ("group".to_owned(), group.to_owned()),
                ("topic".to_owned(), "orders".to_owned()),
            ]
            .into(),
            value,
        }
    }

    fn states(book: &AlertBook) -> Vec<(String, &'static str)> {
        book.alerts()
            .map(|a| (a.labels["group"].clone(), a.state.as_str()))
            .collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let set = rules("30s");
        let rule = &set.rules[0];
        let mut book = AlertBook::new(60_000);
        // t=0: the condition starts to hold: pending, nothing announced.
        assert!(book.step(0, &[(rule, lag("billing", 50.0))]).is_empty());
        assert_eq!(states(&book), [("billing".to_owned(), "pending")]);
        assert!(book.take_changed());
        // t=29s: still pending.
        assert!(
            book.step(29_000, &[(rule, lag("billing", 60.0))])
                .is_empty()
        );
        assert!(
            !book.take_changed(),
            "a value change alone is not a state change"
        );
        // t=30s: held for `for`: firing, announced once, labels and annotations set.
        let t = book.step(30_000, &[(rule, lag("billing", 70.0))]);
        let [Transition::Fired(a)] = t.as_slice() else {
            panic!("{t:?}")
        };
        assert_eq!(a.labels["team"], "pay");
        assert_eq!(a.annotations["summary"], "billing lags 70");
        assert_eq!((a.active_since_ms, a.fired_at_ms), (0, Some(30_000)));
        // Still holding: no new announcement.
        assert!(
            book.step(31_000, &[(rule, lag("billing", 80.0))])
                .is_empty()
        );
        // Stops holding: resolved, announced.
        let t = book.step(32_000, &[]);
        let [Transition::Resolved(a)] = t.as_slice() else {
            panic!("{t:?}")
        };
        assert_eq!(a.resolved_at_ms, Some(32_000));
        assert_eq!(states(&book), [("billing".to_owned(), "resolved")]);
        // Kept for a while, then forgotten.
        assert!(book.step(32_000 + 60_000, &[]).is_empty());
        assert_eq!(book.alerts().count(), 1);
        book.step(32_000 + 60_001, &[]);
        assert_eq!(book.alerts().count(), 0);
    }

    #[test]
    fn pending_that_stops_holding_is_never_announced() {
        let set = rules("1m");
        let rule = &set.rules[0];
        let mut book = AlertBook::new(60_000);
        assert!(book.step(0, &[(rule, lag("billing", 50.0))]).is_empty());
        assert!(book.step(10_000, &[]).is_empty());
        assert_eq!(book.alerts().count(), 0);
        // Comes back: the `for` starts over.
        book.step(20_000, &[(rule, lag("billing", 50.0))]);
        assert!(
            book.step(79_999, &[(rule, lag("billing", 50.0))])
                .is_empty()
        );
        assert_eq!(book.step(80_000, &[(rule, lag("billing", 50.0))]).len(), 1);
    }

    #[test]
    fn for_zero_fires_at_once_and_each_label_set_is_its_own_alert() {
        let set = rules("0s");
        let rule = &set.rules[0];
        let mut book = AlertBook::new(60_000);
        let t = book.step(
            0,
            &[(rule, lag("billing", 50.0)), (rule, lag("analytics", 20.0))],
        );
        assert_eq!(t.len(), 2);
        let t = book.step(1_000, &[(rule, lag("analytics", 20.0))]);
        let [Transition::Resolved(a)] = t.as_slice() else {
            panic!("{t:?}")
        };
        assert_eq!(a.labels["group"], "billing");
        // A resolved alert that holds again fires again.
        let t = book.step(
            2_000,
            &[(rule, lag("billing", 50.0)), (rule, lag("analytics", 20.0))],
        );
        assert!(matches!(t.as_slice(), [Transition::Fired(a)] if a.labels["group"] == "billing"));
    }

    #[test]
    fn a_restored_book_does_not_announce_firing_again() {
        let set = rules("0s");
        let rule = &set.rules[0];
        let mut book = AlertBook::new(60_000);
        assert_eq!(book.step(0, &[(rule, lag("billing", 50.0))]).len(), 1);
        let json = book.to_json();
        let mut again = AlertBook::restore(&json, 60_000).unwrap();
        assert_eq!(again.infos(), book.infos());
        assert!(
            again
                .step(5_000, &[(rule, lag("billing", 55.0))])
                .is_empty()
        );
        assert_eq!(again.step(6_000, &[]).len(), 1);
        assert!(AlertBook::restore("{\"version\": 9, \"alerts\": []}", 1).is_err());
        assert!(AlertBook::restore("nonsense", 1).is_err());
    }
}
