//! tally's alerts: rules over the agent's [`Snapshot`], their state machine,
//! and the notifiers.
//!
//! The agent owns an [`Evaluator`] on its evaluation task: each tick it
//! evaluates the rules over the fresh snapshot, steps every alert through
//! inactive → pending → firing → resolved ([`AlertBook`]), writes the alerts
//! into the snapshot, and hands transitions to the [`Notifiers`] without
//! waiting for them. [`Alerting`] is the part the HTTP handlers share: the
//! current rules (reloadable) and the notification counters.

use std::sync::{Arc, RwLock};

use tally_audit::Snapshot;
use tracing::{info, warn};

mod error;
pub mod eval;
pub mod glob;
pub mod notify;
pub mod rules;
pub mod state;
mod template;

pub use error::{Error, Result};
pub use notify::{Notifiers, NotifyConfig, NotifyStats};
pub use rules::{Rule, RuleKind, RuleSet, RulesSource};
pub use state::{Alert, AlertBook, AlertState, Transition};

/// The example rules file (`alerts/examples/tally.rules.yaml`), which the demo uses.
pub const EXAMPLE_RULES: &str = include_str!("../examples/tally.rules.yaml");

/// The key under which the agent stores the alert book.
pub const STATE_KEY: &str = "alerts/state";

/// The rules and counters that the agent's handlers share.
#[derive(Debug)]
pub struct Alerting {
    source: Option<RulesSource>,
    rules: RwLock<Arc<RuleSet>>,
    stats: Arc<NotifyStats>,
}

impl Alerting {
    /// Loads the rules from `source` (none: no rules); a bad file is an error.
    pub fn new(source: Option<RulesSource>) -> Result<Arc<Alerting>> {
        let rules = match &source {
            Some(s) => s.load()?,
            None => RuleSet::default(),
        };
        Ok(Arc::new(Alerting {
            source,
            rules: RwLock::new(Arc::new(rules)),
            stats: Arc::new(NotifyStats::default()),
        }))
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the rules come from, if anywhere.
    pub fn source(&self) -> Option<&RulesSource> {
        self.source.as_ref()
    }

    /// Reads the rules again. On an error the rules in force stay.
    pub fn reload(&self) -> Result<Arc<RuleSet>> {
        let Some(source) = &self.source else {
            return Err(Error::NoRulesFile);
        };
        match source.load() {
            Ok(set) => {
                let set = Arc::new(set);
                *self.rules.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
                info!(rules = set.rules.len(), origin = %set.origin, "alert rules reloaded");
                Ok(set)
            }
            Err(e) => {
                warn!("alert rules not reloaded, the previous ones stay: {e}");
                Err(e)
            }
        }
    }

    /// The notification counters.
    pub fn stats(&self) -> &Arc<NotifyStats> {
        &self.stats
    }
}

/// The evaluation side: the alert book and the notifiers.
#[derive(Debug)]
pub struct Evaluator {
    alerting: Arc<Alerting>,
    book: AlertBook,
    notifiers: Notifiers,
    /// What the rules found per group and topic at the last evaluation.
    cache: eval::ActiveCache,
}

impl Evaluator {
    /// Starts the notifiers (inside a tokio runtime) and restores the book
    /// from `stored` (what [`Evaluator::take_state`] gave before a restart).
    pub fn new(alerting: Arc<Alerting>, cfg: NotifyConfig, stored: Option<&str>) -> Evaluator {
        let book = match stored.map(|s| AlertBook::restore(s, state::KEEP_RESOLVED_MS)) {
            Some(Ok(book)) => {
                info!(alerts = book.alerts().count(), "alert states restored");
                book
            }
            Some(Err(e)) => {
                warn!("starting with no alerts: {e}");
                AlertBook::new(state::KEEP_RESOLVED_MS)
            }
            None => AlertBook::new(state::KEEP_RESOLVED_MS),
        };
        let initial = book.alerts().cloned().collect();
        let notifiers = Notifiers::start(cfg, alerting.stats.clone(), initial);
        Evaluator {
            alerting,
            book,
            notifiers,
            cache: eval::ActiveCache::default(),
        }
    }

    /// Evaluates the rules over `snapshot` at its time, steps the alerts,
    /// puts them into `snapshot.alerts`, and notifies.
    pub fn evaluate(&mut self, snapshot: &mut Snapshot) {
        let rules = self.alerting.rules();
        let found = self.cache.active(&rules, snapshot);
        let transitions = self.book.step(snapshot.at_ms, &found);
        for t in &transitions {
            match t {
                Transition::Fired(a) => info!(alert = %a.fingerprint, "alert firing"),
                Transition::Resolved(a) => info!(alert = %a.fingerprint, "alert resolved"),
            }
        }
        self.notifiers.notify(&transitions, self.book.alerts());
        snapshot.alerts = self.book.infos();
    }

    /// The book as JSON when a state changed since the last call, to store.
    pub fn take_state(&mut self) -> Option<String> {
        self.book.take_changed().then(|| self.book.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_rules_parse() {
        let set = RuleSet::parse(EXAMPLE_RULES, "example").unwrap();
        let kinds: std::collections::BTreeSet<&str> =
            set.rules.iter().map(|r| r.kind.name()).collect();
        assert_eq!(kinds.len(), 6, "the example shows every kind: {kinds:?}");
    }

    #[test]
    fn a_failed_reload_keeps_the_rules_in_force() {
        let dir = std::env::temp_dir().join(format!("tally-alerts-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.yaml");
        std::fs::write(&path, "rules:\n  - {name: A, kind: expired}\n").unwrap();
        let alerting = Alerting::new(Some(RulesSource::File(path.clone()))).unwrap();
        assert_eq!(alerting.rules().rules.len(), 1);
        std::fs::write(
            &path,
            "rules:\n  - {name: A, kind: expired}\n  - {name: B, kind: nope}\n",
        )
        .unwrap();
        let e = alerting.reload().unwrap_err().to_string();
        assert!(e.contains("rule \"B\"") && e.contains("\"kind\""), "{e}");
        assert_eq!(alerting.rules().rules.len(), 1);
        std::fs::write(
            &path,
            "rules:\n  - {name: A, kind: expired}\n  - {name: B, kind: expired}\n",
        )
        .unwrap();
        assert_eq!(alerting.reload().unwrap().rules.len(), 2);
        assert_eq!(alerting.rules().rules.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
