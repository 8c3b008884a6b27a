use crate::{Message, PluginError};

/// A topic (or text) template such as `fleet/{thing}/alerts`, checked once in `init` and
/// rendered per message.
///
/// Placeholders: `{thing}` (the thing the plugin resolved for the message), `{topic}` (the
/// message's whole topic), `{client_id}`, and `{level:N}` (topic level `N`, counting from 0).
/// `{{` and `}}` are literal braces.
///
/// ```
/// # use shoal_sdk::{Message, Template};
/// let t = Template::parse("fleet/{thing}/alerts/{level:2}").unwrap();
/// let msg = Message::new("fleet/t1/telemetry", "{}");
/// assert_eq!(t.render(&msg, msg.thing_or_level(1)).unwrap(), "fleet/t1/alerts/telemetry");
/// assert!(Template::parse("fleet/{nope}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Thing,
    Topic,
    ClientId,
    Level(usize),
}

impl Template {
    /// Parses `source`; an unknown placeholder or an unbalanced brace is a
    /// [`PluginError::Config`].
    pub fn parse(source: &str) -> Result<Self, PluginError> {
        let bad = |why: &str| PluginError::config(format!("template {source:?}: {why}"));
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(bad("unmatched `}`")),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(bad("unmatched `{`")),
                        }
                    }
                    let part = match name.as_str() {
                        "thing" => Part::Thing,
                        "topic" => Part::Topic,
                        "client_id" => Part::ClientId,
                        other => match other.strip_prefix("level:").map(str::parse::<usize>) {
                            Some(Ok(n)) => Part::Level(n),
                            _ => return Err(bad(&format!("unknown placeholder {{{other}}}"))),
                        },
                    };
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(part);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// Renders for `msg`, with `thing` as the value of `{thing}`. A placeholder without a value
    /// (no thing, no client id, a level the topic does not have) is a [`PluginError::Rejected`].
    pub fn render(&self, msg: &Message, thing: Option<&str>) -> Result<String, PluginError> {
        let missing =
            |what: &str| PluginError::rejected(format!("template {:?}: message has no {what}", self.source));
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Thing => out.push_str(thing.ok_or_else(|| missing("thing"))?),
                Part::Topic => out.push_str(msg.topic()),
                Part::ClientId => out.push_str(msg.client_id().ok_or_else(|| missing("client id"))?),
                Part::Level(n) => out.push_str(
                    msg.topic_level(*n)
                        .ok_or_else(|| missing(&format!("level {n}")))?,
                ),
            }
        }
        Ok(out)
    }

    /// Renders a template whose only placeholder is `{thing}` without a message (`{thing}`
    /// comes out as in [`Template::render`]); `None` when it has `{topic}`, `{client_id}` or a
    /// `{level:N}`, which need one.
    pub fn render_thing(&self, thing: &str) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + thing.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Thing => out.push_str(thing),
                Part::Topic | Part::ClientId | Part::Level(_) => return None,
            }
        }
        Some(out)
    }

    /// Whether `{thing}` is in it.
    pub fn has_thing(&self) -> bool {
        self.parts.contains(&Part::Thing)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_refuses() {
        let m = Message::new("a/b/c", "").with_client_id("cid");
        let t = Template::parse("x/{{{topic}}}/{client_id}/{level:0}").unwrap();
        assert_eq!(t.render(&m, None).unwrap(), "x/{a/b/c}/cid/a");
        assert!(Template::parse("{thing").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("{level:x}").is_err());
        let t = Template::parse("{thing}/{level:9}").unwrap();
        assert!(matches!(t.render(&m, None), Err(PluginError::Rejected(_))));
        assert!(matches!(t.render(&m, Some("t")), Err(PluginError::Rejected(_))));
        assert_eq!(t.render_thing("t"), None, "a level needs a message");
        assert!(t.has_thing());
        let t = Template::parse("q/{{x}}/{thing}").unwrap();
        assert_eq!(t.render_thing("t7").as_deref(), Some("q/{x}/t7"));
        assert!(!Template::parse("fleet/{topic}").unwrap().has_thing());
    }
}
