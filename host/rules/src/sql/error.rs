//! The two ways a rule can fail: at parse time ([`SqlError`], with a position) and at
//! evaluation time ([`EvalError`], only when a service the engine provides fails).
//!
//! Type errors inside expressions are not errors: AWS IoT SQL turns them into `Undefined`, and
//! so do we.

use std::fmt;

/// Where in the source text something is: a byte offset plus a 1-based line and column
/// (the column counts characters, not bytes, so it matches what an editor shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Byte offset into the source text.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `source` (clamped to its length and to a character
    /// boundary).
    pub fn locate(source: &str, offset: usize) -> Position {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { offset, line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A statement or template that does not parse, or names something Shoal does not know
/// (an unknown function, a wrong number of arguments, an invalid topic filter or regular
/// expression literal).
///
/// Displays as `expected FROM at 1:23, found 'WHER'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at {position}{}", found.as_ref().map(|f| format!(", found {f}")).unwrap_or_default())]
pub struct SqlError {
    /// Where the problem starts.
    pub position: Position,
    /// What was wrong or expected, e.g. `expected FROM`.
    pub message: String,
    /// What was there instead, already quoted (`'WHER'`, `end of input`), when that helps.
    pub found: Option<String>,
}

impl SqlError {
    pub(crate) fn new(source: &str, offset: usize, message: impl Into<String>) -> SqlError {
        SqlError {
            position: Position::locate(source, offset),
            message: message.into(),
            found: None,
        }
    }

    pub(crate) fn found(mut self, found: impl Into<String>) -> SqlError {
        self.found = Some(found.into());
        self
    }
}

/// Why evaluating a statement failed. Only the services behind functions that reach outside
/// the message (today `get_thing_shadow`) can fail; everything else yields `Undefined`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The engine could not read a thing's shadow (the store failed or refused). Boxed so
    /// that the `Result` every expression returns stays the size of a value.
    #[error("get_thing_shadow('{}') failed: {}", .0.thing, .0.message)]
    ThingShadow(Box<ShadowFailure>),
}

/// A failed `get_thing_shadow` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowFailure {
    /// The thing whose shadow was asked for.
    pub thing: String,
    /// What the store said.
    pub message: String,
}
