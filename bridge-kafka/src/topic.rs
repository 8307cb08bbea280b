//! MQTT topic filter validation and matching, just enough for bridge rules.
//!
//! The bridge keeps its own small matcher so it does not depend on the codec crate at the seam;
//! the rules follow MQTT 5.0 section 4.7.

/// Why a topic filter was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// [MQTT-4.7.3-1] topic names and filters are at least one character long.
    #[error("topic filter is empty")]
    Empty,
    /// [MQTT-4.7.1-1] '#' must be alone in its level and the last level.
    #[error("'#' must occupy a whole level and be the last level")]
    MisplacedMultiLevelWildcard,
    /// [MQTT-4.7.1-2] '+' must occupy a whole level.
    #[error("'+' must occupy a whole level")]
    MisplacedSingleLevelWildcard,
    /// [MQTT-4.7.3-2] topic names and filters must not contain U+0000.
    #[error("topic filter contains a null character")]
    NullCharacter,
    /// [MQTT-4.7.3-3] at most 65535 bytes.
    #[error("topic filter is longer than 65535 bytes")]
    TooLong,
    /// Shared subscriptions select subscribers, they mean nothing for a bridge rule.
    #[error("shared subscription filters ($share/...) are not allowed in bridge rules")]
    Shared,
}

/// Checks an MQTT topic filter for use in a bridge rule.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err(FilterError::TooLong);
    }
    if filter.contains('\0') {
        return Err(FilterError::NullCharacter);
    }
    if filter.starts_with("$share/") {
        return Err(FilterError::Shared);
    }
    let level_count = filter.split('/').count();
    for (index, level) in filter.split('/').enumerate() {
        if level.contains('#') && (level != "#" || index + 1 != level_count) {
            return Err(FilterError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// True if `name` (a topic name, no wildcards) matches `filter` (already validated).
pub fn matches(filter: &str, name: &str) -> bool {
    // [MQTT-4.7.2-1] a filter starting with a wildcard must not match a name starting with '$'.
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // '#' also matches the parent level: "a/#" matches "a" [MQTT-4.7.1-2 note].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The number of levels of a filter, and whether it ends in '#' (so it may match deeper names).
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
        // [MQTT-4.7.1-1]
        assert_eq!(
            validate_filter("a/#/b"),
            Err(FilterError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            validate_filter("a#"),
            Err(FilterError::MisplacedMultiLevelWildcard)
        );
        // [MQTT-4.7.1-2]
        assert_eq!(
            validate_filter("a/b+"),
            Err(FilterError::MisplacedSingleLevelWildcard)
        );
        // [MQTT-4.7.3-1]
        assert_eq!(validate_filter(""), Err(FilterError::Empty));
        // [MQTT-4.7.3-2]
        assert_eq!(validate_filter("a\0"), Err(FilterError::NullCharacter));
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
