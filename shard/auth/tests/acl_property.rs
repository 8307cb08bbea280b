//! Property: a filter `check_subscribe` allows never matches a topic `check_receive` denies (and,
//! for readwrite-only policies, `check_publish` denies), over random filters and every topic of
//! a small alphabet up to four levels. The reference matcher here is written independently of
//! the crate's.

use proptest::prelude::*;
use ringmq_auth::{Access, Acl, Identity};

/// Level values: ids, a `$` level, the empty level.
const WORDS: &[&str] = &["c1", "c2", "a", "$SYS", ""];

/// Brute-force MQTT matching ([MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.2-1]).
fn reference_matches(filter: &[&str], topic: &[&str]) -> bool {
    if topic.first().is_some_and(|first| first.starts_with('$'))
        && filter
            .first()
            .is_some_and(|first| *first == "+" || *first == "#")
    {
        return false;
    }
    let mut i = 0;
    loop {
        match (filter.get(i), topic.get(i)) {
            (Some(&"#"), _) => return true,
            (None, None) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
        i += 1;
    }
}

fn all_topics() -> Vec<Vec<&'static str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut frontier: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..4 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for word in WORDS {
                let mut topic = prefix.clone();
                topic.push(word);
                next.push(topic);
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let level = prop::sample::select(vec!["c1", "c2", "a", "$SYS", "", "+"]);
    (
        prop::collection::vec(level, 1..=4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(levels, hash, shared)| {
            let mut text = levels.join("/");
            if hash {
                text.push_str("/#");
            }
            if text == "/#" || text.is_empty() {
                text = "#".into();
            }
            if shared {
                text = format!("$share/g/{text}");
            }
            text
        })
}

const POLICIES: &[&str] = &[
    "pattern readwrite vehicle/%c/#\npattern readwrite %c/#\n",
    "topic readwrite a/#\ntopic deny a/c2/#\ntopic readwrite +/c1\n",
    "topic readwrite #\ntopic deny +/c2\ntopic readwrite $SYS/a/#\n",
    "user u\ntopic readwrite c1/+/a\npattern readwrite a/%u/#\npattern deny a/%c\n",
    "pattern readwrite %c/+/#\npattern deny +/+/c2/#\ntopic readwrite /#\n",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn allowed_filters_only_reach_allowed_topics(
        filter in filter_strategy(),
        policy in 0..POLICIES.len(),
        client in prop::sample::select(vec!["c1", "c2", "a", "c1/a", "+", "$SYS"]),
        user in prop::sample::select(vec![None, Some("u"), Some("c2"), Some("a/c1")]),
    ) {
        let acl = Acl::parse(POLICIES[policy]).unwrap();
        let me = Identity::new(client, user.map(str::to_owned));
        if acl.check_subscribe(&me, &filter) == Access::Allow {
            let inner = filter.strip_prefix("$share/g/").unwrap_or(&filter);
            let levels: Vec<&str> = inner.split('/').collect();
            for topic in all_topics() {
                if reference_matches(&levels, &topic) {
                    let name = topic.join("/");
                    if name.is_empty() {
                        continue;
                    }
                    prop_assert_eq!(acl.check_receive(&me, &name), Access::Allow,
                        "filter {} allowed but topic {:?} denied", filter, name);
                    // These policies grant only readwrite, so publish must agree.
                    prop_assert_eq!(acl.check_publish(&me, &name), Access::Allow,
                        "filter {} allowed but publish to {:?} denied", filter, name);
                }
            }
        }
    }

    #[test]
    fn receive_and_publish_agree_with_reference_for_topic_rules(
        rule in filter_strategy(),
        topic in prop::collection::vec(prop::sample::select(WORDS.to_vec()), 1..=4),
    ) {
        // One allow rule and nothing else: check_receive is exactly "the rule matches".
        let rule = rule.strip_prefix("$share/g/").unwrap_or(&rule).to_owned();
        let acl = Acl::parse(&format!("topic readwrite {rule}\n")).unwrap();
        let me = Identity::new("x", None);
        let name = topic.join("/");
        prop_assume!(!name.is_empty());
        let levels: Vec<&str> = rule.split('/').collect();
        let expected = if reference_matches(&levels, &topic) { Access::Allow } else { Access::Deny };
        prop_assert_eq!(acl.check_receive(&me, &name), expected);
        prop_assert_eq!(acl.check_publish(&me, &name), expected);
    }
}

/// Every filter of up to three levels over the alphabet (with and without a trailing `#`), every
/// policy and identity above: the same property as the random test, exhaustively, and a count
/// that shows it is not vacuous.
#[test]
fn exhaustive_small_universe() {
    let levels = ["c1", "c2", "a", "$SYS", "", "+"];
    let mut filters: Vec<String> = vec!["#".into()];
    let mut frontier: Vec<String> = vec![String::new()];
    for depth in 0..3 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for level in levels {
                let filter = if depth == 0 {
                    level.to_owned()
                } else {
                    format!("{prefix}/{level}")
                };
                filters.push(filter.clone());
                filters.push(format!("{filter}/#"));
                next.push(filter);
            }
        }
        frontier = next;
    }
    let topics: Vec<Vec<&str>> = all_topics().into_iter().filter(|t| t.len() <= 3).collect();
    let mut allowed = 0usize;
    for policy in POLICIES {
        let acl = Acl::parse(policy).unwrap();
        for client in ["c1", "c2", "a", "c1/a", "+", "$SYS"] {
            for user in [None, Some("u"), Some("c2"), Some("a/c1")] {
                let me = Identity::new(client, user.map(str::to_owned));
                for filter in &filters {
                    if acl.check_subscribe(&me, filter) != Access::Allow {
                        continue;
                    }
                    allowed += 1;
                    let levels: Vec<&str> = filter.split('/').collect();
                    for topic in &topics {
                        let name = topic.join("/");
                        if name.is_empty() || !reference_matches(&levels, topic) {
                            continue;
                        }
                        assert_eq!(
                            acl.check_receive(&me, &name),
                            Access::Allow,
                            "{policy:?} {client} {user:?}: {filter} allowed, {name:?} denied"
                        );
                        assert_eq!(acl.check_publish(&me, &name), Access::Allow);
                    }
                }
            }
        }
    }
    assert!(
        allowed > 1000,
        "only {allowed} filters allowed: the property is near vacuous"
    );
}
