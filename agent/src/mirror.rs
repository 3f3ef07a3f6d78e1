//! Mirror rules (`--mirror FROM=TO`, DESIGN §11): which topic of which
//! cluster is a copy of which other, so that the copy's `broker` count
//! becomes tier `mirror:<destination cluster>` of the source topic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One side of a rule: a cluster, and a topic name or a pattern with one
/// `*` (Kafka topic names cannot hold a `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Side {
    cluster: String,
    /// The topic before the `*`, or the whole name.
    prefix: String,
    /// The topic after the `*`; None where the side has no `*`.
    suffix: Option<String>,
}

impl Side {
    fn parse(rule: &str, side: &str, text: &str) -> Result<Side> {
        let bad = |why: &str| {
            Error::Config(format!(
                "mirror rule \"{rule}\": the {side} side \"{text}\" {why}: expected CLUSTER:TOPIC, \
                 where TOPIC may hold one \"*\" (as in a:orders=b:a.orders or a:*=b:a.*)"
            ))
        };
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        let Some((cluster, topic)) = text.split_once(':') else {
            return Err(bad("names no cluster"));
        };
        if cluster.is_empty() {
            return Err(bad("has an empty cluster"));
        }
        if cluster.contains('*') {
            return Err(bad("has a \"*\" in its cluster, which cannot be a pattern"));
        }
        if tally_audit::validate_topic(cluster).is_err() {
            return Err(bad(
                "has a cluster name that is not one (1 to 249 characters of [a-zA-Z0-9._-])",
            ));
        }
        if topic.is_empty() {
            return Err(bad("has an empty topic"));
        }
        if let Some(c) = topic
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
        {
            return Err(bad(&format!(
                "has \"{}\" in its topic, which no Kafka topic name holds",
                c.escape_default()
            )));
        }
        let (prefix, suffix) = match topic.split_once('*') {
            None => (topic.to_owned(), None),
            Some((_, after)) if after.contains('*') => {
                return Err(bad("has more than one \"*\""));
            }
            Some((before, after)) => (before.to_owned(), Some(after.to_owned())),
        };
        Ok(Side {
            cluster: cluster.to_owned(),
            prefix,
            suffix,
        })
    }

    /// What `*` matched in `topic` (the whole name for a side without one),
    /// where `topic` of `cluster` is on this side.
    fn matched<'t>(&self, cluster: &str, topic: &'t str) -> Option<&'t str> {
        if cluster != self.cluster {
            return None;
        }
        match &self.suffix {
            None => (topic == self.prefix).then_some(topic),
            Some(suffix) => topic
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .filter(|star| !star.is_empty()),
        }
    }

    /// This side's topic, with `*` filled by `star`.
    fn fill(&self, star: &str) -> String {
        match &self.suffix {
            None => self.prefix.clone(),
            Some(suffix) => format!("{}{star}{suffix}", self.prefix),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.suffix {
            None => write!(f, "{}:{}", self.cluster, self.prefix),
            Some(s) => write!(f, "{}:{}*{s}", self.cluster, self.prefix),
        }
    }
}

/// A rule as the config file and the flag give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The source: `cluster:topic`, the topic may hold one `*`.
    pub from: String,
    /// The destination: `cluster:topic`, a template filled with what `*`
    /// matched in `from`.
    pub to: String,
}

impl std::str::FromStr for MirrorConfig {
    type Err = Error;
    /// `FROM=TO`, as `--mirror` takes it.
    fn from_str(s: &str) -> Result<MirrorConfig> {
        let Some((from, to)) = s.split_once('=') else {
            return Err(Error::Config(format!(
                "mirror rule \"{s}\" has no \"=\": expected FROM=TO, as in a:orders=b:a.orders"
            )));
        };
        Ok(MirrorConfig {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

/// One parsed rule.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    from: Side,
    to: Side,
}

/// The mirror rules in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorRules {
    rules: Vec<Rule>,
}

impl MirrorRules {
    /// Parses `configs`; an error names the rule that is wrong and why.
    pub fn parse(configs: &[MirrorConfig]) -> Result<MirrorRules> {
        let mut rules = Vec::with_capacity(configs.len());
        for c in configs {
            let text = format!("{}={}", c.from, c.to);
            let from = Side::parse(&text, "FROM", &c.from)?;
            let to = Side::parse(&text, "TO", &c.to)?;
            if from.suffix.is_some() != to.suffix.is_some() {
                return Err(Error::Config(format!(
                    "mirror rule \"{text}\": a \"*\" on one side only; a pattern needs one on both \
                     sides (a:*=b:a.*), a single topic none (a:orders=b:a.orders)"
                )));
            }
            if from == to {
                return Err(Error::Config(format!(
                    "mirror rule \"{text}\" copies a topic onto itself: FROM and TO must differ"
                )));
            }
            if from.cluster == to.cluster && from.suffix.is_some() {
                // Within one cluster, a pattern whose copies match it again
                // would audit copies of copies.
                let probe = to.fill("x");
                if from.matched(&from.cluster, &probe).is_some() {
                    return Err(Error::Config(format!(
                        "mirror rule \"{text}\": every copy \"{probe}\" would match FROM again; \
                         within one cluster, TO must not match FROM"
                    )));
                }
            }
            rules.push(Rule { from, to });
        }
        Ok(MirrorRules { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules as text, `FROM=TO` each, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| format!("{}={}", r.from, r.to))
            .collect()
    }

    /// The source (cluster, topic) that `topic` of `cluster` is a copy of,
    /// under the first rule that says so. A topic that is itself a copy
    /// under some rule is never taken as the source of a pattern's copy, so
    /// that active-active pairs (`a:*=b:a.*` with `b:*=a:b.*`) audit no
    /// copies of copies.
    pub fn source_of(&self, cluster: &str, topic: &str) -> Option<(&str, String)> {
        self.rules.iter().find_map(|r| {
            let star = r.to.matched(cluster, topic)?;
            let source = r.from.fill(star);
            if r.from.suffix.is_some() && self.is_copy(&r.from.cluster, &source) {
                return None;
            }
            Some((r.from.cluster.as_str(), source))
        })
    }

    /// Whether `topic` of `cluster` is a destination under some rule.
    fn is_copy(&self, cluster: &str, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.to.matched(cluster, topic).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Result<MirrorRules> {
        let configs: Vec<MirrorConfig> = texts.iter().map(|t| t.parse()).collect::<Result<_>>()?;
        MirrorRules::parse(&configs)
    }

    fn source(r: &MirrorRules, cluster: &str, topic: &str) -> Option<(String, String)> {
        r.source_of(cluster, topic).map(|(c, t)| (c.to_owned(), t))
    }

    fn of(cluster: &str, topic: &str) -> Option<(String, String)> {
        Some((cluster.to_owned(), topic.to_owned()))
    }

    #[test]
    fn a_single_topic_rule_maps_its_destination_only() {
        let r = rules(&["a:orders=b:a.orders"]).unwrap();
        assert_eq!(source(&r, "b", "a.orders"), of("a", "orders"));
        assert_eq!(source(&r, "b", "orders"), None);
        assert_eq!(source(&r, "a", "a.orders"), None);
        assert_eq!(source(&r, "c", "a.orders"), None);
    }

    #[test]
    fn a_pattern_fills_the_source_from_what_the_star_matched() {
        let r = rules(&["a:*=b:a.*"]).unwrap();
        assert_eq!(source(&r, "b", "a.orders"), of("a", "orders"));
        assert_eq!(source(&r, "b", "a.billing.v2"), of("a", "billing.v2"));
        // `*` matches at least one character.
        assert_eq!(source(&r, "b", "a."), None);
        assert_eq!(source(&r, "b", "orders"), None);
        let identity = rules(&["east:*=west:*"]).unwrap();
        assert_eq!(source(&identity, "west", "orders"), of("east", "orders"));
        let both = rules(&["a:in-*-raw=b:copy-*"]).unwrap();
        assert_eq!(source(&both, "b", "copy-x"), of("a", "in-x-raw"));
    }

    #[test]
    fn active_active_pairs_audit_no_copies_of_copies() {
        let r = rules(&["a:*=b:a.*", "b:*=a:b.*"]).unwrap();
        assert_eq!(source(&r, "b", "a.orders"), of("a", "orders"));
        assert_eq!(source(&r, "a", "b.orders"), of("b", "orders"));
        // b:a.orders copied back to a is a:b.a.orders: its source would be
        // b:a.orders, itself a copy.
        assert_eq!(source(&r, "a", "b.a.orders"), None);
        assert_eq!(source(&r, "b", "a.b.orders"), None);
    }

    #[test]
    fn bad_rules_are_refused_with_an_error_that_names_them() {
        for (text, why) in [
            ("a:orders", "has no \"=\""),
            ("=b:x", "FROM side \"\" is empty"),
            ("a:x=", "TO side \"\" is empty"),
            ("orders=b:x", "names no cluster"),
            (":orders=b:x", "empty cluster"),
            ("a:=b:x", "empty topic"),
            ("a*:x=b:x", "in its cluster"),
            ("a:*=b:orders", "one side only"),
            ("a:orders=b:*", "one side only"),
            ("a:*.*=b:*", "more than one"),
            ("a:or ders=b:x", "\" \" in its topic"),
            ("a:x=a:x", "onto itself"),
            ("a:*=a:copy.*", "must not match FROM"),
        ] {
            let message = rules(&[text]).unwrap_err().to_string();
            assert!(message.contains(why), "{text}: {message}");
            if text.contains('=') {
                assert!(message.contains(text), "{text}: {message}");
            }
        }
        // Within one cluster, a pattern whose copies do not match it is fine.
        assert!(rules(&["a:in.*=a:out.*"]).is_ok());
    }
}
