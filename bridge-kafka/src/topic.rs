//! Topic filters for bridge rules: the codec's validation and matching (`wire::topic`), plus
//! the one rule that is the bridge's own (no shared subscriptions) and level extraction for keys
//! and templates.

/// Why a topic filter was rejected for a bridge rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not a valid MQTT topic filter (section 4.7).
    #[error(transparent)]
    Invalid(#[from] wire::topic::TopicError),
    /// Shared subscriptions select subscribers, they mean nothing for a bridge rule.
    #[error("shared subscription filters ($share/...) are not allowed in bridge rules")]
    Shared,
}

/// Checks an MQTT topic filter for use in a bridge rule.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    wire::topic::validate_filter(filter)?;
    if filter.starts_with("$share/") {
        return Err(FilterError::Shared);
    }
    Ok(())
}

/// True if `name` (a topic name, no wildcards) matches `filter` (already validated), including
/// [MQTT-4.7.2-1] for `$` topics.
pub fn matches(filter: &str, name: &str) -> bool {
    wire::topic::matches(filter, name)
}

pub(crate) fn filter_depth(filter: &str) -> (usize, bool) {
    let levels = filter.split('/').count();
    (levels, filter.ends_with('#'))
}

/// The `level`-th (1-based) level of a topic name.
pub(crate) fn level(name: &str, level: usize) -> Option<&str> {
    level
        .checked_sub(1)
        .and_then(|index| name.split('/').nth(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_filters() {
        for filter in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "$SYS/#"] {
            assert_eq!(validate_filter(filter), Ok(()), "{filter}");
        }
    }

    #[test]
    fn invalid_filters() {
        use wire::topic::TopicError;
        // [MQTT-4.7.1-1]
        assert_eq!(
            validate_filter("a/#/b"),
            Err(FilterError::Invalid(TopicError::InvalidMultiLevelWildcard))
        );
        assert_eq!(
            validate_filter("a#"),
            Err(FilterError::Invalid(TopicError::InvalidMultiLevelWildcard))
        );
        // [MQTT-4.7.1-2]
        assert_eq!(
            validate_filter("a/b+"),
            Err(FilterError::Invalid(TopicError::InvalidSingleLevelWildcard))
        );
        // [MQTT-4.7.3-1]
        assert_eq!(
            validate_filter(""),
            Err(FilterError::Invalid(TopicError::Empty))
        );
        // [MQTT-4.7.3-2]
        assert_eq!(
            validate_filter("a\0"),
            Err(FilterError::Invalid(TopicError::NullCharacter))
        );
        assert_eq!(validate_filter("$share/g/a"), Err(FilterError::Shared));
    }

    #[test]
    fn matching() {
        assert!(matches("vehicle/+/telemetry", "vehicle/v1/telemetry"));
        assert!(!matches("vehicle/+/telemetry", "vehicle/v1/telemetry/x"));
        assert!(!matches("vehicle/+/telemetry", "vehicle/telemetry"));
        assert!(matches("vehicle/#", "vehicle"));
        assert!(matches("vehicle/#", "vehicle/a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(!matches("a/b", "a/b/c"));
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn levels() {
        assert_eq!(level("vehicle/v1/telemetry", 1), Some("vehicle"));
        assert_eq!(level("vehicle/v1/telemetry", 2), Some("v1"));
        assert_eq!(level("vehicle/v1/telemetry", 4), None);
        assert_eq!(level("vehicle/v1/telemetry", 0), None);
        assert_eq!(filter_depth("a/+/c"), (3, false));
        assert_eq!(filter_depth("a/#"), (2, true));
    }
}
