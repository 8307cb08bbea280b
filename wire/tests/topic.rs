//! Topic matching against a simple reference implementation.

use proptest::prelude::*;
use ringmq_wire::topic::{matches, validate_filter, validate_name};

/// Straightforward recursive matcher over level lists.
fn reference(filter: &[&str], name: &[&str]) -> bool {
    match (filter.first(), name.first()) {
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => reference(&filter[1..], &name[1..]),
        (Some(f), Some(n)) => f == n && reference(&filter[1..], &name[1..]),
        (None, None) => true,
        _ => false,
    }
}

fn reference_matches(filter: &str, name: &str) -> bool {
    // [MQTT-4.7.2-1]
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let name: Vec<&str> = name.split('/').collect();
    reference(&filter, &name)
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof!["", "a", "b", "\\$s", "ab"], 1..5)
        .prop_map(|levels| levels.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(prop_oneof!["", "a", "b", "\\$s", "\\+"], 1..5),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str(if filter.is_empty() { "#" } else { "/#" });
            }
            if filter.is_empty() {
                filter.push('a');
            }
            filter
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn matches_agrees_with_reference(filter in filter(), name in name()) {
        prop_assume!(validate_name(&name).is_ok());
        prop_assert!(validate_filter(&filter).is_ok(), "{}", filter);
        prop_assert_eq!(matches(&filter, &name), reference_matches(&filter, &name), "{} vs {}", filter, name);
    }

    #[test]
    fn a_name_matches_itself(name in name()) {
        prop_assume!(validate_name(&name).is_ok());
        prop_assert!(matches(&name, &name));
        // '#' matches everything except '$' topics [MQTT-4.7.2-1].
        prop_assert_eq!(matches("#", &name), !name.starts_with('$'));
    }
}

#[test]
fn spec_examples() {
    // 4.7.1.2: "sport/tennis/player1/#" matches the parent and children.
    for name in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert!(matches("sport/tennis/player1/#", name));
    }
    assert!(matches("sport/#", "sport"));
    // 4.7.1.3
    assert!(matches("sport/tennis/+", "sport/tennis/player1"));
    assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
    assert!(!matches("sport/+", "sport"));
    assert!(matches("sport/+", "sport/"));
    assert!(matches("+/+", "/finance"));
    assert!(matches("/+", "/finance"));
    assert!(!matches("+", "/finance"));
    // 4.7.2 [MQTT-4.7.2-1]
    assert!(!matches("#", "$SYS/monitor/Clients"));
    assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    // [MQTT-4.7.3-1] topic names and filters are at least one character.
    assert!(validate_name("").is_err());
    assert!(validate_filter("").is_err());
    // Topic level separators alone are valid names.
    assert!(validate_name("/").is_ok());
}
