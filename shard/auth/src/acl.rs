//! Topic authorization: Mosquitto's ACL file syntax, the `[acl] deny` list and token ACL claims.
//!
//! # File syntax (Mosquitto's `acl_file`)
//! ```text
//! # comment
//! topic read $SYS/#            # before any `user` line: applies to anonymous clients only
//! user alice                   # the following `topic` lines are alice's
//! topic readwrite fleet/alice/#
//! topic deny fleet/alice/secret
//! pattern readwrite vehicle/%c/#   # `pattern` lines apply to every client, wherever they stand
//! pattern read users/%u/inbox
//! ```
//! The access word is `read`, `write`, `readwrite` or `deny`; without one a rule is `readwrite`.
//! `read` grants SUBSCRIBE and delivery, `write` grants PUBLISH.
//!
//! # Semantics
//! - Deny rules win over allow rules whatever their order in the file (Mosquitto stops at the
//!   first matching rule; this is stricter).
//! - SUBSCRIBE of a filter is allowed only if every topic the filter can match is allowed: the
//!   filter (after stripping `$share/<group>/`) must lie within one allow rule, level by level
//!   with wildcards, and overlap no deny rule. So `vehicle/+/speed`, `vehicle/#`, `#` and
//!   `+/+/speed` are all refused to a client that may read only `vehicle/<its id>/#`.
//! - Delivery (including retained messages) is checked again per topic with
//!   [`Acl::check_receive`], so a grant that changes on reload cannot leak either.
//! - `$`-topics (`$SYS/...`) are granted only by a rule whose first level names them; `#` and
//!   `+/...` never reach them.
//! - `%c` / `%u` substitute the client id / username into `pattern` lines and token claims. A
//!   value that is empty, starts with `$` or contains `/`, `+`, `#` would widen or move the
//!   pattern: allow patterns using it grant nothing and deny patterns using it deny everything.
//!   With an ACL file loaded, a client id or username containing `+` or `#` is denied every topic
//!   (as Mosquitto does). A pattern with `%u` does not apply to a client without a username.
//! - Without an ACL file every topic is allowed except the `[acl] deny` filters (which deny
//!   SUBSCRIBE and delivery but not PUBLISH, as the broker's older rule did). An identity carrying
//!   a token ACL claim is default-deny: only the claim's and the file's allow rules grant it.

use std::path::Path;

use ahash::AHashMap;

use crate::decision::{Access, Identity};
use crate::topic::{self, RuleLevel};

/// Largest ACL file read.
pub const ACL_FILE_LEN_MAX: u64 = 64 * 1024 * 1024;
/// Most rules one ACL file may hold.
pub const ACL_RULES_MAX: usize = 1_000_000;
/// Most rules a token's ACL claim may carry: each check scans them.
pub const CLAIM_RULES_MAX: usize = 256;
/// Most levels one rule may have.
pub const RULE_LEVELS_MAX: usize = 64;

/// Why an ACL file or rule list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read acl file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("acl file {path} is {len} bytes, more than the {max} allowed")]
    TooLarge { path: String, len: u64, max: u64 },
    #[error("acl file has more than {max} rules")]
    TooManyRules { max: usize },
    #[error("acl file line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("acl.deny rule {index} ({rule:?}) is not a valid topic filter")]
    DenyRule { index: usize, rule: String },
}

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// One piece of a rule level: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

/// One level of a rule as written, placeholders unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Plus,
    Hash,
    Literal(Vec<Piece>),
}

/// The client values placeholders resolve to; both already checked safe.
struct Vars<'a> {
    client_id: &'a str,
    /// Empty for a client without a username; rules using `%u` are skipped for it before this.
    username: &'a str,
}

impl<'a> Vars<'a> {
    fn new(client_id: &'a str, username: Option<&'a str>) -> Vars<'a> {
        Vars {
            client_id,
            username: username.unwrap_or(""),
        }
    }
}

impl RuleLevel<Vars<'_>> for Level {
    fn is_plus(&self) -> bool {
        matches!(self, Level::Plus)
    }
    fn is_hash(&self) -> bool {
        matches!(self, Level::Hash)
    }
    fn literal_eq(&self, vars: &Vars<'_>, text: &str) -> bool {
        let Level::Literal(pieces) = self else {
            return false;
        };
        let mut rest = text;
        for piece in pieces {
            let value = match piece {
                Piece::Text(text) => text.as_str(),
                Piece::ClientId => vars.client_id,
                Piece::Username => vars.username,
            };
            match rest.strip_prefix(value) {
                Some(tail) => rest = tail,
                None => return false,
            }
        }
        rest.is_empty()
    }
    fn literal_starts_with_dollar(&self, _vars: &Vars<'_>) -> bool {
        // Placeholder values never start with '$' (see `value_is_safe`), so only text counts.
        match self {
            Level::Literal(pieces) => {
                matches!(pieces.first(), Some(Piece::Text(text)) if text.starts_with('$'))
            }
            _ => false,
        }
    }
}

/// One ACL rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    effect: Effect,
    /// Applies to SUBSCRIBE and delivery.
    read: bool,
    /// Applies to PUBLISH.
    write: bool,
    levels: Vec<Level>,
    uses_client_id: bool,
    uses_username: bool,
}

impl Rule {
    /// Parses `topic` as a rule; `placeholders` enables `%c` / `%u` (pattern lines, claims).
    fn parse(
        effect: Effect,
        read: bool,
        write: bool,
        topic: &str,
        placeholders: bool,
    ) -> Result<Rule, &'static str> {
        if !topic::is_valid_filter(topic) {
            return Err("topic is not a valid topic filter");
        }
        let mut levels = Vec::new();
        let (mut uses_client_id, mut uses_username) = (false, false);
        for text in topic.split('/') {
            if levels.len() >= RULE_LEVELS_MAX {
                return Err("topic has more than 64 levels");
            }
            let level = match text {
                "+" => Level::Plus,
                "#" => Level::Hash,
                _ if placeholders => {
                    let pieces = split_placeholders(text);
                    uses_client_id |= pieces.contains(&Piece::ClientId);
                    uses_username |= pieces.contains(&Piece::Username);
                    Level::Literal(pieces)
                }
                _ => Level::Literal(vec![Piece::Text(text.to_owned())]),
            };
            levels.push(level);
        }
        Ok(Rule {
            effect,
            read,
            write,
            levels,
            uses_client_id,
            uses_username,
        })
    }
}

fn split_placeholders(level: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = level.chars().peekable();
    while let Some(ch) = chars.next() {
        let placeholder = match (ch, chars.peek()) {
            ('%', Some('c')) => Some(Piece::ClientId),
            ('%', Some('u')) => Some(Piece::Username),
            _ => None,
        };
        match placeholder {
            Some(piece) => {
                chars.next();
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
            }
            None => text.push(ch),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// A value that keeps a pattern's shape when substituted: not empty, no level separator or
/// wildcard, no `$` start (which would make `%c/#` reach `$SYS/#`).
fn value_is_safe(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('$') && !value.contains(['/', '+', '#', '\0'])
}

/// Allow rules from a token's ACL claim. Shape (EMQX's `acl` claim):
/// `{"pub": ["filter", ..], "sub": ["filter", ..], "all": ["filter", ..]}`: `pub` grants
/// PUBLISH, `sub` SUBSCRIBE and delivery, `all` both; filters may use `%c` and `%u`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimAcl {
    rules: Vec<Rule>,
}

impl ClaimAcl {
    /// Parses the claim's JSON value; the error says which part is wrong.
    pub fn from_json(value: &serde_json::Value) -> Result<ClaimAcl, &'static str> {
        let object = value.as_object().ok_or("acl claim is not an object")?;
        let mut rules = Vec::new();
        for (key, list) in object {
            let (read, write) = match key.as_str() {
                "pub" => (false, true),
                "sub" => (true, false),
                "all" => (true, true),
                _ => return Err("acl claim has a key other than pub, sub, all"),
            };
            let list = list.as_array().ok_or("acl claim entry is not an array")?;
            for filter in list {
                let filter = filter.as_str().ok_or("acl claim filter is not a string")?;
                if rules.len() >= CLAIM_RULES_MAX {
                    return Err("acl claim has more than 256 filters");
                }
                rules.push(Rule::parse(Effect::Allow, read, write, filter, true)?);
            }
        }
        Ok(ClaimAcl { rules })
    }
}

/// What is being checked.
#[derive(Clone, Copy)]
enum Operation<'a> {
    Subscribe(&'a str),
    Publish(&'a str),
    Receive(&'a str),
}

/// How a rule's placeholders resolve for one identity.
enum Resolution {
    /// Resolved; match it.
    Apply,
    /// The rule is not about this client (`%u` and no username).
    Skip,
    /// A value would widen the pattern.
    Unsafe,
}

/// The authorization policy. Immutable: a reload builds a new one and the caller swaps it.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Set when an ACL file is loaded: anything not granted is refused.
    default_deny: bool,
    /// `[acl] deny` filters: deny SUBSCRIBE and delivery to everybody.
    global: Vec<Rule>,
    /// `topic` lines before the first `user` line: clients without a username.
    anonymous: Vec<Rule>,
    /// `topic` lines under `user <name>`.
    users: AHashMap<String, Vec<Rule>>,
    /// `pattern` lines: every client.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Everything allowed: the policy without an ACL file or deny list.
    pub fn allow_all() -> Acl {
        Acl::default()
    }

    /// Reads and parses an ACL file; the result denies whatever the file does not grant.
    pub fn load_file(path: &Path) -> Result<Acl, AclError> {
        let display = path.display().to_string();
        let read_err = |source| AclError::Read {
            path: display.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > ACL_FILE_LEN_MAX {
            return Err(AclError::TooLarge {
                path: display,
                len,
                max: ACL_FILE_LEN_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Acl::parse(&text)
    }

    /// Parses ACL file text (see the module docs for the syntax).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl {
            default_deny: true,
            ..Acl::default()
        };
        let mut current_user: Option<String> = None;
        let mut count = 0usize;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_err = |reason| AclError::Line {
                line: index + 1,
                reason,
            };
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(line_err("user without a name"));
                    }
                    current_user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    count += 1;
                    if count > ACL_RULES_MAX {
                        return Err(AclError::TooManyRules { max: ACL_RULES_MAX });
                    }
                    let is_pattern = keyword == "pattern";
                    let rule = parse_rule_line(rest, is_pattern).map_err(line_err)?;
                    if is_pattern {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                _ => return Err(line_err("expected user, topic or pattern")),
            }
        }
        Ok(acl)
    }

    /// Adds the `[acl] deny` filters: nobody may subscribe to a filter overlapping one, nor
    /// receive a message on a topic one matches.
    pub fn with_deny_filters(mut self, filters: &[String]) -> Result<Acl, AclError> {
        for (index, filter) in filters.iter().enumerate() {
            let rule = Rule::parse(Effect::Deny, true, false, filter, false).map_err(|_| {
                AclError::DenyRule {
                    index,
                    rule: filter.clone(),
                }
            })?;
            self.global.push(rule);
        }
        Ok(self)
    }

    /// Whether an ACL file is loaded (anything not granted is refused).
    pub fn is_default_deny(&self) -> bool {
        self.default_deny
    }

    /// SUBSCRIBE of `filter` as sent (a `$share/<group>/` prefix is stripped here).
    pub fn check_subscribe(&self, identity: &Identity, filter: &str) -> Access {
        let Some(inner) = topic::strip_share(filter) else {
            return Access::Deny;
        };
        if !topic::is_valid_filter(inner) {
            return Access::Deny;
        }
        // The broker's older `[acl] deny` rule also matched the filter as sent, so a rule like
        // `$share/#` keeps refusing every shared subscription.
        if inner.len() != filter.len() && self.global_denies(filter) {
            return Access::Deny;
        }
        self.check(identity, Operation::Subscribe(inner))
    }

    /// PUBLISH to topic name `topic`.
    pub fn check_publish(&self, identity: &Identity, topic: &str) -> Access {
        if !topic::is_valid_name(topic) {
            return Access::Deny;
        }
        self.check(identity, Operation::Publish(topic))
    }

    /// Delivery of a message on `topic` (live or retained) to this client.
    pub fn check_receive(&self, identity: &Identity, topic: &str) -> Access {
        if !topic::is_valid_name(topic) {
            return Access::Deny;
        }
        self.check(identity, Operation::Receive(topic))
    }

    fn global_denies(&self, full_filter: &str) -> bool {
        self.global.iter().any(|rule| {
            topic::filters_overlap_levels(full_filter, &rule.levels, &Vars::new("", None))
        })
    }

    fn check(&self, identity: &Identity, operation: Operation<'_>) -> Access {
        let client_id = identity.client_id.as_str();
        let username = identity.username.as_deref();
        let strict = self.default_deny || identity.claim_acl.is_some();
        if strict
            && (client_id.contains(['+', '#']) || username.is_some_and(|u| u.contains(['+', '#'])))
        {
            return Access::Deny;
        }
        let own = match username {
            Some(name) => self.users.get(name).map(Vec::as_slice).unwrap_or(&[]),
            None => self.anonymous.as_slice(),
        };
        let claim = identity
            .claim_acl
            .as_deref()
            .map(|claim| claim.rules.as_slice())
            .unwrap_or(&[]);
        let rules = || {
            self.global
                .iter()
                .chain(own)
                .chain(&self.patterns)
                .chain(claim)
        };
        let is_read = !matches!(operation, Operation::Publish(_));
        let applies = |rule: &&Rule| if is_read { rule.read } else { rule.write };
        // Deny rules first: any hit refuses, whatever the order.
        for rule in rules()
            .filter(|rule| rule.effect == Effect::Deny)
            .filter(applies)
        {
            match resolve(rule, client_id, username) {
                Resolution::Skip => {}
                Resolution::Unsafe => return Access::Deny,
                Resolution::Apply => {
                    if hits(rule, client_id, username, operation) {
                        return Access::Deny;
                    }
                }
            }
        }
        if !strict {
            return Access::Allow;
        }
        for rule in rules()
            .filter(|rule| rule.effect == Effect::Allow)
            .filter(applies)
        {
            if let Resolution::Apply = resolve(rule, client_id, username) {
                if covers(rule, client_id, username, operation) {
                    return Access::Allow;
                }
            }
        }
        Access::Deny
    }
}

fn parse_rule_line(rest: &str, placeholders: bool) -> Result<Rule, &'static str> {
    if rest.is_empty() {
        return Err("empty topic");
    }
    // As Mosquitto: a first word followed by more text is the access type; a lone word is the
    // topic itself, with readwrite access.
    let (access, topic) = match rest.split_once([' ', '\t']) {
        Some((access, topic)) => (Some(access), topic.trim()),
        None => (None, rest),
    };
    let (effect, read, write) = match access {
        None | Some("readwrite") => (Effect::Allow, true, true),
        Some("read") => (Effect::Allow, true, false),
        Some("write") => (Effect::Allow, false, true),
        Some("deny") => (Effect::Deny, true, true),
        Some(_) => return Err("access must be read, write, readwrite or deny"),
    };
    Rule::parse(effect, read, write, topic, placeholders)
}

fn resolve(rule: &Rule, client_id: &str, username: Option<&str>) -> Resolution {
    if rule.uses_username {
        match username {
            None => return Resolution::Skip,
            Some(name) if !value_is_safe(name) => return Resolution::Unsafe,
            Some(_) => {}
        }
    }
    if rule.uses_client_id && !value_is_safe(client_id) {
        return Resolution::Unsafe;
    }
    Resolution::Apply
}

/// A deny rule hits when it shares any topic with the operation.
fn hits(rule: &Rule, client_id: &str, username: Option<&str>, operation: Operation<'_>) -> bool {
    let vars = &Vars::new(client_id, username);
    match operation {
        Operation::Subscribe(filter) => topic::filters_overlap_levels(filter, &rule.levels, vars),
        Operation::Publish(name) | Operation::Receive(name) => {
            topic::name_matches_levels(&rule.levels, vars, name)
        }
    }
}

/// An allow rule covers the operation when it includes every topic the operation can touch.
fn covers(rule: &Rule, client_id: &str, username: Option<&str>, operation: Operation<'_>) -> bool {
    let vars = &Vars::new(client_id, username);
    match operation {
        Operation::Subscribe(filter) => topic::filter_within_levels(filter, &rule.levels, vars),
        Operation::Publish(name) | Operation::Receive(name) => {
            topic::name_matches_levels(&rule.levels, vars, name)
        }
    }
}
