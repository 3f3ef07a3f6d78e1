use crate::{Error, Reason, Result};

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;
/// The longest consumer group name tally accepts.
pub const MAX_GROUP_LEN: usize = 255;

/// Checks a topic name against Kafka's rules: 1–249 characters of
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn validate_topic(topic: &str) -> Result<()> {
    let ok_chars = topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN || !ok_chars || topic == "." || topic == ".."
    {
        return Err(Error::new(
            Reason::BadTopic,
            format!(
                "topic \"{}\" is not a valid Kafka topic name: expected 1 to {MAX_TOPIC_LEN} characters of [a-zA-Z0-9._-], other than \".\" and \"..\"",
                printable(topic)
            ),
        ));
    }
    Ok(())
}

/// Checks a consumer group name: 1–255 characters, none of them a control character.
pub fn validate_group(group: &str) -> Result<()> {
    if group.is_empty()
        || group.chars().count() > MAX_GROUP_LEN
        || group.chars().any(char::is_control)
    {
        return Err(Error::new(
            Reason::BadField,
            format!(
                "group \"{}\" is not accepted: expected 1 to {MAX_GROUP_LEN} characters and no control characters",
                printable(group)
            ),
        ));
    }
    Ok(())
}

/// A bounded, escaped copy of `s` for error messages.
pub(crate) fn printable(s: &str) -> String {
    const LIMIT: usize = 64;
    let mut out: String = s
        .chars()
        .take(LIMIT)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().count() > LIMIT {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_rules() {
        for good in ["orders", "a", "A.b_c-9", &"x".repeat(249)] {
            assert!(validate_topic(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ümlaut",
            &"x".repeat(250),
        ] {
            let err = validate_topic(bad).unwrap_err();
            assert_eq!(err.reason, Reason::BadTopic);
        }
        let err = validate_topic("bad topic").unwrap_err();
        assert!(err.detail.contains("\"bad topic\""), "{}", err.detail);
    }

    #[test]
    fn group_rules() {
        assert!(validate_group("billing").is_ok());
        assert!(validate_group("billing service/v2").is_ok());
        assert!(validate_group("").is_err());
        assert!(validate_group("a\nb").is_err());
        assert!(validate_group(&"g".repeat(256)).is_err());
    }

    #[test]
    fn printable_bounds_and_escapes() {
        assert_eq!(printable("a\"b\n"), "a\\\"b\\n");
        assert!(printable(&"z".repeat(1000)).ends_with('…'));
    }
}
