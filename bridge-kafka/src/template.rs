//! Topic templates: `telemetry.{2}`, `fleet-{client_id}`, `vehicle/{key}/command`.
//!
//! Parsed once at configuration time into parts so expansion on the hot path is a single pass
//! into a pre-sized `String`.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Copied as-is.
    Literal(String),
    /// The N-th (1-based) level of the MQTT topic.
    Level(usize),
    /// The publishing client's identifier.
    ClientId,
    /// The Kafka record key (inbound rules only).
    Key,
}

/// Which placeholders a template may use, depending on the rule direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// MQTT→Kafka topic: `{N}` and `{client_id}`.
    Outbound,
    /// Kafka→MQTT topic: `{key}`.
    Inbound,
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
    #[error("unclosed '{{' in template")]
    Unclosed,
    #[error("stray '}}' in template")]
    StrayClose,
    #[error("unknown placeholder {{{0}}}: expected {1}")]
    UnknownPlaceholder(String, &'static str),
    #[error("placeholder {{0}} is invalid: levels count from 1")]
    ZeroLevel,
}

/// Why expanding a template for one message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("topic has no level {0}")]
    MissingLevel(usize),
    #[error("record has no key")]
    MissingKey,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<TemplatePart>,
    literal_len: usize,
}

/// What a template expands from.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateInput<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    pub key: Option<&'a str>,
}

impl Template {
    /// Parses `text`, accepting only the placeholders that `kind` allows.
    pub fn parse(text: &str, kind: TemplateKind) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let expected = match kind {
            TemplateKind::Outbound => "{1}, {2}, ... or {client_id}",
            TemplateKind::Inbound => "{key}",
        };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(index) = rest.find(['{', '}']) {
            literal.push_str(&rest[..index]);
            if rest.as_bytes()[index] == b'}' {
                return Err(TemplateError::StrayClose);
            }
            let after = &rest[index + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..close];
            if name.contains('{') {
                return Err(TemplateError::Unclosed);
            }
            let part = match (kind, name) {
                (TemplateKind::Outbound, "client_id") => TemplatePart::ClientId,
                (TemplateKind::Inbound, "key") => TemplatePart::Key,
                (TemplateKind::Outbound, digits)
                    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    match digits.parse::<usize>() {
                        Ok(0) => return Err(TemplateError::ZeroLevel),
                        Ok(level) => TemplatePart::Level(level),
                        Err(_) => {
                            return Err(TemplateError::UnknownPlaceholder(
                                digits.to_owned(),
                                expected,
                            ))
                        }
                    }
                }
                (_, other) => {
                    return Err(TemplateError::UnknownPlaceholder(
                        other.to_owned(),
                        expected,
                    ))
                }
            };
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        let literal_len = parts
            .iter()
            .map(|part| match part {
                TemplatePart::Literal(text) => text.len(),
                _ => 0,
            })
            .sum();
        Ok(Self { parts, literal_len })
    }

    /// The parsed parts, in order.
    pub fn parts(&self) -> &[TemplatePart] {
        &self.parts
    }

    /// The highest topic level the template refers to (0 if none).
    pub fn max_level(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|part| match part {
                TemplatePart::Level(level) => Some(*level),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// True if the template has no placeholders.
    pub fn is_literal(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, TemplatePart::Literal(_)))
    }

    /// Expands the template for one message into `out` (cleared first).
    pub fn expand_into(
        &self,
        input: TemplateInput<'_>,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        out.clear();
        out.reserve(self.literal_len + input.topic.len());
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => out.push_str(text),
                TemplatePart::Level(level) => out.push_str(
                    crate::topic::level(input.topic, *level)
                        .ok_or(ExpandError::MissingLevel(*level))?,
                ),
                TemplatePart::ClientId => out.push_str(input.client_id),
                TemplatePart::Key => out.push_str(input.key.ok_or(ExpandError::MissingKey)?),
            }
        }
        Ok(())
    }

    /// Expands the template for one message.
    pub fn expand(&self, input: TemplateInput<'_>) -> Result<String, ExpandError> {
        let mut out = String::new();
        self.expand_into(input, &mut out)?;
        Ok(out)
    }
}

/// True if `name` is a legal Kafka topic name (1..=249 of `[a-zA-Z0-9._-]`, not "." or "..").
pub fn is_valid_kafka_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(topic: &'a str, client_id: &'a str) -> TemplateInput<'a> {
        TemplateInput {
            topic,
            client_id,
            key: None,
        }
    }

    #[test]
    fn literal_template() {
        let template = Template::parse("telemetry", TemplateKind::Outbound).unwrap();
        assert!(template.is_literal());
        assert_eq!(template.expand(input("a/b", "c")).unwrap(), "telemetry");
    }

    #[test]
    fn levels_and_client_id() {
        let template =
            Template::parse("fleet.{2}.{3}-{client_id}", TemplateKind::Outbound).unwrap();
        assert_eq!(template.max_level(), 3);
        assert_eq!(
            template
                .expand(input("vehicle/v42/telemetry", "car-7"))
                .unwrap(),
            "fleet.v42.telemetry-car-7"
        );
        assert_eq!(
            template.expand(input("vehicle/v42", "car-7")),
            Err(ExpandError::MissingLevel(3))
        );
    }

    #[test]
    fn inbound_key() {
        let template = Template::parse("vehicle/{key}/command", TemplateKind::Inbound).unwrap();
        let with_key = TemplateInput {
            key: Some("vin1"),
            ..TemplateInput::default()
        };
        assert_eq!(template.expand(with_key).unwrap(), "vehicle/vin1/command");
        assert_eq!(
            template.expand(TemplateInput::default()),
            Err(ExpandError::MissingKey)
        );
    }

    #[test]
    fn parse_errors() {
        use TemplateKind::*;
        assert_eq!(Template::parse("", Outbound), Err(TemplateError::Empty));
        assert_eq!(
            Template::parse("a{1", Outbound),
            Err(TemplateError::Unclosed)
        );
        assert_eq!(
            Template::parse("a}1", Outbound),
            Err(TemplateError::StrayClose)
        );
        assert_eq!(
            Template::parse("a{0}", Outbound),
            Err(TemplateError::ZeroLevel)
        );
        assert!(matches!(
            Template::parse("{key}", Outbound),
            Err(TemplateError::UnknownPlaceholder(name, _)) if name == "key"
        ));
        assert!(matches!(
            Template::parse("{client_id}", Inbound),
            Err(TemplateError::UnknownPlaceholder(name, _)) if name == "client_id"
        ));
        assert!(matches!(
            Template::parse("{x}", Outbound),
            Err(TemplateError::UnknownPlaceholder(name, _)) if name == "x"
        ));
    }

    #[test]
    fn kafka_topic_names() {
        assert!(is_valid_kafka_topic("telemetry.v1_a-b"));
        assert!(!is_valid_kafka_topic(""));
        assert!(!is_valid_kafka_topic(".."));
        assert!(!is_valid_kafka_topic("a/b"));
        assert!(!is_valid_kafka_topic(&"a".repeat(250)));
    }
}
