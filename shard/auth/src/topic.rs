//! Topic-level matching for ACL rules: name ∈ rule, filter ⊆ rule and filter ∩ rule ≠ ∅.
//!
//! Everything walks the two level sequences side by side in one loop, so the cost is linear in
//! the number of levels and nothing recurses over client-controlled depth. This crate does not
//! depend on the MQTT codec, so it carries its own small syntax check.
//!
//! Topics whose first level starts with `$` (`$SYS/...`) are matched only by a rule or filter
//! whose first level is not a wildcard ([MQTT-4.7.2-1] applied to rules as well): an ACL grants
//! `$SYS` only by an explicit rule that names it.

/// The prefix of a shared subscription, `$share/<group>/<filter>` (MQTT 5.0 4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// One level of a rule after `%c` / `%u` have been resolved: a literal made of one or more
/// pieces (so a level like `car-%c` needs no allocation to compare) or a wildcard.
/// `C` resolves placeholders (the client's id and username), or is `()` for plain levels.
pub(crate) trait RuleLevel<C: ?Sized> {
    fn is_plus(&self) -> bool;
    fn is_hash(&self) -> bool;
    /// Whether this literal level equals `text` exactly. Only called when not a wildcard.
    fn literal_eq(&self, ctx: &C, text: &str) -> bool;
    /// Whether this literal level starts with `$`. Only called when not a wildcard.
    fn literal_starts_with_dollar(&self, ctx: &C) -> bool;
}

impl RuleLevel<()> for &str {
    fn is_plus(&self) -> bool {
        *self == "+"
    }
    fn is_hash(&self) -> bool {
        *self == "#"
    }
    fn literal_eq(&self, _ctx: &(), text: &str) -> bool {
        *self == text
    }
    fn literal_starts_with_dollar(&self, _ctx: &()) -> bool {
        self.starts_with('$')
    }
}

/// Splits `$share/<group>/<filter>` into the filter; other filters come back unchanged. `None`
/// when the shared form is malformed (no group, or nothing after the group).
pub fn strip_share(filter: &str) -> Option<&str> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Some(filter);
    };
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some(inner)
}

/// A topic name as PUBLISH carries it: non-empty, no wildcard, no U+0000.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '\0'])
}

/// A topic filter: non-empty, no U+0000, `+` fills a whole level, `#` is the whole last level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether the rule matches topic name `name` (wildcard-free). The rule is assumed valid.
pub fn name_matches(rule: &str, name: &str) -> bool {
    let levels: Vec<&str> = rule.split('/').collect();
    name_matches_levels(&levels, &(), name)
}

/// Whether every topic filter `filter` can match is matched by `rule`.
pub fn filter_within(filter: &str, rule: &str) -> bool {
    let levels: Vec<&str> = rule.split('/').collect();
    filter_within_levels(filter, &levels, &())
}

/// Whether some topic is matched by both `filter` and `rule`.
pub fn filters_overlap(filter: &str, rule: &str) -> bool {
    let levels: Vec<&str> = rule.split('/').collect();
    filters_overlap_levels(filter, &levels, &())
}

/// Whether the first level keeps `$`-topics out: a wildcard first level never matches a topic
/// whose first level starts with `$`.
fn dollar_conflict<C: ?Sized, L: RuleLevel<C>>(
    rule_first: &L,
    ctx: &C,
    subject_first: &str,
) -> bool {
    let rule_wild = rule_first.is_plus() || rule_first.is_hash();
    let subject_wild = subject_first == "+" || subject_first == "#";
    if rule_wild && !subject_wild {
        return subject_first.starts_with('$');
    }
    if subject_wild && !rule_wild {
        return rule_first.literal_starts_with_dollar(ctx);
    }
    false
}

pub(crate) fn name_matches_levels<C: ?Sized, L: RuleLevel<C>>(
    rule: &[L],
    ctx: &C,
    name: &str,
) -> bool {
    let mut names = name.split('/');
    let mut index = 0;
    loop {
        let level = names.next();
        let Some(rule_level) = rule.get(index) else {
            return level.is_none();
        };
        if index == 0 {
            if let Some(first) = level {
                if dollar_conflict(rule_level, ctx, first) {
                    return false;
                }
            }
        }
        if rule_level.is_hash() {
            // `a/#` also matches `a`.
            return true;
        }
        let Some(level) = level else {
            return false;
        };
        if !rule_level.is_plus() && !rule_level.literal_eq(ctx, level) {
            return false;
        }
        index += 1;
    }
}

pub(crate) fn filter_within_levels<C: ?Sized, L: RuleLevel<C>>(
    filter: &str,
    rule: &[L],
    ctx: &C,
) -> bool {
    let mut levels = filter.split('/');
    let mut index = 0;
    loop {
        let level = levels.next();
        let Some(rule_level) = rule.get(index) else {
            // The rule ends: the filter must end here too.
            return level.is_none();
        };
        if index == 0 {
            if let Some(first) = level {
                if dollar_conflict(rule_level, ctx, first) {
                    return false;
                }
            }
        }
        if rule_level.is_hash() {
            return true;
        }
        let Some(level) = level else {
            // The filter ends before the rule, which has more non-`#` levels.
            return false;
        };
        let covered = match level {
            // `#` matches any depth from here on; only a rule `#` here covers that.
            "#" => false,
            "+" => rule_level.is_plus(),
            literal => rule_level.is_plus() || rule_level.literal_eq(ctx, literal),
        };
        if !covered {
            return false;
        }
        index += 1;
    }
}

pub(crate) fn filters_overlap_levels<C: ?Sized, L: RuleLevel<C>>(
    filter: &str,
    rule: &[L],
    ctx: &C,
) -> bool {
    let mut levels = filter.split('/');
    let mut index = 0;
    loop {
        let level = levels.next();
        let rule_level = rule.get(index);
        let (level, rule_level) = match (level, rule_level) {
            (None, None) => return true,
            // One side ends: they share a topic only if the other has `#` here (parent match).
            (Some(level), None) => return level == "#",
            (None, Some(rule_level)) => return rule_level.is_hash(),
            (Some(level), Some(rule_level)) => (level, rule_level),
        };
        if index == 0 && dollar_conflict(rule_level, ctx, level) {
            return false;
        }
        if level == "#" || rule_level.is_hash() {
            return true;
        }
        if level != "+" && !rule_level.is_plus() && !rule_level.literal_eq(ctx, level) {
            return false;
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        // [MQTT-4.7.1-2] / [MQTT-4.7.1-1]
        assert!(name_matches("a/+/c", "a/b/c"));
        assert!(!name_matches("a/+/c", "a/b/c/d"));
        assert!(name_matches("a/#", "a"));
        assert!(name_matches("a/#", "a/b/c"));
        assert!(!name_matches("a/b", "a"));
        assert!(name_matches("+", ""));
        assert!(name_matches("+/+", "/"));
        // [MQTT-4.7.2-1]
        assert!(!name_matches("#", "$SYS/x"));
        assert!(!name_matches("+/x", "$SYS/x"));
        assert!(name_matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn within() {
        assert!(filter_within("vehicle/c1/#", "vehicle/c1/#"));
        assert!(filter_within("vehicle/c1/speed", "vehicle/c1/#"));
        assert!(filter_within("vehicle/c1", "vehicle/c1/#"));
        assert!(filter_within("vehicle/c1/+", "vehicle/c1/#"));
        assert!(!filter_within("vehicle/+/speed", "vehicle/c1/#"));
        assert!(!filter_within("vehicle/#", "vehicle/c1/#"));
        assert!(!filter_within("#", "vehicle/c1/#"));
        assert!(!filter_within("+/+/speed", "vehicle/c1/#"));
        assert!(filter_within("a/+", "a/+"));
        assert!(!filter_within("a/#", "a/+"));
        assert!(!filter_within("a", "a/+"));
        assert!(filter_within("#", "#"));
        assert!(!filter_within("$SYS/#", "#"));
        assert!(filter_within("$SYS/x", "$SYS/#"));
    }

    #[test]
    fn overlap() {
        assert!(filters_overlap("#", "secret/#"));
        assert!(filters_overlap("secret", "secret/#"));
        assert!(filters_overlap("+/a", "b/+"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/b/c", "a/b"));
        assert!(filters_overlap("a/b/#", "a/b"));
        assert!(!filters_overlap("#", "$SYS/#"));
        assert!(!filters_overlap("+/x", "$SYS/x"));
        assert!(filters_overlap("$SYS/+", "$SYS/x"));
    }

    #[test]
    fn share() {
        assert_eq!(strip_share("$share/g/a/#"), Some("a/#"));
        assert_eq!(strip_share("a/#"), Some("a/#"));
        assert_eq!(strip_share("$share/g"), None);
        assert_eq!(strip_share("$share//a"), None);
        assert_eq!(strip_share("$share/g/"), None);
    }

    #[test]
    fn syntax() {
        assert!(is_valid_filter("a/+/#"));
        assert!(!is_valid_filter("a/#/b"));
        assert!(!is_valid_filter("a+"));
        assert!(!is_valid_name("a/+"));
        assert!(is_valid_name("a//b"));
    }
}
