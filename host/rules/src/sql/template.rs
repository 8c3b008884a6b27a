//! Substitution templates: `${expression}` inside an action field, e.g. a republish topic
//! `fleet/${topic(2)}/alerts` or a webhook body.
//!
//! As in AWS, the expressions are evaluated against the incoming message (payload, topic,
//! functions), separately from the rule's `SELECT`: a template cannot see `AS` aliases.
//! Rendering: strings as they are (no quotes), `Undefined` as the empty string, numbers,
//! booleans, `null`, arrays and objects as JSON text, binary data as its UTF-8 text when it is
//! text and base64 otherwise. `$$` writes a literal `$` (AWS's republish action uses `$$aws`
//! for `$aws`); a `$` not followed by `{` is literal too.

use base64::Engine as _;

use super::ast::{Expr, PayloadKeys, Reads};
use super::error::{EvalError, SqlError};
use super::eval::{Ctx, Env, eval};
use super::json::write_json;
use super::parser::Parser;
use super::value::Value;

/// A parsed substitution template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    /// The payload keys the substitutions read (`None`: the whole document may be).
    keys: Option<PayloadKeys>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// Parses `text`, checking every `${...}` as an expression (errors carry positions within
    /// `text`).
    pub fn parse(text: &str) -> Result<Template, SqlError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while let Some(rel) = text[i..].find('$') {
            let at = i + rel;
            literal.push_str(&text[i..at]);
            match text.as_bytes().get(at + 1) {
                Some(b'$') => {
                    literal.push('$');
                    i = at + 2;
                }
                Some(b'{') => {
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    let mut parser = Parser::new(text, at + 2);
                    if parser_at_close(text, at + 2) {
                        return Err(SqlError::new(text, at, "empty substitution '${}'"));
                    }
                    let (expr, end) = parser.template_expr()?;
                    parts.push(Part::Expr(expr));
                    i = end;
                }
                _ => {
                    literal.push('$');
                    i = at + 1;
                }
            }
        }
        literal.push_str(&text[i..]);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let mut reads = Reads::default();
        for part in &parts {
            if let Part::Expr(e) = part {
                reads.expr(e);
            }
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
            keys: reads.keys(),
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template has no substitutions (rendering always gives the same text).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders the template for one message.
    pub fn render(&self, ctx: &Ctx<'_>) -> Result<String, EvalError> {
        let env = Env::root(ctx, self.keys.as_ref());
        // Room for the text and a substitution or two without growing (it is a topic, most
        // often).
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => render_value(&eval(e, &env)?, &mut out),
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for Template {
    type Err = SqlError;

    fn from_str(s: &str) -> Result<Template, SqlError> {
        Template::parse(s)
    }
}

fn parser_at_close(text: &str, from: usize) -> bool {
    text[from..].trim_start().starts_with('}')
}

fn render_value(v: &Value<'_>, out: &mut String) {
    match v.get() {
        Value::Undefined => {}
        Value::String(s) => out.push_str(s),
        Value::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        },
        other => write_json(other, out),
    }
}
