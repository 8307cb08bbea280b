//! A topic trie: the map from topic filters (or, for retained messages, topic names) to values.
//!
//! One tree of levels split on `/`. Wildcard children (`+`, `#`) sit in their own slots so a match
//! walks at most three children per level. Nodes live in an arena (`Vec`) with a free list, so
//! subscribe/unsubscribe churn does not fragment the heap, and a node's children are a small inline
//! vector that turns into a hash map only for wide levels (e.g. `vehicle/<id>`), which keeps the
//! per-subscription cost low for the common "one unique filter per vehicle" shape.
//!
//! Two kinds of lookup:
//! - [`TopicTrie::for_each_match`]: stored keys are *filters*, the query is a *name* (routing).
//! - [`TopicTrie::for_each_name_matching`]: stored keys are *names*, the query is a *filter*
//!   (retained messages delivered on subscribe).
//!
//! Both apply the rule that a name starting with `$` is not matched by a filter whose first level
//! is a wildcard [MQTT-4.7.2-1].

use std::sync::Arc;

use ahash::AHashMap;
use smallvec::SmallVec;

/// Index of a node in the arena.
type NodeId = u32;

const ROOT: NodeId = 0;
/// Above this many literal children a level switches from a linear inline list to a hash map.
const CHILDREN_INLINE_MAX: usize = 8;

enum Children {
    Inline(SmallVec<[(Box<str>, NodeId); 2]>),
    Map(AHashMap<Box<str>, NodeId>),
}

impl Children {
    fn get(&self, level: &str) -> Option<NodeId> {
        match self {
            Children::Inline(list) => list.iter().find(|(k, _)| &**k == level).map(|(_, id)| *id),
            Children::Map(map) => map.get(level).copied(),
        }
    }

    fn insert(&mut self, level: &str, id: NodeId) {
        match self {
            Children::Inline(list) => {
                if list.len() < CHILDREN_INLINE_MAX {
                    list.push((level.into(), id));
                } else {
                    let mut map: AHashMap<Box<str>, NodeId> = list.drain(..).collect();
                    map.insert(level.into(), id);
                    *self = Children::Map(map);
                }
            }
            Children::Map(map) => {
                map.insert(level.into(), id);
            }
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Inline(list) => list.retain(|(k, _)| &**k != level),
            Children::Map(map) => {
                map.remove(level);
                if map.len() <= CHILDREN_INLINE_MAX / 2 {
                    let list = map.drain().collect();
                    *self = Children::Inline(list);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Inline(list) => list.is_empty(),
            Children::Map(map) => map.is_empty(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&str, NodeId)) {
        match self {
            Children::Inline(list) => list.iter().for_each(|(k, id)| f(k, *id)),
            Children::Map(map) => map.iter().for_each(|(k, id)| f(k, *id)),
        }
    }
}

struct Node<V> {
    /// Literal next levels.
    children: Children,
    /// The `+` child, if any filter continues with a single-level wildcard here.
    plus: Option<NodeId>,
    /// The `#` child, if any filter ends with a multi-level wildcard here.
    hash: Option<NodeId>,
    value: Option<V>,
    /// Parent and own level, so removal can prune empty branches. Unused for the root.
    parent: NodeId,
    level: Box<str>,
    /// True while the node is on the free list.
    free: bool,
}

impl<V> Node<V> {
    fn new(parent: NodeId, level: &str) -> Self {
        Node {
            children: Children::Inline(SmallVec::new()),
            plus: None,
            hash: None,
            value: None,
            parent,
            level: level.into(),
            free: false,
        }
    }

    fn is_prunable(&self) -> bool {
        self.value.is_none()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.children.is_empty()
    }
}

/// A map from topic filters (or names) to `V`, matched level by level.
pub struct TopicTrie<V> {
    nodes: Vec<Node<V>>,
    free_list: Vec<NodeId>,
    len: usize,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TopicTrie<V> {
    pub fn new() -> Self {
        TopicTrie {
            nodes: vec![Node::new(ROOT, "")],
            free_list: Vec::new(),
            len: 0,
        }
    }

    /// Number of keys holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, key: &str) -> Option<NodeId> {
        let mut node = ROOT;
        for level in key.split('/') {
            let n = &self.nodes[node as usize];
            node = match level {
                "+" => n.plus?,
                "#" => n.hash?,
                _ => n.children.get(level)?,
            };
        }
        Some(node)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key)
            .and_then(|id| self.nodes[id as usize].value.as_ref())
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let id = self.find(key)?;
        self.nodes[id as usize].value.as_mut()
    }

    fn alloc(&mut self, parent: NodeId, level: &str) -> NodeId {
        if let Some(id) = self.free_list.pop() {
            self.nodes[id as usize] = Node::new(parent, level);
            id
        } else {
            // The arena index space is u32; a broker with 4 billion distinct filter levels in one
            // shard has run out of memory long before this.
            let id = NodeId::try_from(self.nodes.len()).unwrap_or(NodeId::MAX);
            self.nodes.push(Node::new(parent, level));
            id
        }
    }

    /// The value stored at `key`, inserting `make()` if there is none.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let mut node = ROOT;
        for level in key.split('/') {
            let existing = {
                let n = &self.nodes[node as usize];
                match level {
                    "+" => n.plus,
                    "#" => n.hash,
                    _ => n.children.get(level),
                }
            };
            node = match existing {
                Some(id) => id,
                None => {
                    let id = self.alloc(node, level);
                    let n = &mut self.nodes[node as usize];
                    match level {
                        "+" => n.plus = Some(id),
                        "#" => n.hash = Some(id),
                        _ => n.children.insert(level, id),
                    }
                    id
                }
            };
        }
        let n = &mut self.nodes[node as usize];
        if n.value.is_none() {
            self.len += 1;
        }
        n.value.get_or_insert_with(make)
    }

    /// Stores `value` at `key`, returning the previous one.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        if let Some(slot) = self.get_mut(key) {
            return Some(std::mem::replace(slot, value));
        }
        self.get_or_insert_with(key, || value);
        None
    }

    /// Removes the value at `key` and prunes the branch that held only it.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let id = self.find(key)?;
        let value = self.nodes[id as usize].value.take()?;
        self.len -= 1;
        let mut node = id;
        while node != ROOT && self.nodes[node as usize].is_prunable() {
            let parent = self.nodes[node as usize].parent;
            let level = std::mem::take(&mut self.nodes[node as usize].level);
            {
                let p = &mut self.nodes[parent as usize];
                match &*level {
                    "+" => p.plus = None,
                    "#" => p.hash = None,
                    _ => p.children.remove(&level),
                }
            }
            self.nodes[node as usize].free = true;
            self.free_list.push(node);
            node = parent;
        }
        Some(value)
    }

    /// Calls `f` with every value whose key is a *filter* matching the topic *name* `topic`.
    ///
    /// Iterative (an explicit stack, no recursion per level): the number of levels is the
    /// client's to choose, the shard's stack is not.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        let dollar = topic.starts_with('$');
        let mut stack: SmallVec<[(NodeId, &str, bool); 8]> = SmallVec::new();
        stack.push((ROOT, topic, true));
        while let Some((node, rest, at_root)) = stack.pop() {
            let n = &self.nodes[node as usize];
            // `$` topics are not matched by wildcards at the first level [MQTT-4.7.2-1].
            let wildcards_allowed = !(at_root && dollar);
            // `#` matches the parent level too ("a/#" matches "a"), and everything below.
            if wildcards_allowed {
                if let Some(v) = n.hash.and_then(|h| self.nodes[h as usize].value.as_ref()) {
                    f(v);
                }
            }
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let plus = if wildcards_allowed { n.plus } else { None };
            for child in [n.children.get(level), plus].into_iter().flatten() {
                match next {
                    Some(tail) => stack.push((child, tail, false)),
                    None => {
                        let c = &self.nodes[child as usize];
                        if let Some(v) = &c.value {
                            f(v);
                        }
                        // "a/#" also matches "a": the `#` child of the last level.
                        if let Some(v) = c.hash.and_then(|h| self.nodes[h as usize].value.as_ref())
                        {
                            f(v);
                        }
                    }
                }
            }
        }
    }

    /// Calls `f` with every value whose key is a topic *name* matched by the *filter* `filter`.
    /// Iterative, like [`TopicTrie::for_each_match`].
    pub fn for_each_name_matching<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a str, &'a V))
    where
        V: HasName,
    {
        let mut stack: Vec<(NodeId, &str, bool)> = vec![(ROOT, filter, true)];
        while let Some((node, rest, at_root)) = stack.pop() {
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let n = &self.nodes[node as usize];
            let mut step = |child: NodeId, f: &mut dyn FnMut(&'a str, &'a V)| match next {
                Some(tail) => stack.push((child, tail, false)),
                None => {
                    if let Some(v) = &self.nodes[child as usize].value {
                        f(v.name(), v);
                    }
                }
            };
            match level {
                "#" => {
                    // The parent level itself ("a/#" matches "a"), unless this is the root.
                    if !at_root {
                        if let Some(v) = &n.value {
                            f(v.name(), v);
                        }
                    }
                    n.children.for_each(|k, c| {
                        if !(at_root && k.starts_with('$')) {
                            self.all_below(c, &mut f);
                        }
                    });
                }
                "+" => n.children.for_each(|k, c| {
                    if !(at_root && k.starts_with('$')) {
                        step(c, &mut f);
                    }
                }),
                _ => {
                    if let Some(c) = n.children.get(level) {
                        step(c, &mut f);
                    }
                }
            }
        }
    }

    fn all_below<'a>(&'a self, node: NodeId, f: &mut impl FnMut(&'a str, &'a V))
    where
        V: HasName,
    {
        // Iterative, so a deep topic tree cannot overflow the shard's stack.
        let mut stack: Vec<NodeId> = vec![node];
        while let Some(id) = stack.pop() {
            let n = &self.nodes[id as usize];
            if let Some(v) = &n.value {
                f(v.name(), v);
            }
            n.children.for_each(|_, c| stack.push(c));
        }
    }

    /// Every stored value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.nodes
            .iter()
            .filter(|n| !n.free)
            .filter_map(|n| n.value.as_ref())
    }
}

/// Values of a name-keyed trie (retained messages) know their own full topic name.
pub trait HasName {
    fn name(&self) -> &str;
}

/// Topic filters → `V`, with filters free of wildcards in a hash map (one probe per publish) and
/// only wildcard filters in the trie. Most fleet subscriptions are exact (`vehicle/<id>/command`),
/// so this keeps both the match cost and the memory per subscription low. Exact keys are
/// `Arc<str>` so the caller's copy of the filter (a session's subscription, a route change) and
/// the key are one allocation.
pub struct TopicMap<V> {
    exact: AHashMap<Arc<str>, V>,
    wild: TopicTrie<V>,
}

impl<V> Default for TopicMap<V> {
    fn default() -> Self {
        TopicMap {
            exact: AHashMap::new(),
            wild: TopicTrie::new(),
        }
    }
}

fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

impl<V> TopicMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wild.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        if has_wildcard(filter) {
            self.wild.get(filter)
        } else {
            self.exact.get(filter)
        }
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        if has_wildcard(filter) {
            self.wild.get_mut(filter)
        } else {
            self.exact.get_mut(filter)
        }
    }

    /// The value for `filter`, inserted by `make` if missing; an exact filter's key shares
    /// `filter`'s allocation.
    pub fn get_or_insert_with(&mut self, filter: &Arc<str>, make: impl FnOnce() -> V) -> &mut V {
        if has_wildcard(filter) {
            self.wild.get_or_insert_with(filter, make)
        } else {
            self.exact.entry(filter.clone()).or_insert_with(make)
        }
    }

    pub fn remove(&mut self, filter: &str) -> Option<V> {
        if has_wildcard(filter) {
            self.wild.remove(filter)
        } else {
            self.exact.remove(filter)
        }
    }

    /// Calls `f` with every value whose filter matches the topic name `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        if let Some(v) = self.exact.get(topic) {
            f(v);
        }
        if !self.wild.is_empty() {
            self.wild.for_each_match(topic, f);
        }
    }
}
