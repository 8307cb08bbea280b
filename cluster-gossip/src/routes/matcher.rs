//! Which peer nodes have interest in a topic: a trie over every remote filter.
//!
//! This duplicates the idea (not the code) of the broker's per-shard trie in `shard/src/trie.rs`;
//! this crate must not depend on `shard`. Once the engine settles, one trie crate could serve both.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use smallvec::SmallVec;

use super::RouteEntry;
use crate::identity::NodeId;

/// Nodes of one shared subscription (`$share/{group}/{filter}`) that match a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedGroupNodes {
    pub group: String,
    pub filter: String,
    /// Nodes with at least one member of the group, ascending.
    pub nodes: Vec<NodeId>,
}

#[derive(Debug, Default)]
struct TrieNode {
    parent: usize,
    /// The level this node is reached by from its parent.
    level: String,
    children: HashMap<String, usize>,
    /// The full filter, set while this node holds any interest.
    filter: Option<String>,
    /// Nodes exporting the plain filter.
    plain: BTreeSet<NodeId>,
    /// Group -> nodes exporting `$share/{group}/{filter}`.
    shared: BTreeMap<String, BTreeSet<NodeId>>,
}

impl TrieNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plain.is_empty() && self.shared.is_empty()
    }
}

const ROOT: usize = 0;

/// A trie of filters over an arena; inserts, removes and matches are iterative, so a deep filter
/// cannot overflow the stack.
#[derive(Debug)]
pub struct RouteMatcher {
    nodes: Vec<TrieNode>,
    free: Vec<usize>,
}

impl Default for RouteMatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteMatcher {
    pub fn new() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
            free: Vec::new(),
        }
    }

    fn alloc(&mut self, parent: usize, level: &str) -> usize {
        let node = TrieNode {
            parent,
            level: level.to_string(),
            ..TrieNode::default()
        };
        if let Some(index) = self.free.pop() {
            self.nodes[index] = node;
            index
        } else {
            self.nodes.push(node);
            self.nodes.len() - 1
        }
    }

    /// Records that `origin` exports `entry`.
    pub fn insert(&mut self, origin: NodeId, entry: &RouteEntry) {
        let filter = entry.filter();
        let mut at = ROOT;
        for level in filter.split('/') {
            at = match self.nodes[at].children.get(level) {
                Some(&child) => child,
                None => {
                    let child = self.alloc(at, level);
                    self.nodes[at].children.insert(level.to_string(), child);
                    child
                }
            };
        }
        let node = &mut self.nodes[at];
        if node.filter.is_none() {
            node.filter = Some(filter.to_string());
        }
        match entry {
            RouteEntry::Filter(_) => {
                node.plain.insert(origin);
            }
            RouteEntry::Shared { group, .. } => {
                node.shared.entry(group.clone()).or_default().insert(origin);
            }
        }
    }

    /// Forgets that `origin` exports `entry` and prunes emptied trie nodes.
    pub fn remove(&mut self, origin: NodeId, entry: &RouteEntry) {
        let mut at = ROOT;
        for level in entry.filter().split('/') {
            match self.nodes[at].children.get(level) {
                Some(&child) => at = child,
                None => return,
            }
        }
        let node = &mut self.nodes[at];
        match entry {
            RouteEntry::Filter(_) => {
                node.plain.remove(&origin);
            }
            RouteEntry::Shared { group, .. } => {
                if let Some(nodes) = node.shared.get_mut(group) {
                    nodes.remove(&origin);
                    if nodes.is_empty() {
                        node.shared.remove(group);
                    }
                }
            }
        }
        if node.plain.is_empty() && node.shared.is_empty() {
            node.filter = None;
        }
        while at != ROOT && self.nodes[at].is_empty() {
            let parent = self.nodes[at].parent;
            let level = std::mem::take(&mut self.nodes[at].level);
            self.nodes[parent].children.remove(&level);
            self.free.push(at);
            at = parent;
        }
    }

    /// Visits every trie node whose filter matches `topic` (MQTT 4.7 wildcard rules).
    fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&TrieNode)) {
        let levels: SmallVec<[&str; 16]> = topic.split('/').collect();
        // Wildcards at the first level do not match topics starting with '$' [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        let mut stack: SmallVec<[(usize, usize); 32]> = SmallVec::new();
        stack.push((ROOT, 0));
        while let Some((at, depth)) = stack.pop() {
            let node = &self.nodes[at];
            let wildcards_ok = !(dollar && depth == 0);
            if wildcards_ok {
                // "a/#" also matches "a" [MQTT-4.7.1-2].
                if let Some(&hash) = node.children.get("#") {
                    visit(&self.nodes[hash]);
                }
            }
            if depth == levels.len() {
                visit(node);
                continue;
            }
            if let Some(&child) = node.children.get(levels[depth]) {
                stack.push((child, depth + 1));
            }
            if wildcards_ok {
                if let Some(&plus) = node.children.get("+") {
                    stack.push((plus, depth + 1));
                }
            }
        }
    }

    /// Peer nodes with a plain (non-shared) filter matching `topic`, ascending, each once: a
    /// publish is forwarded once per node and re-matched there.
    pub fn interested_nodes(&self, topic: &str) -> SmallVec<[NodeId; 8]> {
        let mut out: SmallVec<[NodeId; 8]> = SmallVec::new();
        self.for_each_match(topic, |node| out.extend(node.plain.iter().copied()));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Shared subscriptions matching `topic` with the nodes that have members of each.
    pub fn shared_groups(&self, topic: &str) -> Vec<SharedGroupNodes> {
        let mut out = Vec::new();
        self.for_each_match(topic, |node| {
            let Some(filter) = node.filter.as_ref() else {
                return;
            };
            for (group, nodes) in &node.shared {
                out.push(SharedGroupNodes {
                    group: group.clone(),
                    filter: filter.clone(),
                    nodes: nodes.iter().copied().collect(),
                });
            }
        });
        out.sort_by(|a, b| (&a.group, &a.filter).cmp(&(&b.group, &b.filter)));
        out
    }

    /// Live trie nodes (for tests and metrics).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

/// Reference MQTT match of one filter against one topic; the property tests compare the trie
/// against it.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    let dollar = topic.starts_with('$');
    for (depth, level) in filter.split('/').enumerate() {
        if level == "#" {
            return !(dollar && depth == 0);
        }
        match topic_levels.next() {
            None => return false,
            Some(t) => {
                if level == "+" {
                    if dollar && depth == 0 {
                        return false;
                    }
                } else if level != t {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> RouteEntry {
        RouteEntry::Filter(s.into())
    }

    #[test]
    fn wildcards() {
        let mut m = RouteMatcher::new();
        m.insert(NodeId(2), &f("a/+/c"));
        m.insert(NodeId(3), &f("a/#"));
        m.insert(NodeId(4), &f("#"));
        assert_eq!(
            m.interested_nodes("a/b/c").as_slice(),
            &[NodeId(2), NodeId(3), NodeId(4)]
        );
        // [MQTT-4.7.1-2] the multi-level wildcard matches the parent level too.
        assert_eq!(m.interested_nodes("a").as_slice(), &[NodeId(3), NodeId(4)]);
        // [MQTT-4.7.2-1] no wildcard at the first level matches a '$' topic.
        assert!(m.interested_nodes("$SYS/x").is_empty());
    }

    #[test]
    fn remove_prunes() {
        let mut m = RouteMatcher::new();
        m.insert(NodeId(2), &f("a/b/c"));
        let shared = RouteEntry::Shared {
            group: "g".into(),
            filter: "a/b/c".into(),
        };
        m.insert(NodeId(3), &shared);
        assert_eq!(m.shared_groups("a/b/c")[0].nodes, vec![NodeId(3)]);
        m.remove(NodeId(2), &f("a/b/c"));
        assert!(m.interested_nodes("a/b/c").is_empty());
        assert_eq!(m.shared_groups("a/b/c").len(), 1);
        m.remove(NodeId(3), &shared);
        assert_eq!(m.node_count(), 1);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$s".to_string()),
            Just(String::new())
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(filter_level(), 1..4), any::<bool>()).prop_map(
            |(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                levels.join("/")
            },
        )
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    proptest! {
        // Trie match = brute-force match, also after removals.
        #[test]
        fn trie_matches_brute_force(
            filters in prop::collection::vec((filter(), 1u64..4), 0..24),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            topics in prop::collection::vec(topic(), 1..8),
        ) {
            let mut m = RouteMatcher::new();
            let mut live: Vec<(String, u64)> = Vec::new();
            for (filter, node) in &filters {
                if !live.contains(&(filter.clone(), *node)) {
                    m.insert(NodeId(*node), &f(filter));
                    live.push((filter.clone(), *node));
                }
            }
            for index in removed {
                if live.is_empty() { break; }
                let (filter, node) = live.remove(index.index(live.len()));
                m.remove(NodeId(node), &f(&filter));
            }
            for topic in topics {
                let mut want: Vec<NodeId> = live.iter()
                    .filter(|(filter, _)| filter_matches(filter, &topic))
                    .map(|(_, node)| NodeId(*node)).collect();
                want.sort_unstable();
                want.dedup();
                prop_assert_eq!(m.interested_nodes(&topic).to_vec(), want, "topic {}", topic);
            }
        }
    }
}
