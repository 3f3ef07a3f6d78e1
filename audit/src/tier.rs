use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::topic::printable;
use crate::{Error, Reason, Result, validate_group};

/// A named stage of a pipeline that counts records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Counted client-side by producers that report.
    Produced,
    /// Appended to the broker's log.
    Broker,
    /// Consumed by a consumer group, judged by its committed offsets.
    Group(String),
    /// Processed by an application that reports, client-side.
    Consumer(String),
    /// Copied to the named cluster: the `broker` count of the topic's copy
    /// there, under the agent's mirror rules (DESIGN §11). The agent derives
    /// it; no source reports it.
    Mirror(String),
}

/// The kind of a [`Tier`], without its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// See [`Tier::Produced`].
    Produced,
    /// See [`Tier::Broker`].
    Broker,
    /// See [`Tier::Group`].
    Group,
    /// See [`Tier::Consumer`].
    Consumer,
    /// See [`Tier::Mirror`].
    Mirror,
}

impl Tier {
    /// The kind of this tier.
    pub fn kind(&self) -> TierKind {
        match self {
            Tier::Produced => TierKind::Produced,
            Tier::Broker => TierKind::Broker,
            Tier::Group(_) => TierKind::Group,
            Tier::Consumer(_) => TierKind::Consumer,
            Tier::Mirror(_) => TierKind::Mirror,
        }
    }

    /// The group name of a `group:` tier.
    pub fn group(&self) -> Option<&str> {
        match self {
            Tier::Group(g) => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Produced => f.write_str("produced"),
            Tier::Broker => f.write_str("broker"),
            Tier::Group(g) => write!(f, "group:{g}"),
            Tier::Consumer(c) => write!(f, "consumer:{c}"),
            Tier::Mirror(c) => write!(f, "mirror:{c}"),
        }
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let named = |name: &str, make: fn(String) -> Tier| -> Result<Tier> {
            validate_group(name).map_err(|e| {
                Error::new(
                    Reason::BadField,
                    format!("tier \"{}\": {}", printable(s), e.detail),
                )
            })?;
            Ok(make(name.to_owned()))
        };
        match s {
            "produced" => Ok(Tier::Produced),
            "broker" => Ok(Tier::Broker),
            _ => {
                if let Some(g) = s.strip_prefix("group:") {
                    named(g, Tier::Group)
                } else if let Some(c) = s.strip_prefix("consumer:") {
                    named(c, Tier::Consumer)
                } else if let Some(c) = s.strip_prefix("mirror:") {
                    crate::validate_topic(c).map_err(|_| {
                        Error::new(
                            Reason::BadField,
                            format!(
                                "tier \"{}\": cluster \"{}\" is not a cluster name: expected 1 to 249 characters of [a-zA-Z0-9._-]",
                                printable(s),
                                printable(c)
                            ),
                        )
                    })?;
                    Ok(Tier::Mirror(c.to_owned()))
                } else {
                    Err(Error::new(
                        Reason::BadField,
                        format!(
                            "tier \"{}\" is not known: expected \"produced\", \"broker\", \"group:<name>\", \"consumer:<name>\" or \"mirror:<cluster>\"",
                            printable(s)
                        ),
                    ))
                }
            }
        }
    }
}

impl FromStr for TierKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "produced" => Ok(TierKind::Produced),
            "broker" => Ok(TierKind::Broker),
            "group" => Ok(TierKind::Group),
            "consumer" => Ok(TierKind::Consumer),
            "mirror" => Ok(TierKind::Mirror),
            _ => Err(Error::new(
                Reason::BadField,
                format!(
                    "tier kind \"{}\" is not known: expected produced, broker, group, consumer or mirror",
                    printable(s)
                ),
            )),
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for t in [
            Tier::Produced,
            Tier::Broker,
            Tier::Group("billing".into()),
            Tier::Consumer("app-1".into()),
        ] {
            assert_eq!(t.to_string().parse::<Tier>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), t);
        }
        assert_eq!(Tier::Group("a:b".into()).to_string(), "group:a:b");
        assert_eq!("group:a:b".parse::<Tier>().unwrap().group(), Some("a:b"));
    }

    #[test]
    fn unknown_tiers_are_named() {
        let err = "consumed".parse::<Tier>().unwrap_err();
        assert!(err.detail.contains("\"consumed\""), "{}", err.detail);
        assert!("group:".parse::<Tier>().is_err());
        assert!("group:a\u{7}".parse::<Tier>().is_err());
    }
}
