//! Topic names and topic filters, validated once at the edge.
//!
//! A [`Topic`] is what a PUBLISH names; a [`TopicFilter`] is what a SUBSCRIBE names. They are
//! different types on purpose: a filter may hold wildcards, a name may not, and mixing the two up
//! is the classic broker bug. Both wrap an [`ByteString`] so cloning one is a reference-count bump.

use std::fmt;

use ntex::util::ByteString;

/// Limits applied when a topic or filter is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest topic name or filter in bytes (AWS IoT: 256).
    pub max_length: usize,
    /// Most levels (slash-separated parts) in a topic (AWS IoT: 8, i.e. 7 slashes). Topics under
    /// the reserved `$aws/` prefix are exempt: their layout is fixed by the services behind them.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self {
            max_length: 256,
            max_levels: 8,
        }
    }
}

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// `[MQTT-4.7.3-1]` topic names and filters are at least one character long.
    #[error("topic must not be empty [MQTT-4.7.3-1]")]
    Empty,
    /// `[MQTT-4.7.3-2]` no U+0000 anywhere.
    #[error("topic must not contain the null character [MQTT-4.7.3-2]")]
    NullCharacter,
    /// `[MQTT-3.3.2-2]` a topic name has no wildcards.
    #[error("topic name must not contain wildcards [MQTT-3.3.2-2]")]
    WildcardInName,
    /// `[MQTT-4.7.1-2]` `#` is the whole last level.
    #[error("'#' must be the last character and occupy a whole level [MQTT-4.7.1-2]")]
    MisplacedMultiLevel,
    /// `[MQTT-4.7.1-3]` `+` occupies a whole level.
    #[error("'+' must occupy a whole level [MQTT-4.7.1-3]")]
    MisplacedSingleLevel,
    /// Longer than the configured limit.
    #[error("topic is {len} bytes, the limit is {max}")]
    TooLong {
        /// Actual length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// More levels than the configured limit.
    #[error("topic has {levels} levels, the limit is {max}")]
    TooManyLevels {
        /// Actual level count.
        levels: usize,
        /// Configured limit.
        max: usize,
    },
    /// `[MQTT-4.8.2-1]`/`[MQTT-4.8.2-2]` a malformed `$share/{group}/{filter}`.
    #[error(
        "shared subscription must be $share/{{group}}/{{filter}} with a non-empty group without '+', '#' or '/' [MQTT-4.8.2-1]"
    )]
    BadShare,
}

/// Checks what names and filters share; `true` when `s` holds `+` or `#`. One pass over the
/// bytes (every publish goes through here), reporting errors in the order the rules are
/// listed: empty, NUL, length, levels.
fn check_common(s: &str, limits: &TopicLimits) -> Result<bool, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    let (mut nul, mut wild, mut slashes) = (false, false, 0usize);
    for &b in s.as_bytes() {
        match b {
            b'/' => slashes += 1,
            b'\0' => nul = true,
            b'+' | b'#' => wild = true,
            _ => {}
        }
    }
    if nul {
        return Err(TopicError::NullCharacter);
    }
    if s.len() > limits.max_length {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: limits.max_length,
        });
    }
    let levels = slashes + 1;
    if levels > limits.max_levels && !s.starts_with("$aws/") {
        return Err(TopicError::TooManyLevels {
            levels,
            max: limits.max_levels,
        });
    }
    Ok(wild)
}

/// A validated topic name: what a PUBLISH is sent to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(ByteString);

impl Topic {
    /// Parses a topic name under `limits`.
    pub fn parse(s: impl Into<ByteString>, limits: &TopicLimits) -> Result<Self, TopicError> {
        let s = s.into();
        if check_common(&s, limits)? {
            return Err(TopicError::WildcardInName);
        }
        Ok(Topic(s))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic as a shared byte string (cheap to clone into packets).
    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }

    /// Its levels, split on `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// `true` for topics starting with `$`, which leading wildcards do not match
    /// `[MQTT-4.7.2-1]`.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated topic filter: what a SUBSCRIBE names. Shared subscriptions
/// (`$share/{group}/{filter}`) keep their group apart from the filter proper.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    /// The whole filter as the client sent it (including any `$share/group/` prefix).
    full: ByteString,
    /// Byte offset where the filter proper starts (0 unless shared).
    start: usize,
    /// The share group, if any.
    group: Option<ByteString>,
}

impl TopicFilter {
    /// Parses a topic filter under `limits`.
    pub fn parse(s: impl Into<ByteString>, limits: &TopicLimits) -> Result<Self, TopicError> {
        let full = s.into();
        check_common(&full, limits)?;
        let (start, group) = if let Some(rest) = full.strip_prefix("$share/") {
            let Some(slash) = rest.find('/') else {
                return Err(TopicError::BadShare);
            };
            let group = &rest[..slash];
            if group.is_empty() || group.contains(['+', '#']) || slash + 1 >= rest.len() {
                return Err(TopicError::BadShare);
            }
            let start = "$share/".len() + slash + 1;
            (start, Some(ByteString::from(group)))
        } else {
            (0, None)
        };
        let filter = &full[start..];
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MisplacedMultiLevel);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedSingleLevel);
            }
        }
        Ok(TopicFilter { full, start, group })
    }

    /// The filter proper, without a `$share/{group}/` prefix.
    pub fn filter(&self) -> &str {
        &self.full[self.start..]
    }

    /// The filter exactly as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The share group of a `$share/{group}/{filter}` subscription.
    pub fn share_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// `true` when the filter holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// Whether `topic` matches this filter, with the `$` rule `[MQTT-4.7.2-1]`.
    pub fn matches(&self, topic: &Topic) -> bool {
        matches_filter(self.filter(), topic.as_str())
    }
}

/// Where the level starting at `from` ends: the next `/`, or the end.
fn level_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'/')
        .map_or(b.len(), |p| from + p)
}

/// Matches a topic name against a filter proper (no `$share` prefix). One walk over both
/// byte strings, level by level (every publish runs it once per rule group it may match).
pub fn matches_filter(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        // `i` and `j` are at the start of a level in each.
        let fe = level_end(f, i);
        let te = level_end(t, j);
        match &f[i..fe] {
            b"#" => return true,
            b"+" => {}
            lit if lit == &t[j..te] => {}
            _ => return false,
        }
        match (fe == f.len(), te == t.len()) {
            (true, true) => return true,
            (false, false) => (i, j) = (fe + 1, te + 1),
            // The topic ended: only a `#` level next still matches (`a/#` matches `a`).
            (false, true) => return &f[fe + 1..level_end(f, fe + 1)] == b"#",
            (true, false) => return false,
        }
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.full)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level-splitting definition `matches_filter` must agree with.
    fn matches_by_split(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn filter_matching_agrees_with_matching_by_levels() {
        let mut rng = crate::rng::XorShift64::new(0x2545_F491_4F6C_DD1D);
        let mut next = move |n: u64| rng.below(n);
        let mut word = |wild: bool| {
            let alphabet: &[&str] = if wild {
                &["a", "b", "ab", "", "+", "#", "$x"]
            } else {
                &["a", "b", "ab", "", "$x"]
            };
            let levels = 1 + next(4);
            (0..levels)
                .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut hits = 0;
        for _ in 0..200_000 {
            let (filter, topic) = (word(true), word(false));
            let want = matches_by_split(&filter, &topic);
            assert_eq!(matches_filter(&filter, &topic), want, "{filter:?} {topic:?}");
            hits += usize::from(want);
        }
        assert!(hits > 1_000, "only {hits} matches generated");
        for (filter, topic, want) in [
            ("a/#", "a", true),
            ("a/+", "a", false),
            ("#", "a/b", true),
            ("+/+", "a/", true),
            ("a/", "a", false),
            ("a", "a/", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/x", true),
        ] {
            assert_eq!(matches_filter(filter, topic), want, "{filter} {topic}");
        }
    }

    fn t(s: &str) -> Result<Topic, TopicError> {
        Topic::parse(s, &TopicLimits::default())
    }
    fn f(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::parse(s, &TopicLimits::default())
    }

    #[test]
    fn names() {
        assert!(t("a/b/c").is_ok());
        assert!(t("/").is_ok());
        assert_eq!(t(""), Err(TopicError::Empty));
        assert_eq!(t("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(t("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(t("a\0b"), Err(TopicError::NullCharacter));
        assert!(matches!(t(&"x".repeat(257)), Err(TopicError::TooLong { .. })));
        assert!(matches!(
            t("1/2/3/4/5/6/7/8/9"),
            Err(TopicError::TooManyLevels { levels: 9, max: 8 })
        ));
        assert!(t("$aws/things/t/shadow/name/n/update/accepted").is_ok());
    }

    #[test]
    fn filters() {
        assert!(f("a/+/c").is_ok());
        assert!(f("#").is_ok());
        assert!(f("+").is_ok());
        assert!(f("a/#").is_ok());
        assert_eq!(f("a/#/b"), Err(TopicError::MisplacedMultiLevel));
        assert_eq!(f("a#"), Err(TopicError::MisplacedMultiLevel));
        assert_eq!(f("a+/b"), Err(TopicError::MisplacedSingleLevel));
        let s = f("$share/g1/a/+").unwrap();
        assert_eq!(s.share_group(), Some("g1"));
        assert_eq!(s.filter(), "a/+");
        assert_eq!(f("$share/g1"), Err(TopicError::BadShare));
        assert_eq!(f("$share//a"), Err(TopicError::BadShare));
        assert_eq!(f("$share/g+/a"), Err(TopicError::BadShare));
    }

    #[test]
    fn matching() {
        assert!(matches_filter("a/+/c", "a/b/c"));
        assert!(!matches_filter("a/+/c", "a/b/d"));
        assert!(matches_filter("a/#", "a"));
        assert!(matches_filter("a/#", "a/b/c"));
        assert!(matches_filter("#", "a/b"));
        assert!(matches_filter("+/+", "/x"));
        assert!(!matches_filter("+", "a/b"));
        assert!(matches_filter("a/+", "a/"));
        // [MQTT-4.7.2-1]
        assert!(!matches_filter("#", "$SYS/x"));
        assert!(!matches_filter("+/x", "$SYS/x"));
        assert!(matches_filter("$SYS/#", "$SYS/x"));
    }
}
