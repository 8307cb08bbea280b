//! The topic index against a brute-force reference: every filter the index reports for a topic is
//! exactly the set `wire::topic::matches` accepts, for the trie and for the exact+trie map, and
//! removal leaves no trace. Same for retained lookups (names matched by a filter).
use std::collections::BTreeSet;

use proptest::prelude::*;
use ringmq_engine::trie::{HasName, TopicMap, TopicTrie};

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("$x".to_string()),
        Just("".to_string()),
        Just("c".to_string())
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash || l.is_empty() {
                l.push("#".to_string());
            }
            l.join("/")
        })
}

#[derive(Debug, Clone)]
struct Named(String);
impl HasName for Named {
    fn name(&self) -> &str {
        &self.0
    }
}

proptest! {
    #[test]
    fn trie_and_map_match_like_brute_force(filters in prop::collection::vec(filter(), 0..24), topics in prop::collection::vec(name(), 1..8), removed in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut trie = TopicTrie::new();
        let mut map = TopicMap::new();
        let mut live: BTreeSet<String> = BTreeSet::new();
        for f in &filters {
            prop_assume!(wire::topic::validate_filter(f).is_ok());
            trie.insert(f, f.clone());
            map.get_or_insert_with(&std::sync::Arc::from(f.as_str()), || f.clone());
            live.insert(f.clone());
        }
        for idx in &removed {
            if filters.is_empty() { break; }
            let f = idx.get(&filters);
            trie.remove(f);
            map.remove(f);
            live.remove(f);
        }
        prop_assert_eq!(trie.len(), live.len());
        prop_assert_eq!(map.len(), live.len());
        for t in &topics {
            let expected: BTreeSet<String> = live.iter().filter(|f| wire::topic::matches(f, t)).cloned().collect();
            let mut got = BTreeSet::new();
            trie.for_each_match(t, |v| { got.insert(v.clone()); });
            prop_assert_eq!(&got, &expected, "trie, topic {:?}", t);
            let mut got = BTreeSet::new();
            map.for_each_match(t, |v| { got.insert(v.clone()); });
            prop_assert_eq!(&got, &expected, "map, topic {:?}", t);
        }
    }

    #[test]
    fn retained_lookup_matches_like_brute_force(names in prop::collection::vec(name(), 0..24), filters in prop::collection::vec(filter(), 1..8)) {
        let mut trie = TopicTrie::new();
        let mut live = BTreeSet::new();
        for n in &names {
            trie.insert(n, Named(n.clone()));
            live.insert(n.clone());
        }
        for f in &filters {
            prop_assume!(wire::topic::validate_filter(f).is_ok());
            let expected: BTreeSet<String> = live.iter().filter(|n| wire::topic::matches(f, n)).cloned().collect();
            let mut got = BTreeSet::new();
            trie.for_each_name_matching(f, |n, _| { got.insert(n.to_string()); });
            prop_assert_eq!(&got, &expected, "filter {:?}", f);
        }
    }
}
