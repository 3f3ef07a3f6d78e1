//! The rules file: parsing and checking.
//!
//! ```yaml
//! rules:
//!   - name: ConsumerLagHigh
//!     kind: consumer_lag
//!     group: "billing*"
//!     records: 10000
//!     seconds: 300
//!     for: 2m
//!     severity: critical
//!     labels: {team: payments}
//!     annotations:
//!       summary: "{{ $labels.group }} is {{ $value }} behind on {{ $labels.topic }}"
//! ```
//!
//! Every field is read on its own, so that an error names the rule, the field
//! and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tally_audit::GroupStatus;
use yaml_serde::Value;

use crate::glob::Glob;
use crate::{Error, Result};

/// What a rule watches, with the threshold that fits it.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleKind {
    /// A group's lag on a topic (summed over partitions in records, the
    /// largest in seconds) above `records` or above `seconds`.
    ConsumerLag {
        /// Lag in records above which the rule is active.
        records: Option<u64>,
        /// Lag in seconds above which the rule is active.
        seconds: Option<f64>,
    },
    /// A group whose status is one of `statuses`.
    GroupStatus {
        /// The statuses that make the rule active.
        statuses: Vec<GroupStatus>,
    },
    /// A tier whose completeness over the closed buckets of the window is
    /// below `min_ratio`.
    Completeness {
        /// The lowest acceptable ratio, in (0, 1].
        min_ratio: f64,
    },
    /// At least `min_records` records of a group expired unconsumed in the window.
    Expired {
        /// Expired records that make the rule active (at least 1).
        min_records: u64,
    },
    /// A mirror tier (`mirror:<cluster>`) that lost at least `missing`
    /// records in closed buckets of the window, or whose lag is above
    /// `records` or above `seconds` (DESIGN §11).
    Mirror {
        /// Records lost in the copy that make the rule active (1 or more).
        missing: Option<u64>,
        /// Mirror lag in records above which the rule is active.
        records: Option<u64>,
        /// Mirror lag in seconds above which the rule is active.
        seconds: Option<f64>,
    },
    /// A source from which no message came for longer than `after_ms`.
    SourceSilent {
        /// Silence, in milliseconds, after which the rule is active.
        after_ms: u64,
    },
}

impl RuleKind {
    /// The kind's name in the rules file.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::ConsumerLag { .. } => "consumer_lag",
            RuleKind::GroupStatus { .. } => "group_status",
            RuleKind::Completeness { .. } => "completeness",
            RuleKind::Expired { .. } => "expired",
            RuleKind::Mirror { .. } => "mirror",
            RuleKind::SourceSilent { .. } => "source_silent",
        }
    }

    /// The labels an alert of this kind carries (besides the rule's own).
    pub fn alert_labels(&self) -> &'static [&'static str] {
        match self {
            RuleKind::ConsumerLag { .. } => &["cluster", "group", "topic"],
            RuleKind::GroupStatus { .. } => &["cluster", "group", "status"],
            RuleKind::Completeness { .. } => &["cluster", "topic", "tier"],
            RuleKind::Expired { .. } => &["cluster", "topic", "group"],
            RuleKind::Mirror { .. } => &["cluster", "topic", "tier"],
            RuleKind::SourceSilent { .. } => &["cluster", "source"],
        }
    }

    /// The selectors a kind takes. `group` and `tier` select the same thing
    /// where a group is involved: group `billing` is tier `group:billing`.
    fn matchers(kind: &str) -> &'static [&'static str] {
        match kind {
            "source_silent" => &["cluster", "tier", "source"],
            "mirror" => &["cluster", "topic", "tier"],
            _ => &["cluster", "topic", "group", "tier"],
        }
    }

    fn thresholds(kind: &str) -> &'static [&'static str] {
        match kind {
            "consumer_lag" => &["records", "seconds"],
            "group_status" => &["statuses"],
            "completeness" => &["min_ratio"],
            "expired" => &["min_records"],
            "mirror" => &["missing", "records", "seconds"],
            _ => &["after"],
        }
    }
}

const KINDS: [&str; 6] = [
    "consumer_lag",
    "group_status",
    "completeness",
    "expired",
    "mirror",
    "source_silent",
];

const MATCHERS: [&str; 5] = ["cluster", "topic", "group", "tier", "source"];
const THRESHOLDS: [&str; 7] = [
    "records",
    "seconds",
    "statuses",
    "min_ratio",
    "min_records",
    "missing",
    "after",
];
const COMMON: [&str; 6] = ["name", "kind", "for", "severity", "labels", "annotations"];

/// Glob selectors of a rule; an absent one selects everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matchers {
    /// Selects clusters.
    pub cluster: Glob,
    /// Selects topics.
    pub topic: Glob,
    /// Selects consumer groups.
    pub group: Glob,
    /// Selects tiers (`broker`, `group:billing`, …).
    pub tier: Glob,
    /// Selects sources (emitters).
    pub source: Glob,
}

/// One alert rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule's name, the alerts' `alertname`.
    pub name: String,
    /// What it watches and its threshold.
    pub kind: RuleKind,
    /// Which clusters, topics, groups, tiers or sources it watches.
    pub matchers: Matchers,
    /// How long the condition must hold before the alert fires, in milliseconds.
    pub for_ms: u64,
    /// The alerts' `severity`.
    pub severity: String,
    /// Labels added to every alert of the rule.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates: `{{ $labels.NAME }}` and `{{ $value }}` are substituted.
    pub annotations: BTreeMap<String, String>,
}

/// A checked rules file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    /// Where the rules came from.
    pub origin: String,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Reads and checks a rules file.
    pub fn load(path: &Path) -> Result<RuleSet> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RuleSet::parse(&text, &path.display().to_string())
    }

    /// Parses and checks the YAML `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RuleSet> {
        let syntax = |detail: String| Error::Syntax {
            origin: origin.to_owned(),
            detail,
        };
        let doc: Value = yaml_serde::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let top = match doc {
            Value::Mapping(m) => m,
            Value::Null => {
                return Err(syntax(
                    "the file is empty: expected a mapping with a \"rules\" list".into(),
                ));
            }
            _ => {
                return Err(syntax(
                    "expected a mapping with a \"rules\" list at the top".into(),
                ));
            }
        };
        let mut list = None;
        for (k, v) in top {
            match k.as_str() {
                Some("rules") => list = Some(v),
                other => {
                    return Err(syntax(format!(
                        "unknown top-level key \"{}\": expected \"rules\"",
                        other.map_or_else(|| format!("{k:?}"), str::to_owned)
                    )));
                }
            }
        }
        let items = match list {
            Some(Value::Sequence(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(syntax("\"rules\" must be a list of rules".into())),
        };
        let mut rules = Vec::with_capacity(items.len());
        let mut names = BTreeSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let rule = parse_rule(item, i, origin)?;
            if !names.insert(rule.name.clone()) {
                return Err(Error::Rule {
                    origin: origin.to_owned(),
                    rule: rule.name,
                    field: "name".into(),
                    reason: "another rule has this name: names must be unique".into(),
                });
            }
            rules.push(rule);
        }
        Ok(RuleSet {
            origin: origin.to_owned(),
            rules,
        })
    }
}

/// Where the rules come from, so that they can be read again on a reload.
#[derive(Clone, Debug, PartialEq)]
pub enum RulesSource {
    /// A file, read at start-up and on every reload.
    File(PathBuf),
    /// Rules built in (the demo's), named `origin` in errors.
    Text {
        /// A name for errors.
        origin: String,
        /// The YAML.
        text: String,
    },
}

impl RulesSource {
    /// Reads and checks the rules.
    pub fn load(&self) -> Result<RuleSet> {
        match self {
            RulesSource::File(path) => RuleSet::load(path),
            RulesSource::Text { origin, text } => RuleSet::parse(text, origin),
        }
    }
}

struct Fields<'a> {
    origin: &'a str,
    rule: String,
    map: BTreeMap<String, Value>,
}

impl Fields<'_> {
    fn error(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Rule {
            origin: self.origin.to_owned(),
            rule: self.rule.clone(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    fn take<T: serde::de::DeserializeOwned>(
        &mut self,
        field: &str,
        expected: &str,
    ) -> Result<Option<T>> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let shown = show(&v);
                yaml_serde::from_value(v)
                    .map(Some)
                    .map_err(|_| self.error(field, format!("\"{shown}\" is not {expected}")))
            }
        }
    }

    fn duration(&mut self, field: &str) -> Result<Option<u64>> {
        let Some(v) = self.map.remove(field) else {
            return Ok(None);
        };
        let text = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.as_u64() == Some(0) => "0s".into(),
            Value::Null => return Ok(None),
            other => show(other),
        };
        parse_duration(&text)
            .map(Some)
            .map_err(|reason| self.error(field, reason))
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => yaml_serde::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Parses `30s`, `5m`, `1h30m`, `0s`: a duration in milliseconds.
pub fn parse_duration(text: &str) -> std::result::Result<u64, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("\"{text}\" is not a duration ({e}): expected e.g. 0s, 30s, 5m, 1h")
    })?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `name` is a Prometheus label (or alert) name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_rule(item: Value, index: usize, origin: &str) -> Result<Rule> {
    let position = format!("#{}", index + 1);
    let Value::Mapping(mapping) = item else {
        return Err(Error::Rule {
            origin: origin.to_owned(),
            rule: position,
            field: "-".into(),
            reason: format!(
                "\"{}\" is not a rule: expected a mapping of fields",
                show(&item)
            ),
        });
    };
    let mut map = BTreeMap::new();
    for (k, v) in mapping {
        let key = k.as_str().map_or_else(|| show(&k), str::to_owned);
        map.insert(key, v);
    }
    let rule_name = map
        .get("name")
        .and_then(Value::as_str)
        .map_or(position, str::to_owned);
    let mut f = Fields {
        origin,
        rule: rule_name,
        map,
    };
    let name: String = f
        .take("name", "a string")?
        .ok_or_else(|| f.error("name", "missing: every rule needs a name"))?;
    if !is_label_name(&name) {
        return Err(f.error(
            "name",
            format!("\"{name}\" is not a valid alert name: expected letters, digits and _ (not starting with a digit)"),
        ));
    }
    let kind: String = f.take("kind", "a string")?.ok_or_else(|| {
        f.error(
            "kind",
            format!("missing: expected one of {}", KINDS.join(", ")),
        )
    })?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(f.error(
            "kind",
            format!(
                "\"{kind}\" is not a rule kind: expected one of {}",
                KINDS.join(", ")
            ),
        ));
    }
    // Fields that do not fit the kind are refused: a `records` on a
    // completeness rule is a mistake that would otherwise be silent.
    for key in f.map.keys() {
        let known = COMMON.contains(&key.as_str())
            || MATCHERS.contains(&key.as_str())
            || THRESHOLDS.contains(&key.as_str());
        if !known {
            let mut all: Vec<&str> = COMMON.to_vec();
            all.extend(RuleKind::matchers(&kind));
            all.extend(RuleKind::thresholds(&kind));
            return Err(f.error(
                key,
                format!("unknown field: a {kind} rule takes {}", all.join(", ")),
            ));
        }
        if MATCHERS.contains(&key.as_str()) && !RuleKind::matchers(&kind).contains(&key.as_str()) {
            return Err(f.error(
                key,
                format!(
                    "a {kind} rule cannot select by {key}: it selects by {}",
                    RuleKind::matchers(&kind).join(", ")
                ),
            ));
        }
        if THRESHOLDS.contains(&key.as_str())
            && !RuleKind::thresholds(&kind).contains(&key.as_str())
        {
            return Err(f.error(
                key,
                format!(
                    "not a threshold of a {kind} rule: it takes {}",
                    RuleKind::thresholds(&kind).join(", ")
                ),
            ));
        }
    }
    let mut matchers = Matchers::default();
    for (field, slot) in [
        ("cluster", &mut matchers.cluster),
        ("topic", &mut matchers.topic),
        ("group", &mut matchers.group),
        ("tier", &mut matchers.tier),
        ("source", &mut matchers.source),
    ] {
        if let Some(pattern) = f.take::<String>(field, "a glob pattern (a string)")? {
            *slot = Glob::new(&pattern);
        }
    }
    let kind = match kind.as_str() {
        "consumer_lag" => {
            let records = f.take::<u64>("records", "a number of records (0 or more)")?;
            let seconds = f.take::<f64>("seconds", "a number of seconds")?;
            if let Some(s) = seconds
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(f.error(
                    "seconds",
                    format!("\"{s}\" is not a lag: expected 0 or more seconds"),
                ));
            }
            if records.is_none() && seconds.is_none() {
                return Err(f.error(
                    "records",
                    "missing: a consumer_lag rule needs records, seconds or both",
                ));
            }
            RuleKind::ConsumerLag { records, seconds }
        }
        "group_status" => {
            let names: Vec<String> = f
                .take("statuses", "a list of statuses")?
                .ok_or_else(|| f.error("statuses", "missing: expected a list of ok, warn, err"))?;
            if names.is_empty() {
                return Err(f.error("statuses", "empty: expected one or more of ok, warn, err"));
            }
            let mut statuses = Vec::new();
            for n in names {
                let s = GroupStatus::ALL
                    .into_iter()
                    .find(|s| s.as_str() == n)
                    .ok_or_else(|| {
                        f.error(
                            "statuses",
                            format!("\"{n}\" is not a group status: expected ok, warn or err"),
                        )
                    })?;
                statuses.push(s);
            }
            RuleKind::GroupStatus { statuses }
        }
        "completeness" => {
            let min_ratio = f
                .take::<f64>("min_ratio", "a ratio")?
                .ok_or_else(|| f.error("min_ratio", "missing: expected a ratio such as 0.99"))?;
            if !(min_ratio > 0.0 && min_ratio <= 1.0) {
                return Err(f.error(
                    "min_ratio",
                    format!(
                        "\"{min_ratio}\" is out of range: expected a ratio above 0 and at most 1"
                    ),
                ));
            }
            RuleKind::Completeness { min_ratio }
        }
        "expired" => {
            let min_records = f
                .take::<u64>("min_records", "a number of records (1 or more)")?
                .unwrap_or(1);
            if min_records == 0 {
                return Err(f.error("min_records", "\"0\" would always fire: expected 1 or more"));
            }
            RuleKind::Expired { min_records }
        }
        "mirror" => {
            let missing = f.take::<u64>("missing", "a number of records (1 or more)")?;
            let records = f.take::<u64>("records", "a number of records (0 or more)")?;
            let seconds = f.take::<f64>("seconds", "a number of seconds")?;
            if missing == Some(0) {
                return Err(f.error("missing", "\"0\" would always fire: expected 1 or more"));
            }
            if let Some(s) = seconds
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(f.error(
                    "seconds",
                    format!("\"{s}\" is not a lag: expected 0 or more seconds"),
                ));
            }
            if missing.is_none() && records.is_none() && seconds.is_none() {
                return Err(f.error(
                    "missing",
                    "missing: a mirror rule needs missing, records, seconds or more than one",
                ));
            }
            RuleKind::Mirror {
                missing,
                records,
                seconds,
            }
        }
        _ => {
            let after_ms = f
                .duration("after")?
                .ok_or_else(|| f.error("after", "missing: expected a duration such as 5m"))?;
            if after_ms == 0 {
                return Err(f.error(
                    "after",
                    "\"0s\" would always fire: expected a duration above 0",
                ));
            }
            RuleKind::SourceSilent { after_ms }
        }
    };
    let for_ms = f.duration("for")?.unwrap_or(0);
    let severity = f
        .take::<String>("severity", "a string")?
        .unwrap_or_else(|| "warning".into());
    if severity.is_empty() {
        return Err(f.error("severity", "empty: expected e.g. warning or critical"));
    }
    let labels: BTreeMap<String, String> = f
        .take("labels", "a mapping of label names to strings")?
        .unwrap_or_default();
    for key in labels.keys() {
        if !is_label_name(key) || key.starts_with("__") {
            return Err(f.error(
                "labels",
                format!("\"{key}\" is not a label name: expected letters, digits and _, not starting with a digit or __"),
            ));
        }
        if key == "alertname" || key == "severity" || kind.alert_labels().contains(&key.as_str()) {
            return Err(f.error(
                "labels",
                format!("\"{key}\" is set by the alert itself: pick another label name"),
            ));
        }
    }
    let annotations: BTreeMap<String, String> = f
        .take("annotations", "a mapping of names to strings")?
        .unwrap_or_default();
    for (key, text) in &annotations {
        let known = |l: &str| {
            kind.alert_labels().contains(&l)
                || labels.contains_key(l)
                || l == "alertname"
                || l == "severity"
        };
        crate::template::check(text, known)
            .map_err(|reason| f.error(&format!("annotations.{key}"), reason))?;
    }
    Ok(Rule {
        name,
        kind,
        matchers,
        for_ms,
        severity,
        labels,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        RuleSet::parse(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn every_kind_parses() {
        let set = RuleSet::parse(
            r#"
rules:
  - name: Lag
    kind: consumer_lag
    group: "bill*"
    records: 100
    for: 30s
    severity: critical
    labels: {team: pay}
    annotations: {summary: "{{ $labels.group }} lags {{ $value }} on {{$labels.topic}} ({{ $labels.team }})"}
  - {name: Status, kind: group_status, statuses: [err, warn]}
  - {name: Complete, kind: completeness, tier: "group:*", min_ratio: 0.99}
  - {name: Expired, kind: expired}
  - {name: Silent, kind: source_silent, after: 5m}
  - {name: Mirror, kind: mirror, missing: 1, seconds: 600}
"#,
            "t.yaml",
        )
        .unwrap();
        assert_eq!(set.rules.len(), 6);
        assert_eq!(
            set.rules[5].kind,
            RuleKind::Mirror {
                missing: Some(1),
                records: None,
                seconds: Some(600.0)
            }
        );
        let lag = &set.rules[0];
        assert_eq!(
            lag.kind,
            RuleKind::ConsumerLag {
                records: Some(100),
                seconds: None
            }
        );
        assert_eq!(lag.for_ms, 30_000);
        assert!(lag.matchers.group.matches("billing"));
        assert!(!lag.matchers.group.matches("analytics"));
        assert_eq!(
            set.rules[1].kind,
            RuleKind::GroupStatus {
                statuses: vec![GroupStatus::Err, GroupStatus::Warn]
            }
        );
        assert_eq!(set.rules[1].severity, "warning");
        assert_eq!(set.rules[3].kind, RuleKind::Expired { min_records: 1 });
        assert_eq!(
            set.rules[4].kind,
            RuleKind::SourceSilent { after_ms: 300_000 }
        );
    }

    #[test]
    fn errors_name_the_rule_the_field_and_the_reason() {
        let e = err("rules:\n  - {name: Lag, kind: consumer_lag, recrods: 5}\n");
        assert!(
            e.contains("\"t.yaml\"")
                && e.contains("rule \"Lag\"")
                && e.contains("field \"recrods\"")
                && e.contains("unknown field"),
            "{e}"
        );
        let e = err("rules:\n  - {name: Lag, kind: consumer_lag, records: lots}\n");
        assert!(
            e.contains("field \"records\"") && e.contains("\"lots\" is not a number"),
            "{e}"
        );
        let e = err("rules:\n  - {name: Lag, kind: consumer_lag}\n");
        assert!(
            e.contains("field \"records\"") && e.contains("missing"),
            "{e}"
        );
        let e = err("rules:\n  - {name: C, kind: completeness, min_ratio: 1.5}\n");
        assert!(
            e.contains("rule \"C\"") && e.contains("\"min_ratio\"") && e.contains("\"1.5\""),
            "{e}"
        );
        let e = err("rules:\n  - {name: S, kind: group_status, statuses: [err, stalled]}\n");
        assert!(e.contains("\"stalled\" is not a group status"), "{e}");
        let e = err("rules:\n  - {name: S, kind: source_silent, after: soon}\n");
        assert!(
            e.contains("field \"after\"") && e.contains("\"soon\" is not a duration"),
            "{e}"
        );
        let e = err("rules:\n  - {name: S, kind: source_silent, after: 1m, for: often}\n");
        assert!(e.contains("field \"for\""), "{e}");
        let e = err("rules:\n  - {name: X, kind: lag}\n");
        assert!(
            e.contains("field \"kind\"") && e.contains("\"lag\" is not a rule kind"),
            "{e}"
        );
        let e = err("rules:\n  - {kind: expired}\n");
        assert!(
            e.contains("rule \"#1\"") && e.contains("field \"name\""),
            "{e}"
        );
        let e = err("rules:\n  - {name: S, kind: source_silent, after: 1m, topic: x}\n");
        assert!(
            e.contains("field \"topic\"") && e.contains("cannot select by topic"),
            "{e}"
        );
        let e = err("rules:\n  - {name: C, kind: completeness, min_ratio: 0.9, records: 3}\n");
        assert!(
            e.contains("field \"records\"") && e.contains("not a threshold"),
            "{e}"
        );
        let e = err(
            "rules:\n  - {name: E, kind: expired, annotations: {summary: \"{{ $labels.partition }}\"}}\n",
        );
        assert!(
            e.contains("field \"annotations.summary\"") && e.contains("\"partition\""),
            "{e}"
        );
        let e = err("rules:\n  - {name: E, kind: expired, labels: {group: x}}\n");
        assert!(
            e.contains("field \"labels\"") && e.contains("\"group\""),
            "{e}"
        );
        let e = err("rules:\n  - {name: E, kind: expired}\n  - {name: E, kind: expired}\n");
        assert!(e.contains("rule \"E\"") && e.contains("unique"), "{e}");
        let e = err("rulez: []\n");
        assert!(e.contains("\"rulez\""), "{e}");
        let e = err("rules: [\n");
        assert!(e.contains("t.yaml"), "{e}");
        let e = err("rules:\n  - {name: bad-name, kind: expired}\n");
        assert!(e.contains("\"bad-name\" is not a valid alert name"), "{e}");
    }
}
