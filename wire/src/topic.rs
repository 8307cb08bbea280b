//! Topic names, topic filters and shared subscriptions (sections 4.7 and 4.8.2).

/// Longest topic name or filter: the UTF-8 string length limit.
pub const TOPIC_LEN_MAX: usize = 65_535;

const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter is invalid.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// [MQTT-4.7.3-1]
    #[error("topic is empty")]
    Empty,
    #[error("topic of {len} bytes exceeds 65535")]
    TooLong { len: usize },
    /// [MQTT-4.7.0-1] / [MQTT-3.3.2-2]: wildcards are not allowed in topic names.
    #[error("wildcard in topic name")]
    WildcardInName,
    /// [MQTT-4.7.1-1]: '#' must be the last character and alone in its level.
    #[error("multi-level wildcard not alone in the last level")]
    InvalidMultiLevelWildcard,
    /// [MQTT-4.7.1-2]: '+' must occupy a whole level.
    #[error("single-level wildcard not alone in its level")]
    InvalidSingleLevelWildcard,
    /// [MQTT-4.7.3-2]
    #[error("topic contains U+0000")]
    NullCharacter,
    /// [MQTT-4.8.2-1] [MQTT-4.8.2-2]: share name non-empty, without '/', '+' or '#'.
    #[error("invalid share name")]
    InvalidShareName,
    /// "$share/group" without a filter after the group.
    #[error("shared subscription without a topic filter")]
    MissingSharedFilter,
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > TOPIC_LEN_MAX {
        return Err(TopicError::TooLong { len: topic.len() });
    }
    if topic.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A topic name as carried by PUBLISH: non-empty, at most 65,535 bytes, no wildcards, no U+0000.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.bytes().any(|byte| byte == b'+' || byte == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A topic filter: as a name, but '+' may fill whole levels and '#' may be the whole last level.
/// A `$share/` filter is checked as an ordinary filter here; use [`parse_shared`] to split it.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::InvalidMultiLevelWildcard);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Whether topic name `name` matches topic filter `filter` (both assumed valid; a `$share/`
/// prefix must be stripped by the caller). '+' matches exactly one level, '#' the parent level
/// and all children ("a/#" matches "a"), and names starting with '$' are not matched by filters
/// starting with a wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(expected), Some(level)) if expected == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The parts of a shared subscription filter "$share/{group}/{filter}".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// `Ok(None)` for an ordinary filter; `Ok(Some(..))` for a valid shared filter; an error when the
/// filter starts with "$share/" but the group or the inner filter is invalid.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(if rest.is_empty() || rest.contains(['+', '#']) {
            TopicError::InvalidShareName
        } else {
            TopicError::MissingSharedFilter
        });
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if inner.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    validate_filter(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_rules() {
        // [MQTT-4.7.1-1] [MQTT-4.7.1-2]
        for ok in ["#", "+", "a/#", "+/+", "a/+/b", "/", "//", "+/#", "$SYS/#"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "#/a", "a/#/b", "a+", "+a/b", "a/b+", ""] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn matching() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("#", "a/b"));
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(parse_shared("$share//a"), Err(TopicError::InvalidShareName));
        assert_eq!(
            parse_shared("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(TopicError::InvalidMultiLevelWildcard)
        );
    }
}
