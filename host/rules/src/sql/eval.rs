//! Evaluation: the message context a statement runs against, the services the engine lends
//! it, and the tree walk.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::ast::{BinOp, CastType, Expr, Item, PayloadKeys, Query, Select, Subquery};
use super::error::EvalError;
use super::functions;
use super::json::parse_payload;
use super::ops;
use super::value::{Entries, Value, lookup, to_bool, to_str};

/// Which shadow `get_thing_shadow` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowRequest<'r> {
    /// The thing name (first argument).
    pub thing: &'r str,
    /// A named shadow (the middle argument of the three-argument form); `None` is the classic
    /// shadow.
    pub shadow: Option<&'r str>,
    /// The role ARN AWS requires as the last argument; Shoal's own one-argument form has none.
    /// The engine may check it against the rule's identity or ignore it.
    pub role_arn: Option<&'r str>,
}

/// What a statement may ask of the world outside the message. The rules engine implements
/// this; tests implement it with fixed answers. Every method has a default, so
/// [`SystemServices`] (the real clock and random uuids, no shadows) is an empty impl.
///
/// Evaluation is synchronous: an implementation of [`Services::thing_shadow`] that reads an
/// asynchronous store must bridge (a cache, or a blocking read on a thread allowed to block).
/// [`super::Sql::uses_thing_shadow`] tells the engine which statements need that.
pub trait Services: Send + Sync {
    /// The current time in milliseconds since the Unix epoch (`timestamp()`, unless the
    /// context fixes it).
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// A fresh random UUID in canonical text form (`newuuid()`).
    fn new_uuid(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// A uniformly distributed number in `[0, 1)` (`rand()`).
    fn random(&self) -> f64 {
        (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
    }

    /// The shadow document (`{"state": ..., "metadata": ..., "version": ...}`) or `None` when
    /// the thing or shadow does not exist (`get_thing_shadow` is then `Undefined`). An `Err`
    /// fails the evaluation, so the rule's error action learns about it.
    fn thing_shadow(&self, request: &ShadowRequest<'_>) -> Result<Option<serde_json::Value>, String> {
        let _ = request;
        Ok(None)
    }
}

/// The real clock, random uuids, and no shadows.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemServices;

impl Services for SystemServices {}

static SYSTEM: SystemServices = SystemServices;

/// The message a statement or template is evaluated against.
///
/// The payload is parsed on first use, and only if the statement reads it; evaluate every rule
/// that matches a message with the same context to share that work. A statement that names the
/// keys it reads (no `*`) has only those members built (the rest of the payload is checked,
/// not built); the first such parse is kept and serves every later statement whose keys it
/// covers, and the whole document is built at most once, for the others. `timestamp()` is read
/// once and then stable for the context.
pub struct Ctx<'c> {
    topic: &'c str,
    payload: &'c [u8],
    doc: OnceLock<Value<'c>>,
    /// The payload with only some top-level members built, and the keys it holds.
    slim: OnceLock<(PayloadKeys, Value<'c>)>,
    client_id: Option<&'c str>,
    principal: Option<&'c str>,
    account_id: Option<&'c str>,
    trace_id: Option<&'c str>,
    /// `timestamp()` when the caller fixed it (the message's arrival).
    fixed_timestamp: Option<i64>,
    /// Otherwise the clock, read on first use.
    timestamp: OnceLock<i64>,
    services: &'c dyn Services,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("client_id", &self.client_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl<'c> Ctx<'c> {
    /// A message published to `topic` (for Basic Ingest, without the `$aws/rules/{rule}/`
    /// prefix, which `topic()` does not see) carrying `payload`.
    pub fn new(topic: &'c str, payload: &'c [u8]) -> Ctx<'c> {
        Ctx {
            topic,
            payload,
            doc: OnceLock::new(),
            slim: OnceLock::new(),
            client_id: None,
            principal: None,
            account_id: None,
            trace_id: None,
            fixed_timestamp: None,
            timestamp: OnceLock::new(),
            services: &SYSTEM,
        }
    }

    /// The publisher's MQTT client id (`clientid()` is `n/a` without one, as for AWS's HTTP
    /// publishes).
    pub fn with_client_id(mut self, client_id: &'c str) -> Self {
        self.client_id = Some(client_id);
        self
    }

    /// The publisher's principal (`principal()`; AWS gives the certificate id for X.509
    /// clients).
    pub fn with_principal(mut self, principal: &'c str) -> Self {
        self.principal = Some(principal);
        self
    }

    /// The account that owns the rule (`accountid()`).
    pub fn with_account_id(mut self, account_id: &'c str) -> Self {
        self.account_id = Some(account_id);
        self
    }

    /// The message's trace id (`traceid()`).
    pub fn with_trace_id(mut self, trace_id: &'c str) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// Fixes `timestamp()` (milliseconds since the epoch) instead of asking the clock.
    pub fn with_timestamp(mut self, ms: i64) -> Self {
        self.fixed_timestamp = Some(ms);
        self
    }

    /// The services behind `get_thing_shadow`, `newuuid`, `rand` and the clock.
    pub fn with_services(mut self, services: &'c dyn Services) -> Self {
        self.services = services;
        self
    }

    pub(crate) fn topic(&self) -> &'c str {
        self.topic
    }

    pub(crate) fn payload(&self) -> &'c [u8] {
        self.payload
    }

    pub(crate) fn client_id(&self) -> Option<&'c str> {
        self.client_id
    }

    pub(crate) fn principal(&self) -> Option<&'c str> {
        self.principal
    }

    pub(crate) fn account_id(&self) -> Option<&'c str> {
        self.account_id
    }

    pub(crate) fn trace_id(&self) -> Option<&'c str> {
        self.trace_id
    }

    pub(crate) fn services(&self) -> &'c dyn Services {
        self.services
    }

    pub(crate) fn timestamp_ms(&self) -> i64 {
        match self.fixed_timestamp {
            Some(ms) => ms,
            None => *self.timestamp.get_or_init(|| self.services.now_ms()),
        }
    }

    /// The payload as a document: an object, or the raw bytes.
    pub(crate) fn doc(&self) -> &Value<'c> {
        self.doc.get_or_init(|| parse_payload(self.payload, None))
    }

    /// The payload as a document holding at least the top-level members named in `keys`
    /// (`None`: every member). Either way it is an object exactly when [`Ctx::doc`] is one.
    pub(crate) fn doc_for(&self, keys: Option<&PayloadKeys>) -> &Value<'c> {
        if let Some(keys) = keys
            && self.doc.get().is_none()
        {
            let (held, slim) = self
                .slim
                .get_or_init(|| (Arc::clone(keys), parse_payload(self.payload, Some(keys))));
            if Arc::ptr_eq(held, keys) || keys.iter().all(|k| held.contains(k)) {
                return slim;
            }
        }
        self.doc()
    }
}

/// Where an expression is evaluated: the message, and the document bare names refer to.
pub(crate) struct Env<'a, 'c> {
    pub(crate) ctx: &'a Ctx<'c>,
    /// The element a nested `SELECT` is looking at; `None` at the top level, where the
    /// document is the payload, parsed only when something reads it.
    elem: Option<&'a Value<'a>>,
    /// The payload keys the statement or template being evaluated reads (`None`: any).
    keys: Option<&'a PayloadKeys>,
}

impl<'a, 'c> Env<'a, 'c> {
    /// The top level of a statement or template that reads the payload keys `keys`
    /// ([`super::ast::Reads`]).
    pub(crate) fn root(ctx: &'a Ctx<'c>, keys: Option<&'a PayloadKeys>) -> Env<'a, 'c> {
        Env {
            ctx,
            elem: None,
            keys,
        }
    }

    /// The document bare names and `*` refer to (never a [`Value::Ref`]: an element of a
    /// built array may be one, and is looked through).
    pub(crate) fn doc(&self) -> &'a Value<'a> {
        match self.elem {
            Some(e) => e.get(),
            None => self.ctx.doc_for(self.keys),
        }
    }

    /// Whether this is the top level (the document is the message payload).
    pub(crate) fn is_root(&self) -> bool {
        self.elem.is_none()
    }
}

/// Evaluates an expression.
pub(crate) fn eval<'a>(e: &'a Expr, env: &Env<'a, '_>) -> Result<Value<'a>, EvalError> {
    Ok(match e {
        Expr::Literal(v) => Value::view(v),
        Expr::Payload => Value::view(env.doc()),
        Expr::Field(name) => match env.doc() {
            // A `match`, not `map_or`: an eager `Undefined` left over would be dropped through
            // the drop glue, out of line.
            Value::Object(entries) => match lookup(entries, name) {
                Some(v) => Value::view(v),
                None => Value::Undefined,
            },
            _ => Value::Undefined,
        },
        Expr::Member(base, name) => member(eval(base, env)?, name),
        Expr::Index(base, key) => {
            let base = eval(base, env)?;
            let key = eval(key, env)?;
            functions::get(base, &key)
        }
        Expr::Neg(inner) => ops::negate(&eval(inner, env)?),
        Expr::Not(inner) => to_bool(&eval(inner, env)?).map_or(Value::Undefined, |b| Value::Bool(!b)),
        Expr::Binary(BinOp::And, l, r) => {
            let l = to_bool(&eval(l, env)?);
            if l == Some(false) {
                return Ok(Value::Bool(false));
            }
            match (l, to_bool(&eval(r, env)?)) {
                (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Undefined,
            }
        }
        Expr::Binary(BinOp::Or, l, r) => {
            let l = to_bool(&eval(l, env)?);
            if l == Some(true) {
                return Ok(Value::Bool(true));
            }
            match (l, to_bool(&eval(r, env)?)) {
                (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Undefined,
            }
        }
        // The commonest `WHERE` term, `field <op> literal` (`temp > 40`), compares the stored
        // values in place: no operand values built, no recursive calls, nothing to drop.
        Expr::Binary(op, l, r) if let (Expr::Field(name), Expr::Literal(lit)) = (&**l, &**r) => {
            match env.doc() {
                Value::Object(entries) => match lookup(entries, name) {
                    Some(v) => ops::binary(*op, v, lit),
                    None => Value::Undefined,
                },
                _ => Value::Undefined,
            }
        }
        Expr::Binary(op, l, r) => {
            let l = eval(l, env)?;
            let r = eval(r, env)?;
            let out = ops::binary(*op, &l, &r);
            discard(l);
            discard(r);
            out
        }
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            let subject = match operand {
                Some(o) => {
                    let v = eval(o, env)?;
                    if v.is_undefined() {
                        return Ok(Value::Undefined);
                    }
                    Some(v)
                }
                None => None,
            };
            for (when, then) in whens {
                let w = eval(when, env)?;
                let hit = match &subject {
                    Some(s) => !w.is_undefined() && ops::equals(s, &w),
                    None => to_bool(&w) == Some(true),
                };
                if hit {
                    return eval(then, env);
                }
            }
            match otherwise {
                Some(o) => eval(o, env)?,
                None => Value::Undefined,
            }
        }
        Expr::Call { func, args, prepared } => functions::call(*func, args, prepared.as_deref(), env)?,
        Expr::Cast(inner, ty) => cast(eval(inner, env)?, *ty),
        Expr::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let v = eval(item, env)?;
                if !v.is_undefined() {
                    out.push(v);
                }
            }
            Value::Array(out)
        }
        Expr::Object(entries) => {
            let mut out: Entries<'a> = Vec::with_capacity(entries.len());
            for (k, item) in entries {
                let v = eval(item, env)?;
                if !v.is_undefined() {
                    put(&mut out, Cow::Borrowed(k), v);
                }
            }
            Value::Object(out)
        }
        Expr::Subquery(sub) => subquery(sub, env)?,
    })
}

/// `value.name`
fn member<'a>(v: Value<'a>, name: &str) -> Value<'a> {
    match v {
        Value::Ref(Value::Object(entries)) => match lookup(entries, name) {
            Some(v) => Value::view(v),
            None => Value::Undefined,
        },
        Value::Object(mut entries) => match entries.iter().rposition(|(k, _)| k == name) {
            Some(i) => entries.swap_remove(i).1,
            None => Value::Undefined,
        },
        _ => Value::Undefined,
    }
}

/// `cast(value AS type)`, by AWS's casting tables (numbers round down to `Int`; booleans
/// cast to and from numbers; `Null` casts to nothing).
fn cast(v: Value<'_>, ty: CastType) -> Value<'_> {
    use super::value::{Num, whole_to_i64};
    match ty {
        CastType::Int => match v.get() {
            Value::Bool(b) => Value::Int(i64::from(*b)),
            _ => match Num::of(&v) {
                Some(Num::Int(i)) => Value::Int(i),
                Some(Num::Dec(d)) => whole_to_i64(d.floor()).map_or(Value::Undefined, Value::Int),
                None => Value::Undefined,
            },
        },
        CastType::Decimal => match v.get() {
            Value::Bool(b) => Value::Decimal(if *b { 1.0 } else { 0.0 }),
            _ => match Num::of(&v) {
                Some(n) => Value::Decimal(n.f64()),
                None => Value::Undefined,
            },
        },
        CastType::Bool => match v.get() {
            Value::Int(i) => Value::Bool(*i != 0),
            Value::Decimal(d) => Value::Bool(*d != 0.0),
            _ => to_bool(&v).map_or(Value::Undefined, Value::Bool),
        },
        CastType::String => match v {
            Value::String(s) => Value::String(s),
            ref other => {
                to_str(other).map_or(Value::Undefined, |s| Value::String(Cow::Owned(s.into_owned())))
            }
        },
    }
}

/// Sets `key` in `entries` to `v`, replacing an existing key in place.
fn put<'a>(entries: &mut Entries<'a>, key: Cow<'a, str>, v: Value<'a>) {
    match entries.iter().rposition(|(k, _)| *k == key) {
        Some(i) => entries[i].1 = v,
        None => entries.push((key, v)),
    }
}

/// Sets `path` in `entries` to `v`, replacing an existing key in place and creating the
/// objects a dotted alias (`AS a.b`) walks through.
pub(crate) fn insert<'a>(entries: &mut Entries<'a>, path: &'a [Box<str>], v: Value<'a>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        put(entries, Cow::Borrowed(first), v);
        return;
    }
    let i = match entries.iter().rposition(|(k, _)| k == first.as_ref()) {
        Some(i) => i,
        None => {
            entries.push((Cow::Borrowed(first), Value::Object(Vec::new())));
            entries.len() - 1
        }
    };
    let slot = &mut entries[i].1;
    let mut inner: Entries<'a> = match std::mem::replace(slot, Value::Undefined) {
        Value::Object(o) => o,
        Value::Ref(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_ref()), Value::view(v)))
            .collect(),
        _ => Vec::new(),
    };
    insert(&mut inner, rest, v);
    *slot = Value::Object(inner);
}

/// Runs a `SELECT` list (or `SELECT VALUE`) against the environment's document.
pub(crate) fn project<'a>(select: &'a Select, env: &Env<'a, '_>) -> Result<Value<'a>, EvalError> {
    match select {
        Select::Value(e) => eval(e, env),
        Select::Items(items) => {
            let mut out: Entries<'a> = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Star => {
                        if let Value::Object(entries) = env.doc() {
                            if out.is_empty() {
                                out.extend(
                                    entries
                                        .iter()
                                        .map(|(k, v)| (Cow::Borrowed(k.as_ref()), Value::view(v))),
                                );
                            } else {
                                for (k, v) in entries {
                                    put(&mut out, Cow::Borrowed(k), Value::view(v));
                                }
                            }
                        }
                    }
                    Item::Expr { expr, name } => {
                        let v = eval(expr, env)?;
                        if !v.is_undefined() {
                            insert(&mut out, name, v);
                        }
                    }
                }
            }
            Ok(Value::Object(out))
        }
    }
}

/// Whether a `WHERE` passes: only `true` (or the string "true") does; `Undefined` is false.
pub(crate) fn passes<'a>(filter: Option<&'a Expr>, env: &Env<'a, '_>) -> Result<bool, EvalError> {
    match filter {
        None => Ok(true),
        Some(f) => {
            let v = eval(f, env)?;
            let pass = to_bool(&v) == Some(true);
            discard(v);
            Ok(pass)
        }
    }
}

/// Drops `v`, inline and without a call when it owns nothing (scalars, views): most values
/// an evaluation makes and throws away are those, and the out-of-line drop glue `Value`
/// otherwise gets was a tenth of the inline rules' instructions.
#[inline(always)]
pub(crate) fn discard(v: Value<'_>) {
    match v {
        Value::String(_) | Value::Array(_) | Value::Object(_) | Value::Binary(_) => drop(v),
        Value::Undefined
        | Value::Null
        | Value::Bool(_)
        | Value::Int(_)
        | Value::Decimal(_)
        | Value::Ref(_) => std::mem::forget(v),
    }
}

/// A nested `(SELECT ... FROM source WHERE ...)`: runs the query once per element of the
/// source array, each element being the document its names refer to; the results form an
/// array (`Undefined` results are dropped). A source that is not an array is `Undefined`.
fn subquery<'a>(sub: &'a Subquery, env: &Env<'a, '_>) -> Result<Value<'a>, EvalError> {
    let source = eval(&sub.source, env)?;
    match source {
        Value::Ref(Value::Array(items)) => run_each(&sub.query, items, env),
        Value::Array(items) => {
            // The elements live only in this frame, so the results are copied out.
            let out = run_each(&sub.query, &items, env)?;
            Ok(out.into_owned())
        }
        _ => Ok(Value::Undefined),
    }
}

fn run_each<'a>(query: &'a Query, items: &'a [Value<'a>], env: &Env<'a, '_>) -> Result<Value<'a>, EvalError> {
    let mut out = Vec::new();
    for item in items {
        let inner = Env {
            ctx: env.ctx,
            elem: Some(item),
            keys: env.keys,
        };
        if !passes(query.filter.as_ref(), &inner)? {
            continue;
        }
        let v = project(&query.select, &inner)?;
        if !v.is_undefined() {
            out.push(v);
        }
    }
    Ok(Value::Array(out))
}
