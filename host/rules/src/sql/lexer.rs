//! Tokens of AWS IoT SQL, produced on demand so a template can stop lexing at the `}` that
//! closes an expression and go back to literal text.

use super::error::SqlError;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or keyword (keywords are recognised by the parser, case-insensitively).
    Word(String),
    /// A numeric literal, as written.
    Number(String),
    /// A string literal, quotes removed and escapes resolved.
    Str(String),
    Star,
    Comma,
    Dot,
    Colon,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    /// `<>` or `!=`.
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `||`, which AWS IoT SQL does not have; lexed only to explain that.
    Concat,
    Eof,
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Whether whitespace came right before it (`value [1]` and `value[1]` differ).
    pub(crate) spaced: bool,
}

impl Token {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self, source: &str) -> String {
        match self.tok {
            Tok::Eof => "end of input".to_owned(),
            _ => {
                let text = &source[self.start..self.end];
                let text: String = text.chars().take(40).collect();
                format!("'{text}'")
            }
        }
    }
}

pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    pub(crate) fn new(src: &'s str, pos: usize) -> Lexer<'s> {
        Lexer { src, pos }
    }

    pub(crate) fn next_token(&mut self) -> Result<Token, SqlError> {
        let bytes = self.src.as_bytes();
        let before = self.pos;
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let spaced = self.pos > before;
        let start = self.pos;
        let Some(c) = self.src[start..].chars().next() else {
            return Ok(Token {
                tok: Tok::Eof,
                start,
                end: start,
                spaced,
            });
        };
        let next = bytes.get(start + 1).copied();
        let (tok, len) = match c {
            '*' => (Tok::Star, 1),
            ',' => (Tok::Comma, 1),
            '.' => (Tok::Dot, 1),
            ':' => (Tok::Colon, 1),
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            '{' => (Tok::LBrace, 1),
            '}' => (Tok::RBrace, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '=' if next == Some(b'=') => {
                return Err(SqlError::new(self.src, start, "'==' is not an operator; use '='"));
            }
            '=' => (Tok::Eq, 1),
            '<' if next == Some(b'>') => (Tok::Ne, 2),
            '<' if next == Some(b'=') => (Tok::Le, 2),
            '<' => (Tok::Lt, 1),
            '>' if next == Some(b'=') => (Tok::Ge, 2),
            '>' => (Tok::Gt, 1),
            '!' if next == Some(b'=') => (Tok::Ne, 2),
            '|' if next == Some(b'|') => (Tok::Concat, 2),
            '\'' | '"' => return self.string(start, c),
            '0'..='9' => return Ok(self.number(start, spaced)),
            c if c == '_' || c.is_alphabetic() => {
                let len = self.src[start..]
                    .char_indices()
                    .find(|&(_, c)| !(c == '_' || c.is_alphanumeric()))
                    .map_or(self.src.len() - start, |(i, _)| i);
                (Tok::Word(self.src[start..start + len].to_owned()), len)
            }
            c => {
                return Err(SqlError::new(
                    self.src,
                    start,
                    format!("unexpected character '{c}'"),
                ));
            }
        };
        self.pos = start + len;
        Ok(Token {
            tok,
            start,
            end: self.pos,
            spaced,
        })
    }

    fn number(&mut self, start: usize, spaced: bool) -> Token {
        let b = self.src.as_bytes();
        let mut i = start;
        let digits = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
        };
        digits(&mut i);
        if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            digits(&mut i);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                i = j;
                digits(&mut i);
            }
        }
        self.pos = i;
        Token {
            tok: Tok::Number(self.src[start..i].to_owned()),
            start,
            end: i,
            spaced,
        }
    }

    /// A string literal in single or double quotes. A doubled quote stands for itself
    /// (`'it''s'`); backslash escapes `\'` `\"` `\\` `\n` `\r` `\t` `\uXXXX` are resolved; any
    /// other backslash is kept as written, so regular expressions like `'\d+'` read naturally.
    fn string(&mut self, start: usize, quote: char) -> Result<Token, SqlError> {
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let at = start + 1 + i;
            if c == quote {
                if chars.peek().map(|&(_, n)| n) == Some(quote) {
                    chars.next();
                    out.push(quote);
                    continue;
                }
                self.pos = at + 1;
                return Ok(Token {
                    tok: Tok::Str(out),
                    start,
                    end: self.pos,
                    spaced: false,
                });
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.peek().map(|&(_, n)| n) {
                Some(n @ ('\'' | '"' | '\\')) => {
                    chars.next();
                    out.push(n);
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('r') => {
                    chars.next();
                    out.push('\r');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('u') => {
                    let hex: String = self.src[at + 2..].chars().take(4).collect();
                    let code = (hex.len() == 4 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                        .then(|| u32::from_str_radix(&hex, 16).ok())
                        .flatten()
                        .and_then(char::from_u32);
                    let Some(ch) = code else {
                        return Err(SqlError::new(
                            self.src,
                            at,
                            "invalid \\u escape (expected four hex digits of a character)",
                        ));
                    };
                    for _ in 0..5 {
                        chars.next();
                    }
                    out.push(ch);
                }
                _ => out.push('\\'),
            }
        }
        Err(SqlError::new(self.src, start, "unterminated string literal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        let mut l = Lexer::new(s, 0);
        let mut out = vec![];
        loop {
            let t = l.next_token().unwrap();
            if t.tok == Tok::Eof {
                return out;
            }
            out.push(t.tok);
        }
    }

    #[test]
    fn operators_and_words() {
        assert_eq!(
            toks("a<>b != c<=d>=e<f>g=h || * , . : ( ) [ ] { } + - / %"),
            vec![
                Tok::Word("a".into()),
                Tok::Ne,
                Tok::Word("b".into()),
                Tok::Ne,
                Tok::Word("c".into()),
                Tok::Le,
                Tok::Word("d".into()),
                Tok::Ge,
                Tok::Word("e".into()),
                Tok::Lt,
                Tok::Word("f".into()),
                Tok::Gt,
                Tok::Word("g".into()),
                Tok::Eq,
                Tok::Word("h".into()),
                Tok::Concat,
                Tok::Star,
                Tok::Comma,
                Tok::Dot,
                Tok::Colon,
                Tok::LParen,
                Tok::RParen,
                Tok::LBracket,
                Tok::RBracket,
                Tok::LBrace,
                Tok::RBrace,
                Tok::Plus,
                Tok::Minus,
                Tok::Slash,
                Tok::Percent,
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("1 2.5 3e4 5E-6 7.e 8.x"),
            vec![
                Tok::Number("1".into()),
                Tok::Number("2.5".into()),
                Tok::Number("3e4".into()),
                Tok::Number("5E-6".into()),
                Tok::Number("7".into()),
                Tok::Dot,
                Tok::Word("e".into()),
                Tok::Number("8".into()),
                Tok::Dot,
                Tok::Word("x".into()),
            ]
        );
    }

    #[test]
    fn strings() {
        assert_eq!(
            toks(r#"'a' "b" 'it''s' 'q\'s' "d\"q" '\d+' 'tab\tnl\n' '\u00e9' 'x\\y'"#),
            vec![
                Tok::Str("a".into()),
                Tok::Str("b".into()),
                Tok::Str("it's".into()),
                Tok::Str("q's".into()),
                Tok::Str("d\"q".into()),
                Tok::Str("\\d+".into()),
                Tok::Str("tab\tnl\n".into()),
                Tok::Str("é".into()),
                Tok::Str("x\\y".into()),
            ]
        );
    }

    #[test]
    fn unicode_identifiers() {
        assert_eq!(toks("température_1"), vec![Tok::Word("température_1".into())]);
    }

    #[test]
    fn errors() {
        let e = Lexer::new("'abc", 0).next_token().unwrap_err();
        assert_eq!(e.message, "unterminated string literal");
        let e = Lexer::new("  #", 0).next_token().unwrap_err();
        assert_eq!(e.to_string(), "unexpected character '#' at 1:3");
        let e = Lexer::new("'\\u12'", 0).next_token().unwrap_err();
        assert!(e.message.contains("\\u"));
    }
}
