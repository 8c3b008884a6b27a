//! A recursive-descent parser for AWS IoT SQL.
//!
//! Precedence, loosest first: `OR`; `AND`; `NOT`; comparisons (`= <> != < <= > >= IN
//! CONTAINS`); `+ -`; `* / %`; unary `-`; member access `.name` and indexing `[i]`. AWS does
//! not publish a precedence table; this is standard SQL's.

use std::collections::VecDeque;

use shoal_broker::topic::{TopicFilter, TopicLimits};

use super::ast::{BinOp, CastType, Expr, Item, Query, Select, Subquery};
use super::error::SqlError;
use super::functions::{self, Func};
use super::lexer::{Lexer, Tok, Token};
use super::value::Value;

/// Words that can never name a field (write `get(*, 'end')` for a key called `end`). `VALUE`,
/// `IN` and `CONTAINS` are keywords only where the grammar expects them.
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "CASE", "WHEN", "THEN", "ELSE", "END", "TRUE", "FALSE",
    "NULL", "AS", "IS",
];

/// How deeply expressions may nest; deeper statements are refused rather than risking the
/// stack.
const MAX_DEPTH: usize = 64;

/// A parsed top-level statement.
pub(crate) struct Statement {
    pub(crate) query: Query,
    pub(crate) from: Option<TopicFilter>,
}

pub(crate) struct Parser<'s> {
    src: &'s str,
    lexer: Lexer<'s>,
    ahead: VecDeque<Token>,
    depth: usize,
}

impl<'s> Parser<'s> {
    pub(crate) fn new(src: &'s str, offset: usize) -> Parser<'s> {
        Parser {
            src,
            lexer: Lexer::new(src, offset),
            ahead: VecDeque::new(),
            depth: 0,
        }
    }

    fn peek_nth(&mut self, n: usize) -> Result<&Token, SqlError> {
        while self.ahead.len() <= n {
            let t = self.lexer.next_token()?;
            self.ahead.push_back(t);
        }
        Ok(&self.ahead[n])
    }

    fn peek(&mut self) -> Result<&Token, SqlError> {
        self.peek_nth(0)
    }

    fn bump(&mut self) -> Result<Token, SqlError> {
        self.peek()?;
        self.ahead
            .pop_front()
            .ok_or_else(|| SqlError::new(self.src, self.src.len(), "unexpected end"))
    }

    fn error(&self, at: &Token, message: impl Into<String>) -> SqlError {
        SqlError::new(self.src, at.start, message).found(at.describe(self.src))
    }

    fn error_here(&mut self, message: impl Into<String>) -> SqlError {
        match self.peek() {
            Ok(t) => {
                let t = t.clone();
                self.error(&t, message)
            }
            Err(e) => e,
        }
    }

    fn at_kw(&mut self, kw: &str) -> Result<bool, SqlError> {
        Ok(is_kw(self.peek()?, kw))
    }

    fn eat_kw(&mut self, kw: &str) -> Result<bool, SqlError> {
        if self.at_kw(kw)? {
            self.bump()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn expect_kw(&mut self, kw: &str) -> Result<Token, SqlError> {
        if self.at_kw(kw)? {
            return self.bump();
        }
        Err(self.error_here(format!("expected {kw}")))
    }

    fn eat(&mut self, tok: &Tok) -> Result<bool, SqlError> {
        if self.peek()?.tok == *tok {
            self.bump()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<Token, SqlError> {
        if self.peek()?.tok == *tok {
            return self.bump();
        }
        Err(self.error_here(format!("expected {what}")))
    }

    /// `SELECT ... [FROM 'filter'] [WHERE ...]` and nothing after it.
    pub(crate) fn statement(&mut self) -> Result<Statement, SqlError> {
        self.expect_kw("SELECT")?;
        let select = self.select_body(false)?;
        let mut from = None;
        if self.at_kw("FROM")? {
            self.bump()?;
            let t = self.bump()?;
            let Tok::Str(text) = &t.tok else {
                return Err(self.error(&t, "expected a topic filter in single quotes after FROM"));
            };
            if text.starts_with("$share/") {
                return Err(self.error(&t, "a rule cannot use a shared subscription filter"));
            }
            let filter = TopicFilter::parse(text.as_str(), &TopicLimits::default())
                .map_err(|e| self.error(&t, format!("invalid topic filter: {e}")))?;
            from = Some(filter);
        }
        let filter = if self.eat_kw("WHERE")? {
            Some(self.expr()?)
        } else {
            None
        };
        let end = self.peek()?.clone();
        if end.tok != Tok::Eof {
            let expected = match (&from, &filter) {
                (None, None) => "expected FROM, WHERE or end of statement",
                (Some(_), None) => "expected WHERE or end of statement",
                _ => "expected end of statement",
            };
            let expected = if matches!(end.tok, Tok::Word(_)) && from.is_none() && filter.is_none() {
                "expected FROM"
            } else {
                expected
            };
            return Err(self.error(&end, expected));
        }
        Ok(Statement {
            query: Query { select, filter },
            from,
        })
    }

    /// One expression, for a substitution template; returns it and where the closing `}` ends.
    pub(crate) fn template_expr(&mut self) -> Result<(Expr, usize), SqlError> {
        let e = self.expr()?;
        let close = self.expect(&Tok::RBrace, "'}' to close the substitution")?;
        Ok((e, close.end))
    }

    /// What follows `SELECT`: `VALUE expr` or a list of items.
    fn select_body(&mut self, nested: bool) -> Result<Select, SqlError> {
        if self.value_keyword()? {
            self.bump()?;
            return Ok(Select::Value(self.expr()?));
        }
        let mut items = Vec::new();
        loop {
            items.push(self.item(items.len(), nested)?);
            if !self.eat(&Tok::Comma)? {
                break;
            }
        }
        Ok(Select::Items(items))
    }

    /// Whether the next word is the `VALUE` keyword rather than a field called `value`: it is
    /// when an expression follows it (`SELECT VALUE color`), not when the list goes on
    /// (`SELECT value, x` / `SELECT value FROM` / `SELECT value AS v` / `SELECT value.x`).
    fn value_keyword(&mut self) -> Result<bool, SqlError> {
        if !self.at_kw("VALUE")? {
            return Ok(false);
        }
        let next = self.peek_nth(1)?.clone();
        Ok(match &next.tok {
            Tok::Word(w) => !["FROM", "WHERE", "AS", "AND", "OR", "IN", "CONTAINS", "IS"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k)),
            Tok::Number(_) | Tok::Str(_) | Tok::LParen | Tok::LBrace | Tok::Minus => true,
            // `value[0]` indexes a field; `VALUE [a, b]` selects an array.
            Tok::LBracket => next.spaced,
            // `VALUE *` and `VALUE *.a`, unless an operand follows (`value * 2`).
            Tok::Star => {
                let after = self.peek_nth(2)?;
                match &after.tok {
                    Tok::Word(w) => RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)),
                    Tok::Number(_) | Tok::Str(_) | Tok::LParen | Tok::LBracket | Tok::LBrace | Tok::Minus => {
                        false
                    }
                    _ => true,
                }
            }
            _ => false,
        })
    }

    fn item(&mut self, index: usize, nested: bool) -> Result<Item, SqlError> {
        if self.peek()?.tok == Tok::Star {
            let after = self.peek_nth(1)?;
            if matches!(after.tok, Tok::Comma | Tok::Eof)
                || is_kw(after, "FROM")
                || is_kw(after, "WHERE")
                || (nested && after.tok == Tok::RParen)
            {
                self.bump()?;
                return Ok(Item::Star);
            }
        }
        let expr = self.expr()?;
        let name = if self.eat_kw("AS")? {
            // Any word is a key (`AS value`, `AS end`), except the clause keywords, which are
            // more likely a forgotten alias.
            if self.at_kw("FROM")? || self.at_kw("WHERE")? {
                return Err(self.error_here("expected an alias after AS"));
            }
            let mut path = vec![self.name("an alias after AS")?];
            while self.eat(&Tok::Dot)? {
                path.push(self.name("a name after '.' in the alias")?);
            }
            path
        } else {
            vec![default_name(&expr, index)]
        };
        Ok(Item::Expr { expr, name })
    }

    /// Any word, keywords included (they are unambiguous after `AS` or `.`).
    fn name(&mut self, what: &str) -> Result<Box<str>, SqlError> {
        let t = self.bump()?;
        match t.tok {
            Tok::Word(w) => Ok(w.into_boxed_str()),
            _ => Err(self.error(&t, format!("expected {what}"))),
        }
    }

    pub(crate) fn expr(&mut self) -> Result<Expr, SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!("expression nested more than {MAX_DEPTH} levels deep")));
        }
        let e = self.or();
        self.depth -= 1;
        e
    }

    fn or(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.and()?;
        while self.eat_kw("OR")? {
            let r = self.and()?;
            l = Expr::Binary(BinOp::Or, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.not()?;
        while self.eat_kw("AND")? {
            let r = self.not()?;
            l = Expr::Binary(BinOp::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, SqlError> {
        if self.eat_kw("NOT")? {
            let inner = self.nested(Self::not)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    /// Runs `f` one nesting level deeper (prefix operators recurse without going through
    /// [`Parser::expr`]).
    fn nested(&mut self, f: fn(&mut Self) -> Result<Expr, SqlError>) -> Result<Expr, SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!("expression nested more than {MAX_DEPTH} levels deep")));
        }
        let e = f(self);
        self.depth -= 1;
        e
    }

    fn comparison(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.additive()?;
        loop {
            let t = self.peek()?.clone();
            let op = match &t.tok {
                Tok::Eq => BinOp::Eq,
                Tok::Ne => BinOp::Ne,
                Tok::Lt => BinOp::Lt,
                Tok::Le => BinOp::Le,
                Tok::Gt => BinOp::Gt,
                Tok::Ge => BinOp::Ge,
                Tok::Word(w) if w.eq_ignore_ascii_case("IN") => BinOp::In,
                Tok::Word(w) if w.eq_ignore_ascii_case("CONTAINS") => BinOp::Contains,
                Tok::Word(w) if w.eq_ignore_ascii_case("IS") => {
                    return Err(self.error(
                        &t,
                        "IS [NOT] NULL is not AWS IoT SQL; use isNull(x), isUndefined(x) or x = null",
                    ));
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("LIKE") || w.eq_ignore_ascii_case("BETWEEN") => {
                    return Err(self.error(&t, format!("{} is not AWS IoT SQL", w.to_uppercase())));
                }
                _ => return Ok(l),
            };
            self.bump()?;
            let r = self.additive()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn additive(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.multiplicative()?;
        loop {
            let t = self.peek()?.clone();
            let op = match t.tok {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                Tok::Concat => {
                    return Err(self.error(
                        &t,
                        "'||' is not an AWS IoT SQL operator; use concat(a, b) or a + b",
                    ));
                }
                _ => return Ok(l),
            };
            self.bump()?;
            let r = self.multiplicative()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, SqlError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek()?.tok {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Mod,
                _ => return Ok(l),
            };
            self.bump()?;
            let r = self.unary()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        if self.eat(&Tok::Minus)? {
            let inner = self.nested(Self::unary)?;
            // Fold `-15` into a literal, so the common `temp > -15` costs no negation.
            return Ok(match inner {
                Expr::Literal(Value::Int(i)) if i != i64::MIN => Expr::Literal(Value::Int(-i)),
                Expr::Literal(Value::Decimal(d)) => Expr::Literal(Value::Decimal(-d)),
                other => Expr::Neg(Box::new(other)),
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, SqlError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(&Tok::Dot)? {
                let name = self.name("a field name after '.'")?;
                e = Expr::Member(Box::new(e), name);
            } else if self.peek()?.tok == Tok::LBracket {
                self.bump()?;
                let index = self.expr()?;
                self.expect(&Tok::RBracket, "']'")?;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        let t = self.bump()?;
        match t.tok {
            Tok::Number(ref text) => number(text).ok_or_else(|| self.error(&t, "invalid number")),
            Tok::Str(s) => Ok(Expr::Literal(Value::str(s))),
            Tok::Star => Ok(Expr::Payload),
            Tok::LParen => {
                if self.at_kw("SELECT")? {
                    return self.subquery();
                }
                let e = self.expr()?;
                self.expect(&Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::LBracket => {
                let items = self.list(&Tok::RBracket, "',' or ']'")?;
                Ok(Expr::Array(items))
            }
            Tok::LBrace => self.object(),
            Tok::Word(ref w) => {
                let w = w.clone();
                if w.eq_ignore_ascii_case("TRUE") {
                    return Ok(Expr::Literal(Value::Bool(true)));
                }
                if w.eq_ignore_ascii_case("FALSE") {
                    return Ok(Expr::Literal(Value::Bool(false)));
                }
                if w.eq_ignore_ascii_case("NULL") {
                    return Ok(Expr::Literal(Value::Null));
                }
                if w.eq_ignore_ascii_case("CASE") {
                    return self.case();
                }
                if self.peek()?.tok == Tok::LParen {
                    return self.call(&t, &w);
                }
                if RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)) {
                    return Err(self.error(&t, "expected an expression"));
                }
                Ok(Expr::Field(w.into_boxed_str()))
            }
            _ => Err(self.error(&t, "expected an expression")),
        }
    }

    /// Comma-separated expressions up to `close` (already past the opening bracket).
    fn list(&mut self, close: &Tok, what: &str) -> Result<Vec<Expr>, SqlError> {
        let mut items = Vec::new();
        if self.eat(close)? {
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.eat(close)? {
                return Ok(items);
            }
            self.expect(&Tok::Comma, what)?;
        }
    }

    /// `{'key': expr, ...}` (keys are string literals, as in JSON, or bare names).
    fn object(&mut self) -> Result<Expr, SqlError> {
        let mut entries = Vec::new();
        if self.eat(&Tok::RBrace)? {
            return Ok(Expr::Object(entries));
        }
        loop {
            let t = self.bump()?;
            let key = match t.tok {
                Tok::Str(s) => s.into_boxed_str(),
                Tok::Word(w) => w.into_boxed_str(),
                _ => return Err(self.error(&t, "expected an object key")),
            };
            self.expect(&Tok::Colon, "':'")?;
            entries.push((key, self.expr()?));
            if self.eat(&Tok::RBrace)? {
                return Ok(Expr::Object(entries));
            }
            self.expect(&Tok::Comma, "',' or '}'")?;
        }
    }

    /// `CASE v WHEN a THEN x ... [ELSE y] END`, or the searched `CASE WHEN cond THEN x ...`.
    fn case(&mut self) -> Result<Expr, SqlError> {
        let operand = if self.at_kw("WHEN")? {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN")? {
            let when = self.expr()?;
            self.expect_kw("THEN")?;
            whens.push((when, self.expr()?));
        }
        if whens.is_empty() {
            return Err(self.error_here("expected WHEN"));
        }
        let otherwise = if self.eat_kw("ELSE")? {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        if !self.at_kw("END")? {
            let msg = if otherwise.is_some() {
                "expected END"
            } else {
                "expected WHEN, ELSE or END"
            };
            return Err(self.error_here(msg));
        }
        self.bump()?;
        Ok(Expr::Case {
            operand,
            whens,
            otherwise,
        })
    }

    /// `name(args)`: `cast(x AS type)` or a built-in function.
    fn call(&mut self, name_tok: &Token, name: &str) -> Result<Expr, SqlError> {
        self.bump()?; // (
        if name.eq_ignore_ascii_case("cast") {
            let inner = self.expr()?;
            self.expect_kw("AS")?;
            let t = self.bump()?;
            let ty = match &t.tok {
                Tok::Word(w) => cast_type(w),
                _ => None,
            };
            let Some(ty) = ty else {
                return Err(self.error(
                    &t,
                    "expected a cast type (Int, Integer, Decimal, Double, Bool, Boolean, String, Varchar, \
                     Nvarchar, Text, Ntext)",
                ));
            };
            self.expect(&Tok::RParen, "')'")?;
            return Ok(Expr::Cast(Box::new(inner), ty));
        }
        let Some(spec) = functions::lookup(name) else {
            let msg = if functions::is_aws_only(name) {
                format!("the AWS IoT function '{name}' is not supported by Shoal")
            } else {
                format!("unknown function '{name}'")
            };
            return Err(SqlError::new(self.src, name_tok.start, msg));
        };
        let mut args = Vec::new();
        let mut starts = Vec::new();
        if !self.eat(&Tok::RParen)? {
            loop {
                starts.push(self.peek()?.start);
                args.push(self.expr()?);
                if self.eat(&Tok::RParen)? {
                    break;
                }
                self.expect(&Tok::Comma, "',' or ')'")?;
            }
        }
        if args.len() < spec.min || args.len() > spec.max {
            let want = match (spec.min, spec.max) {
                (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
                (a, usize::MAX) => format!("at least {a} arguments"),
                (a, b) => format!("{a} to {b} arguments"),
            };
            return Err(SqlError::new(
                self.src,
                name_tok.start,
                format!("{}() takes {want}, got {}", spec.name, args.len()),
            ));
        }
        let prepared = functions::prepare(spec.func, &args)
            .map_err(|(i, msg)| SqlError::new(self.src, starts[i], msg))?
            .map(Box::new);
        Ok(Expr::Call {
            func: spec.func,
            args,
            prepared,
        })
    }

    /// `(SELECT ... FROM expr [WHERE expr])`, already past `(`.
    fn subquery(&mut self) -> Result<Expr, SqlError> {
        self.expect_kw("SELECT")?;
        let select = self.select_body(true)?;
        self.expect_kw("FROM")?;
        let source = self.expr()?;
        let filter = if self.eat_kw("WHERE")? {
            Some(self.expr()?)
        } else {
            None
        };
        self.expect(&Tok::RParen, "')' to close the nested SELECT")?;
        Ok(Expr::Subquery(Box::new(Subquery {
            query: Query { select, filter },
            source,
        })))
    }
}

fn is_kw(t: &Token, kw: &str) -> bool {
    matches!(&t.tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

fn cast_type(w: &str) -> Option<CastType> {
    let w = w.to_ascii_lowercase();
    Some(match w.as_str() {
        "int" | "integer" => CastType::Int,
        "decimal" | "double" => CastType::Decimal,
        "bool" | "boolean" => CastType::Bool,
        "string" | "varchar" | "nvarchar" | "text" | "ntext" => CastType::String,
        _ => return None,
    })
}

/// A numeric literal: whole numbers (`10`, `10.0`, `1e3`) are `Int` when they fit, as SQL
/// 2016-03-23 reads them; others are `Decimal`.
fn number(text: &str) -> Option<Expr> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Expr::Literal(Value::Int(i)));
    }
    let d: f64 = text.parse().ok()?;
    match Value::number(d) {
        Value::Undefined => None,
        v => Some(Expr::Literal(v)),
    }
}

/// The output key of an un-aliased item: a field's name (`a.b.c` gives `c`, `a[0]` gives `a`),
/// a function's name, the inner name for a cast, else `_1`, `_2`... by position.
fn default_name(e: &Expr, index: usize) -> Box<str> {
    match e {
        Expr::Field(n) | Expr::Member(_, n) => n.clone(),
        Expr::Index(base, _) | Expr::Cast(base, _) => default_name(base, index),
        Expr::Call { func, .. } => Box::from(func.name()),
        _ => format!("_{}", index + 1).into_boxed_str(),
    }
}

/// Whether any expression of the query calls `func`.
pub(crate) fn calls(query: &Query, func: Func) -> bool {
    query.any(&mut |e| matches!(e, Expr::Call { func: f, .. } if *f == func))
}
