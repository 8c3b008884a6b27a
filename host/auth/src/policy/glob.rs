//! IAM-style wildcard patterns (`*` = any sequence, including empty and including `/` and `:`;
//! `?` = exactly one character), their partial evaluation against a known ARN prefix, and the
//! allocation-free matchers used on the message path.
//!
//! A pattern is a list of [`Tok`]s. Literal text is a [`Tok::Lit`] whatever characters it holds:
//! text substituted for a policy variable is always literal, so a client id of `*` becomes the
//! literal `*`, never a wildcard.

/// One token of a wildcard pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Literal text (non-empty after [`normalize`]).
    Lit(String),
    /// `*`: any sequence of characters, possibly empty.
    Star,
    /// `?`: exactly one character.
    One,
}

/// Merges adjacent literals, drops empty literals and collapses runs of `*`.
pub(crate) fn normalize(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    for tok in toks {
        match tok {
            Tok::Lit(s) if s.is_empty() => {}
            Tok::Lit(s) => {
                if let Some(Tok::Lit(prev)) = out.last_mut() {
                    prev.push_str(&s);
                } else {
                    out.push(Tok::Lit(s));
                }
            }
            Tok::Star => {
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
            }
            Tok::One => out.push(Tok::One),
        }
    }
    out
}

/// Character-level token, for partial evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CTok {
    C(char),
    Star,
    One,
}

fn expand(toks: &[Tok]) -> Vec<CTok> {
    let mut out = Vec::new();
    for tok in toks {
        match tok {
            Tok::Lit(s) => out.extend(s.chars().map(CTok::C)),
            Tok::Star => out.push(CTok::Star),
            Tok::One => out.push(CTok::One),
        }
    }
    out
}

fn collapse(ctoks: &[CTok]) -> Vec<Tok> {
    let mut out = Vec::new();
    for t in ctoks {
        out.push(match t {
            CTok::C(c) => Tok::Lit(c.to_string()),
            CTok::Star => Tok::Star,
            CTok::One => Tok::One,
        });
    }
    normalize(out)
}

/// Adds to `states` every state reachable through `*` tokens (a `*` may match nothing).
fn close(ctoks: &[CTok], states: &mut Vec<usize>) {
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        if ctoks.get(s) == Some(&CTok::Star) && !states.contains(&(s + 1)) {
            states.push(s + 1);
        }
        i += 1;
    }
    states.sort_unstable();
    states.dedup();
}

/// Partially evaluates `pattern` against the known beginning `prefix` of every string it will be
/// matched against: returns residual patterns such that `pattern` matches `prefix + tail` if and
/// only if one of the residuals matches `tail`. An empty result means the pattern can never match
/// a string starting with `prefix`.
pub(crate) fn residuals(pattern: &[Tok], prefix: &str) -> Vec<Vec<Tok>> {
    // Fast path: a pattern whose leading literal covers the whole prefix (an explicit
    // `arn:aws:iot:{region}:{account}:{type}/…`) has at most one residual.
    if let Some(Tok::Lit(head)) = pattern.first()
        && head.len() >= prefix.len()
    {
        let Some(rest) = head.strip_prefix(prefix) else {
            return Vec::new();
        };
        let mut residual = Vec::with_capacity(pattern.len());
        residual.push(Tok::Lit(rest.to_owned()));
        residual.extend_from_slice(&pattern[1..]);
        return vec![normalize(residual)];
    }
    let ctoks = expand(pattern);
    let mut states = vec![0usize];
    close(&ctoks, &mut states);
    for c in prefix.chars() {
        let mut next = Vec::new();
        for &s in &states {
            match ctoks.get(s) {
                Some(CTok::Star) => next.push(s),
                Some(CTok::One) => next.push(s + 1),
                Some(CTok::C(x)) if *x == c => next.push(s + 1),
                _ => {}
            }
        }
        close(&ctoks, &mut next);
        states = next;
        if states.is_empty() {
            return Vec::new();
        }
    }
    // A `*` state subsumes the state right after it (`*X` matches whatever `X` matches).
    let star_states: Vec<usize> = states
        .iter()
        .copied()
        .filter(|&s| ctoks.get(s) == Some(&CTok::Star))
        .collect();
    states.retain(|s| !star_states.iter().any(|&st| st + 1 == *s));
    let mut out: Vec<Vec<Tok>> = Vec::new();
    for s in states {
        let residual = collapse(&ctoks[s..]);
        if residual == [Tok::Star] {
            return vec![residual];
        }
        if !out.contains(&residual) {
            out.push(residual);
        }
    }
    out
}

/// Whether `pattern` matches all of `text`.
pub(crate) fn matches(pattern: &[Tok], text: &str) -> bool {
    glob(pattern, text)
}

/// The length of the UTF-8 sequence starting with byte `b`.
#[inline]
fn utf8_len(b: u8) -> usize {
    if b < 0x80 {
        1
    } else if b < 0xE0 {
        2
    } else if b < 0xF0 {
        3
    } else {
        4
    }
}

/// The first occurrence of `needle` in `hay`. A naive scan: needles and topics are short, and
/// `str::find`'s two-way searcher costs more to set up than this takes to run.
#[inline]
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, rest)) = needle.split_first() else {
        return Some(0);
    };
    let mut start = 0;
    while let Some(pos) = hay[start..].iter().position(|&c| c == first) {
        let at = start + pos;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

/// Iterative glob with single-point backtracking (the classic algorithm: on a mismatch, retry
/// from the most recent `*` one character further on). When the token after a `*` is a literal,
/// the retry jumps straight to the literal's next occurrence, and fails at once when there is
/// none. Positions only ever move by whole characters, so `?` consumes exactly one character.
#[inline]
fn glob(toks: &[Tok], text: &str) -> bool {
    // Working on bytes is sound: literals are whole UTF-8 sequences, so they only ever match at
    // character boundaries, and `?` and the `*` retry step over whole characters.
    let b = text.as_bytes();
    let (mut t, mut i) = (0usize, 0usize);
    // (token after the last `*`, text position that `*` currently stops at)
    let mut back: Option<(usize, usize)> = None;
    loop {
        if let Some(tok) = toks.get(t) {
            match tok {
                Tok::Star => {
                    t += 1;
                    match toks.get(t) {
                        None => return true,
                        Some(Tok::Lit(lit)) => match find(&b[i..], lit.as_bytes()) {
                            Some(off) => i += off,
                            None => return false,
                        },
                        Some(_) => {}
                    }
                    back = Some((t, i));
                    continue;
                }
                Tok::One => {
                    if let Some(&c) = b.get(i) {
                        i += utf8_len(c);
                        t += 1;
                        continue;
                    }
                }
                Tok::Lit(lit) => {
                    if b[i..].starts_with(lit.as_bytes()) {
                        i += lit.len();
                        t += 1;
                        continue;
                    }
                }
            }
        } else if i == b.len() {
            return true;
        }
        // Mismatch: let the last `*` absorb one more character.
        let Some((bt, bi)) = back else { return false };
        if bi >= b.len() {
            return false;
        }
        let mut ni = bi + utf8_len(b[bi]);
        if let Some(Tok::Lit(lit)) = toks.get(bt) {
            match find(&b[ni..], lit.as_bytes()) {
                Some(off) => ni += off,
                None => return false,
            }
        }
        back = Some((bt, ni));
        t = bt;
        i = ni;
    }
}

/// A compiled matcher for the variable part of a resource (the part after the ARN prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// Matches everything.
    Any,
    /// Matches exactly this text.
    Exact(Box<str>),
    /// Matches text starting with this.
    Prefix(Box<str>),
    /// Matches text ending with this.
    Suffix(Box<str>),
    /// General pattern.
    Glob(Box<[Tok]>),
}

impl Matcher {
    /// Picks the cheapest matcher equivalent to `pattern` (which must be normalised).
    pub(crate) fn new(pattern: Vec<Tok>) -> Matcher {
        match pattern.as_slice() {
            [] => Matcher::Exact("".into()),
            [Tok::Star] => Matcher::Any,
            [Tok::Lit(a)] => Matcher::Exact(a.as_str().into()),
            [Tok::Lit(a), Tok::Star] => Matcher::Prefix(a.as_str().into()),
            [Tok::Star, Tok::Lit(a)] => Matcher::Suffix(a.as_str().into()),
            _ => Matcher::Glob(pattern.into_boxed_slice()),
        }
    }

    /// Whether `text` matches. Does not allocate.
    #[inline]
    pub(crate) fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Exact(s) => text == &**s,
            Matcher::Prefix(s) => text.starts_with(&**s),
            Matcher::Suffix(s) => text.ends_with(&**s),
            Matcher::Glob(toks) => glob(toks, text),
        }
    }
}

/// Parses policy text where `*` and `?` are wildcards and everything else is literal.
#[cfg(test)]
pub(crate) fn parse_wild(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut lit = String::new();
    for c in text.chars() {
        match c {
            '*' | '?' => {
                if !lit.is_empty() {
                    out.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                out.push(if c == '*' { Tok::Star } else { Tok::One });
            }
            _ => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Tok::Lit(lit));
    }
    normalize(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        matches(&parse_wild(p), t)
    }

    #[test]
    fn glob_basics() {
        assert!(m("*", ""));
        assert!(m("*", "a/b/c"));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abc"));
        assert!(m("a*c", "ac"));
        assert!(!m("a*c", "ab"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("a?c", "abbc"));
        assert!(m("a*b*c", "axxbyybzzc"));
        assert!(m("*a*a*a*", "aaa"));
        assert!(!m("*a*a*a*", "aa"));
        assert!(m("my/*/x", "my/a/b/x"));
        assert!(!m("abc", "ABC"), "case-sensitive");
        assert!(m("?", "é"), "? is one character, not one byte");
        assert!(!m("??", "é"));
        assert!(m("*é?", "aéb"));
        assert!(m("a*é", "aaé"));
    }

    /// Reference: exhaustive recursive glob over characters.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|k| reference(&p[1..], &t[k..])),
            Some('?') => !t.is_empty() && reference(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && reference(&p[1..], &t[1..]),
        }
    }

    #[test]
    fn glob_agrees_with_reference() {
        let mut rng = shoal_broker::rng::XorShift64::new(0x2545_F491_4F6C_DD1D);
        let mut next = move || rng.next();
        let pattern_chars = ['a', 'b', '/', 'é', '*', '?'];
        let text_chars = ['a', 'b', '/', 'é'];
        for _ in 0..20_000 {
            let plen = (next() % 7) as usize;
            let tlen = (next() % 8) as usize;
            let p: String = (0..plen).map(|_| pattern_chars[(next() % 6) as usize]).collect();
            let t: String = (0..tlen).map(|_| text_chars[(next() % 4) as usize]).collect();
            let expected = reference(&p.chars().collect::<Vec<_>>(), &t.chars().collect::<Vec<_>>());
            let toks = parse_wild(&p);
            assert_eq!(matches(&toks, &t), expected, "{p:?} {t:?}");
            assert_eq!(Matcher::new(toks).matches(&t), expected, "{p:?} {t:?}");
        }
    }

    #[test]
    fn matcher_kinds_agree_with_glob() {
        let cases = ["*", "abc", "ab*", "*bc", "a*c", "a?c", "", "*a*", "?*"];
        let texts = ["", "a", "abc", "ab", "bc", "abbc", "xabcx", "aXc"];
        for p in cases {
            let toks = parse_wild(p);
            let matcher = Matcher::new(toks.clone());
            for t in texts {
                assert_eq!(matcher.matches(t), matches(&toks, t), "{p:?} vs {t:?}");
            }
        }
    }

    fn check_residuals(pattern: &str, prefix: &str, tails: &[&str]) {
        let toks = parse_wild(pattern);
        let res = residuals(&toks, prefix);
        for tail in tails {
            let full = format!("{prefix}{tail}");
            let direct = matches(&toks, &full);
            let via = res.iter().any(|r| matches(r, tail));
            assert_eq!(direct, via, "pattern {pattern:?} prefix {prefix:?} tail {tail:?}");
        }
    }

    #[test]
    fn partial_evaluation_is_exact() {
        let prefix = "arn:aws:iot:us-east-1:000000000000:topic/";
        let tails = ["", "a", "a/b", "topic/x", "my/x", "x:y", "*", "?", "foo/bar/baz"];
        for pattern in [
            "*",
            "arn:aws:iot:us-east-1:000000000000:topic/*",
            "arn:aws:iot:us-east-1:000000000000:topic/my/*",
            "arn:aws:iot:*:*:topic/my/*",
            "arn:aws:iot:*:*:*",
            "arn:aws:iot:*:*:*/a",
            "arn:aws:iot:us-east-1:000000000000:topicfilter/*",
            "arn:aws:iot:us-east-1:000000000000:*",
            "arn:aws:iot:us-east-?:*:topic/a?b",
            "arn:*:topic/*",
            "arn:*topic/x*",
            "arn:aws:iot:eu-west-1:000000000000:topic/*",
            "arn:aws:iot:*:*:topic*",
            "*/a",
        ] {
            check_residuals(pattern, prefix, &tails);
        }
        assert!(residuals(&parse_wild("arn:aws:iot:eu-west-1:1:topic/*"), prefix).is_empty());
        assert_eq!(residuals(&parse_wild("*"), prefix), vec![vec![Tok::Star]]);
        assert_eq!(
            residuals(
                &parse_wild("arn:aws:iot:us-east-1:000000000000:topic/my/*"),
                prefix
            ),
            vec![vec![Tok::Lit("my/".into()), Tok::Star]]
        );
        // A `*` in the region segment may span colons (IAM semantics), so it stays live.
        let r = residuals(&parse_wild("arn:aws:iot:*:*:topic/my/*"), prefix);
        assert!(r.contains(&vec![Tok::Lit("my/".into()), Tok::Star]));
        assert_eq!(r.len(), 3);
    }
}
