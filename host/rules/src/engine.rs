//! The rules engine: sees every message through a broker hook, hands the ones some enabled
//! rule's `FROM` filter matches to worker threads, evaluates each rule's SQL there and runs its
//! actions; failures go to the rule's error action with AWS's error document.
//!
//! # Threads and back-pressure
//!
//! The hook runs on the broker's I/O threads, so it never blocks there. With
//! [`EngineConfig::inline`] (`--rules-inline`, on by default in `shoal serve`), a rule that
//! cannot wait (no plugin or shadow action, no `get_thing_shadow()`: republish, archive,
//! webhook, stream, email only queue work or route at once) is evaluated and run right in the
//! hook, in the publisher's order, without a hand-off: less CPU per message and no nap's
//! latency, measured in docs/BENCHMARKS.md; the price is that a costly `WHERE` delays the other
//! connections of that I/O thread. Otherwise, and always for
//! the rules that may wait, the hook checks for a match and enqueues (the worker looks the
//! matching rules up itself): each worker thread owns a bounded
//! queue, and a message goes to the worker chosen
//! by its publisher's client id, so one device's messages are handled in the order it sent
//! them (a debouncing plugin sees readings in order). A queue nearly full holds back the
//! publishers of the messages bound for it, for a bounded time ([`Shard`]: back-pressure); a
//! full queue drops the message for the rules (it is still routed to subscribers) and
//! counts it in `shoal_rules_dropped_total`.
//! Workers are plain threads, not async tasks: plugin calls are synchronous and may run for
//! their deadline, and shadow reads and writes wait on the runtime from there.
//!
//! # What rules see
//!
//! Messages published by clients (MQTT, HTTP `POST /topics`), shadow requests included, and,
//! as on AWS, what rules publish (republishes, plugin publishes and alerts): a rule may route
//! another rule's output (a plugin raises alerts on `fleet/+/alerts`, another rule mails
//! them). Two guards keep that from looping: a rule never sees what it published itself, and a
//! message passes through at most [`MAX_HOPS`] rules after the client's (further output is
//! delivered to subscribers but skips the rules, counted in `shoal_rules_hop_limit_total`).
//! Shadow responses (`/accepted`, `/rejected`, `/documents`, `/delta`) are seen
//! as on AWS, with `clientid()` the requester's. The answers to a rule's own shadow updates
//! are that rule's output: a shadow action or a plugin's shadow-update is answered while the
//! rule runs, so the rule never sees those answers and other rules see them within the hop
//! limit; the answers to a republish onto a shadow topic come later, outside any rule, and
//! skip the rules. Either way a rule cannot loop through a shadow. A publish to `$aws/rules/{rule}/...` (Basic Ingest)
//! goes to that rule only, with `topic()` seeing the part after the prefix, and is not
//! delivered to subscribers.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst, fence,
};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::json;
use shoal_broker::Broker;
use shoal_broker::auth::Principal;
use shoal_broker::hook::{Admission, HookOutcome, MessageHook, Origin};
use shoal_broker::message::{ClientId, Message, QoS, now_ms};
use shoal_broker::metrics::StripedCounters;
use shoal_broker::topic::Topic;
use shoal_plugin_host::{
    Action as PluginAction, MessageRef as PluginMessage, Outcome, PluginFault, PluginHost,
};
use shoal_things::shadow::{ShadowKey, ShadowName, ShadowService, ThingName};

use crate::archive::{Archive, Record};
use crate::email::{Email, Mailer, SmtpConfig};
use crate::rule::{ActionSpec, Compiled, Rule, RuleError, RuleName, TopicRulePayload};
use crate::sql::{Ctx, EvalError, Output, ShadowRequest, Sql};
use crate::store::{RuleStore, StoredRule};
use crate::stream::{NewRecord, StreamStore, check_name};
use crate::stream_sink::{OnFailure, StreamSink};
use crate::webhook::{Request as WebhookRequest, Webhooks};

/// How many rules deep a message may be republished into further rules.
pub const MAX_HOPS: u8 = 4;

thread_local! {
    /// While a rule runs its actions on this thread: the rule (the address of its [`Live`],
    /// see [`live_id`]) and the hop count of the message it handles, so what those actions
    /// publish is attributed to it (see [`Hook`]).
    static RUNNING: std::cell::Cell<Option<(usize, u8)>> = const { std::cell::Cell::new(None) };
}

/// Which rule version a [`Live`] is, for [`RUNNING`]: its address. Cloning the `Arc` instead
/// would make every worker running the rule bump one shared count per message. A rule
/// redefined while its output is on the way is a new `Live`, so the new version may see one
/// output of the old (the hop limit still bounds any chain).
fn live_id(live: &Arc<Live>) -> usize {
    Arc::as_ptr(live).addr()
}

/// Marks the current thread as running `rule`'s actions for a message `hops` rules deep, until
/// dropped (nested runs restore the outer one).
struct Running(Option<(usize, u8)>);

impl Running {
    fn enter(rule: &Arc<Live>, hops: u8) -> Running {
        Running(RUNNING.replace(Some((live_id(rule), hops))))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.set(self.0.take());
    }
}

/// Basic Ingest's topic prefix.
const BASIC_INGEST: &str = "$aws/rules/";
/// Where the `alert` actions of plugins are published: `$shoal/alerts/{thing}` (`-` when the
/// alert names no thing).
pub const ALERT_TOPIC_PREFIX: &str = "$shoal/alerts/";
/// How long a shadow action or `get_thing_shadow()` waits for the shadow service.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(5);

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads (each with its own queue).
    pub workers: usize,
    /// Messages each worker's queue holds before new ones are dropped.
    pub queue_capacity: usize,
    /// Where `archive` actions write (`DATA/archive`); without one they fail.
    pub archive_dir: Option<std::path::PathBuf>,
    /// Records the archive writer may have waiting before new ones are dropped.
    pub archive_queue: usize,
    /// Webhook requests that may wait for a free slot before new ones are dropped.
    pub webhook_queue: usize,
    /// PEM roots https webhook targets are checked against (default: the system's bundle).
    pub webhook_ca_file: Option<std::path::PathBuf>,
    /// Stream records that may wait for the writer before new ones are dropped.
    pub stream_queue: usize,
    /// Records each stream keeps (older ones are trimmed).
    pub stream_max_len: u64,
    /// Webhook targets plugins may call by name (a plugin never sees the URL).
    pub webhook_targets: BTreeMap<String, WebhookTarget>,
    /// How often a shared rule store (Redis) is checked for other nodes' changes.
    pub sync_interval: Duration,
    /// Run the rules that never wait on the broker's I/O thread instead of a worker (see the
    /// module docs). Off in `EngineConfig::default()`, which the engine's own tests use to
    /// exercise the workers; `shoal serve` turns it on unless `--rules-inline false`.
    pub inline: bool,
    /// How long an idle worker naps before it looks at its queue again ([`Shard`]); zero:
    /// it sleeps at once and every job wakes it.
    pub nap: Duration,
    /// Most queued jobs a worker takes at once ([`DEFAULT_JOBS_AT_ONCE`]; 1: one at a time).
    /// A plugin gets the messages of the jobs taken together in one call ([`run_jobs`]).
    pub jobs_at_once: usize,
    /// The SMTP relay `email` actions use; without one they fail.
    pub smtp: Option<SmtpConfig>,
    /// Emails that may wait for the sender before new ones are dropped.
    pub email_queue: usize,
}

/// A webhook target an operator configured for plugins' `webhook` actions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// `http://host[:port]/path` or `https://...`.
    pub url: String,
    /// Extra request headers (`content-type` defaults to `application/json`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per attempt, in milliseconds (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    /// Further attempts after a connection error, a timeout or a 5xx (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
}

impl WebhookTarget {
    /// Checks the target as a rule's webhook action would be checked.
    pub fn check(&self, name: &str) -> Result<(), RuleError> {
        self.compile(name).map(|_| ())
    }

    fn compile(&self, name: &str) -> Result<Compiled, RuleError> {
        let spec = crate::rule::ActionSpec::Webhook(crate::rule::WebhookSpec {
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: None,
            timeout_ms: self.timeout_ms,
            retries: self.retries,
        });
        crate::rule::compile_action(&format!("webhook target {name:?}"), &spec)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 2,
            queue_capacity: 10_000,
            archive_dir: None,
            archive_queue: 100_000,
            webhook_queue: 10_000,
            webhook_ca_file: None,
            stream_queue: 100_000,
            stream_max_len: 1_000_000,
            webhook_targets: BTreeMap::new(),
            sync_interval: Duration::from_secs(2),
            inline: false,
            nap: DEFAULT_NAP,
            jobs_at_once: DEFAULT_JOBS_AT_ONCE,
            smtp: None,
            email_queue: 10_000,
        }
    }
}

/// What the engine's actions reach.
#[derive(Clone)]
pub struct EngineDeps {
    /// Where republishes go.
    pub broker: Arc<Broker>,
    /// Shadow actions and `get_thing_shadow()`.
    pub shadows: Arc<ShadowService>,
    /// Plugin actions.
    pub plugins: PluginHost,
    /// Where `stream` actions append.
    pub streams: Arc<dyn StreamStore>,
    /// The runtime shadow calls run on.
    pub rt: tokio::runtime::Handle,
}

/// Counters of one rule.
#[derive(Debug, Default)]
struct RuleCounters {
    /// Bumped for every message by every worker (and I/O thread, inline): `MATCHED`,
    /// `SELECTED`, `ACTIONS_OK`.
    hot: StripedCounters<3>,
    sql_errors: AtomicU64,
    actions_failed: AtomicU64,
    error_actions: AtomicU64,
    error_action_failures: AtomicU64,
}

const MATCHED: usize = 0;
const SELECTED: usize = 1;
const ACTIONS_OK: usize = 2;

/// A rule and its counters.
#[derive(Debug)]
struct Live {
    rule: Rule,
    counters: RuleCounters,
}

/// A rule as the API reports it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleInfo {
    /// Name.
    pub rule_name: String,
    /// Definition.
    pub topic_rule_payload: TopicRulePayload,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Counters since the rule was (re)defined or the server started.
    pub stats: RuleStats,
    /// The FROM filter (AWS's `topicPattern`), from the compiled statement.
    #[serde(skip)]
    pub topic_pattern: String,
}

/// A rule's counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStats {
    /// Messages whose topic matched.
    pub matched: u64,
    /// Messages that passed `WHERE`.
    pub selected: u64,
    /// Evaluations that failed.
    pub sql_errors: u64,
    /// Actions that succeeded.
    pub actions_ok: u64,
    /// Actions that failed.
    pub actions_failed: u64,
    /// Error actions run.
    pub error_actions: u64,
    /// Error actions that failed themselves.
    pub error_action_failures: u64,
}

impl Live {
    fn info(&self) -> RuleInfo {
        let c = &self.counters;
        RuleInfo {
            rule_name: self.rule.name.to_string(),
            topic_rule_payload: self.rule.payload.clone(),
            created_at_ms: self.rule.created_ms,
            topic_pattern: self
                .rule
                .sql
                .topic_filter()
                .map_or_else(String::new, |f| f.filter().to_string()),
            stats: RuleStats {
                matched: c.hot.get(MATCHED),
                selected: c.hot.get(SELECTED),
                sql_errors: c.sql_errors.load(Relaxed),
                actions_ok: c.hot.get(ACTIONS_OK),
                actions_failed: c.actions_failed.load(Relaxed),
                error_actions: c.error_actions.load(Relaxed),
                error_action_failures: c.error_action_failures.load(Relaxed),
            },
        }
    }
}

type RuleSet = BTreeMap<RuleName, Arc<Live>>;

/// FNV-1a, for the index's short keys (the first topic level): a message's lookup costs less
/// than with SipHash, and the keys are the operator's filters, not attacker-chosen at will.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Enabled rules that share one FROM filter: the filter is matched once for all of them (an
/// engine output or a message for inline rules carries one reference to the whole group; a
/// client's message carries none, its worker looks the group up again).
struct Group {
    filter: shoal_broker::topic::TopicFilter,
    rules: Arc<[Arc<Live>]>,
}

/// The enabled rules by the first level of their FROM filter, grouped by filter, so a message
/// is matched only against the filters that can match its topic's first level (plus those that
/// start with a wildcard), once per distinct filter, not once per rule.
#[derive(Default)]
struct Index {
    by_first: std::collections::HashMap<Box<str>, Vec<Group>, std::hash::BuildHasherDefault<Fnv>>,
    wildcard_first: Vec<Group>,
    /// Whether some indexed rule never waits (runs in the hook with `--rules-inline`).
    any_inline: bool,
    /// Whether some indexed rule calls a plugin (then a worker batches the calls).
    any_plugin: bool,
}

/// The rules a message goes to: usually one group, shared; several groups are flattened.
#[derive(Clone)]
enum Matched {
    One(Arc<[Arc<Live>]>),
    Many(Vec<Arc<Live>>),
}

impl Matched {
    fn rules(&self) -> &[Arc<Live>] {
        match self {
            Matched::One(g) => g,
            Matched::Many(v) => v,
        }
    }
}

/// The first level of a topic or filter.
fn first_level(s: &str) -> &str {
    match s.bytes().position(|b| b == b'/') {
        Some(i) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

impl Index {
    fn build(set: &RuleSet) -> Index {
        let mut by_filter: BTreeMap<&str, (shoal_broker::topic::TopicFilter, Vec<Arc<Live>>)> =
            BTreeMap::new();
        for live in set.values().filter(|l| l.rule.enabled()) {
            let Some(filter) = live.rule.sql.topic_filter() else {
                continue;
            };
            by_filter
                .entry(filter.filter())
                .or_insert_with(|| (filter.clone(), Vec::new()))
                .1
                .push(live.clone());
        }
        let mut index = Index {
            any_inline: set.values().any(|l| l.rule.enabled() && l.rule.inline),
            any_plugin: set.values().any(|l| {
                l.rule.enabled()
                    && l.rule
                        .actions
                        .iter()
                        .any(|(_, a)| matches!(a, Compiled::Plugin { .. }))
            }),
            ..Index::default()
        };
        for (text, (filter, rules)) in by_filter {
            let group = Group {
                filter,
                rules: rules.into(),
            };
            let first = first_level(text);
            if first == "+" || first == "#" {
                index.wildcard_first.push(group);
            } else {
                index.by_first.entry(first.into()).or_default().push(group);
            }
        }
        index
    }

    /// The groups whose FROM filter matches `topic`, in index order.
    fn groups_matching<'i>(&'i self, topic: &'i Topic) -> impl Iterator<Item = &'i Group> {
        self.by_first
            .get(first_level(topic.as_str()))
            .into_iter()
            .flatten()
            .chain(&self.wildcard_first)
            .filter(|g| g.filter.matches(topic))
    }

    /// Whether any enabled rule's FROM filter matches `topic` ([`Index::matching`] is `Some`).
    fn any_matching(&self, topic: &Topic) -> bool {
        self.groups_matching(topic).next().is_some()
    }

    /// The enabled rules whose FROM filter matches `topic`, borrowed, in the order
    /// [`Index::matching`] gives them.
    fn rules_matching<'i>(&'i self, topic: &'i Topic) -> impl Iterator<Item = &'i Arc<Live>> {
        self.groups_matching(topic).flat_map(|g| g.rules.iter())
    }

    /// The enabled rules whose FROM filter matches `topic`, `None` when there are none.
    fn matching(&self, topic: &Topic) -> Option<Matched> {
        let mut found: Option<Matched> = None;
        for g in self.groups_matching(topic) {
            found = Some(match found {
                None => Matched::One(g.rules.clone()),
                Some(Matched::One(first)) => {
                    Matched::Many(first.iter().chain(g.rules.iter()).cloned().collect())
                }
                Some(Matched::Many(mut v)) => {
                    v.extend(g.rules.iter().cloned());
                    Matched::Many(v)
                }
            });
        }
        found
    }
}

/// A per-rule metric family: name, help, and the counter it reads.
type Family = (&'static str, &'static str, fn(&RuleStats) -> u64);

/// One message for the workers.
struct Job {
    msg: Arc<Message>,
    /// Bytes of the topic rules do not see (Basic Ingest's prefix).
    skip: usize,
    from: Publisher,
    rules: JobRules,
    /// Rules this message passed through before (0: a client's).
    hops: u8,
}

/// Who published a job's message, as SQL functions and error documents name them.
#[derive(Clone)]
struct Publisher {
    client_id: ClientId,
    principal: Arc<str>,
    thing: Option<String>,
}

impl Publisher {
    fn of(origin: &Origin<'_>) -> Publisher {
        Publisher {
            client_id: origin.client_id.clone(),
            principal: origin.principal.id.clone(),
            thing: origin.principal.attributes.get("thingName").cloned(),
        }
    }
}

/// The rules a job runs.
enum JobRules {
    /// These: Basic Ingest's rule, the rules an engine output matched, or those left after
    /// the inline ones ran.
    Listed(Matched),
    /// The rules of the worker's current index whose filter matches the topic: a client's
    /// message, looked up again by the worker so that the hand-off clones no `Arc` shared by
    /// every message (its count would bounce between the cores).
    LookUp,
}

impl Job {
    fn new(msg: &Arc<Message>, from: Publisher, skip: usize, hops: u8, rules: JobRules) -> Job {
        Job {
            msg: msg.clone(),
            skip,
            from,
            rules,
            hops,
        }
    }

    /// The topic rules see.
    fn topic(&self) -> &str {
        self.msg.topic.as_str().get(self.skip..).unwrap_or_default()
    }

    /// The evaluation context of this message (SQL and templates).
    fn ctx<'j>(&'j self, services: &'j SqlServices<'j>) -> Ctx<'j> {
        Ctx::new(self.topic(), &self.msg.payload)
            .with_client_id(self.from.client_id.as_str())
            .with_principal(&self.from.principal)
            .with_timestamp(i64::try_from(self.msg.received_ms).unwrap_or(i64::MAX))
            .with_services(services)
    }

    /// The message's user properties as a plugin receives them (borrowed).
    fn properties(&self) -> Vec<(&str, &str)> {
        let props = &self.msg.props.user_properties;
        props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// The same message without its rules, for work finished later (a webhook's error action).
    fn detached(&self) -> Job {
        let none = JobRules::Listed(Matched::Many(Vec::new()));
        Job::new(&self.msg, self.from.clone(), self.skip, self.hops, none)
    }
}

#[derive(Debug, Default)]
struct EngineCounters {
    dropped: AtomicU64,
    /// Client messages whose publisher waited for room (back-pressure), and of those the
    /// waits that ran out of time (see [`Shard`]).
    held_back: AtomicU64,
    hold_timeouts: AtomicU64,
    ingest_unknown: AtomicU64,
    alerts: AtomicU64,
    hop_limit: AtomicU64,
}

struct Inner {
    rules: ArcSwap<RuleSet>,
    /// Rebuilt with every change of `rules`.
    index: ArcSwap<Index>,
    /// Whether rules that never wait run in the hook.
    inline: bool,
    /// [`EngineConfig::jobs_at_once`], at least 1.
    jobs_at_once: usize,
    /// Serializes definition changes (and their saves) and reloads.
    write: Mutex<()>,
    /// The shared store's revision the rules in memory reflect (`NO_REVISION` when the store
    /// is this node's own).
    revision: AtomicU64,
    store: Arc<dyn RuleStore>,
    queues: Vec<SyncSender<Work>>,
    /// One per queue: its depth and back-pressure state.
    shards: Vec<Shard>,
    counters: EngineCounters,
    deps: EngineDeps,
    /// The origin of what the engine publishes: hooks (the shadow service) see it, so a
    /// republish to `$aws/things/.../shadow/update` updates the shadow; the engine's own hook
    /// gives it to other rules only, at most [`MAX_HOPS`] deep.
    own_id: ClientId,
    own_principal: Principal,
    archive: Option<Archive>,
    webhooks: Webhooks,
    /// Plugins' webhook targets, checked at start.
    webhook_targets: BTreeMap<String, Compiled>,
    streams: StreamSink,
    stream_max_len: u64,
    mailer: Option<Mailer>,
}

/// How long a publisher is held back at most for one message (see [`Shard`]).
const MAX_HOLD: Duration = Duration::from_millis(100);

/// A worker that finds its queue empty naps this long before it looks again ([`Shard`],
/// [`EngineConfig::nap`]).
pub const DEFAULT_NAP: Duration = Duration::from_millis(1);
/// Naps in a row that find nothing before the worker sleeps until a sender wakes it.
const NAPS: u32 = 5;
/// At most this many jobs wait for a napping worker before the sender wakes it early.
const MAX_BATCH: u64 = 256;

/// The worker's wake-up state ([`Shard::state`]).
const AWAKE: u8 = 0;
const NAPPING: u8 = 1;
const ASLEEP: u8 = 2;

/// A worker queue's depth, for back-pressure. When a client's message would go to a queue
/// at least three quarters full, the publisher's connection waits ([`MessageHook::admit`])
/// until the queue is down to half, so the broker slows that publisher instead of the rules
/// skipping messages: a worker behind for want of CPU (quick rules, plugins that answer in
/// microseconds) drains in milliseconds. Slow work must not hold publishers for as long as
/// it is slow (a plugin spinning to its deadline, a shadow store that hangs), so a wait lasts
/// at most [`MAX_HOLD`]; one that runs out marks the queue stalled, and no one is held on it
/// again until it has drained to half: meanwhile a full queue drops messages for the rules,
/// as before, and slow work costs each publisher at most one [`MAX_HOLD`] per episode.
///
/// Wake-ups. A rule's work for one message takes a few microseconds, so at a high rate a
/// worker woken for every job (a futex wake on the I/O thread, a context switch on the
/// worker) spent about a fifth of its time switching. Instead, a worker whose queue is empty
/// naps (`nap`, [`EngineConfig::nap`]) and then takes whatever arrived meanwhile in one go;
/// senders wake a napping worker only once `batch` jobs wait. After [`NAPS`] empty naps it
/// sleeps, and then the next job wakes it at once, so an idle server does not tick. A job
/// waits at most one nap (plus the kernel's timer slack) before its rules run: a message
/// within five naps of the previous one may wait that long, a message after a quiet spell
/// does not. A zero nap means no naps: every job sent to a sleeping worker wakes it.
struct Shard {
    /// Jobs handed to the queue (by the I/O threads) and taken from it (by its worker only),
    /// on cache lines of their own: the depth is the difference.
    sent: Line,
    taken: Line,
    /// Depth at which publishers are held, and at which they are let go.
    high: u64,
    low: u64,
    stalled: AtomicBool,
    /// Publishers waiting now (the worker notifies only when there are some).
    waiting: AtomicUsize,
    drained: tokio::sync::Notify,
    /// [`AWAKE`], [`NAPPING`] or [`ASLEEP`]: read by every sender, written by the worker.
    state: StateLine,
    /// Jobs that may wait for a napping worker.
    batch: u64,
    /// One nap, and how many empty ones before the worker sleeps.
    nap: Duration,
    naps: u32,
    /// The worker's thread, set when it starts (before it ever naps or sleeps).
    worker: std::sync::OnceLock<std::thread::Thread>,
}

/// An atomic counter alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// The worker's state alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct StateLine(AtomicU8);

impl Shard {
    fn new(capacity: usize, nap: Duration) -> Shard {
        let capacity = capacity.max(1) as u64;
        Shard {
            sent: Line::default(),
            taken: Line::default(),
            high: capacity - (capacity / 4).max(1),
            low: capacity / 2,
            stalled: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            state: StateLine::default(),
            batch: (capacity / 8).clamp(1, MAX_BATCH),
            nap,
            naps: if nap.is_zero() { 0 } else { NAPS },
            worker: std::sync::OnceLock::new(),
        }
    }

    /// A job was handed to the queue: counts it and wakes the worker if it sleeps, or if it
    /// naps and a batch is waiting.
    fn sent(&self) {
        let sent = self.sent.0.fetch_add(1, Relaxed) + 1;
        // Pairs with the worker's fence between marking itself asleep and its last look at
        // the queue: either it sees this job, or this sees it asleep.
        fence(SeqCst);
        match self.state.0.load(Relaxed) {
            AWAKE => {}
            NAPPING if sent.saturating_sub(self.taken.0.load(Relaxed)) < self.batch => {}
            _ => self.wake(),
        }
    }

    /// Wakes the worker now (it may be awake already).
    fn wake(&self) {
        // For callers that handed over work without [`Shard::sent`]'s fence (a barrier).
        fence(SeqCst);
        if self.state.0.swap(AWAKE, SeqCst) != AWAKE
            && let Some(worker) = self.worker.get()
        {
            worker.unpark();
        }
    }

    /// Jobs in the queue now. `sent` is counted after the hand-off, so the worker may have
    /// taken a job not counted yet: the difference saturates at 0.
    fn depth(&self) -> u64 {
        self.sent.0.load(SeqCst).saturating_sub(self.taken.0.load(SeqCst))
    }

    /// The worker has taken `taken` jobs in all.
    fn taken(&self, taken: u64) {
        // SeqCst with the waiter's increment of `waiting` and its load of `taken`: one of the
        // two sides sees the other's write, so a waiter is not left to its time-out.
        self.taken.0.store(taken, SeqCst);
        // The depth reads `sent`, a line the I/O threads write for every job: only when
        // someone waits for the queue to drain, or it is marked stalled.
        let waiting = self.waiting.load(SeqCst) > 0;
        let stalled = self.stalled.load(Relaxed);
        if (waiting || stalled) && self.depth() <= self.low {
            if stalled {
                self.stalled.store(false, Relaxed);
            }
            if waiting {
                self.drained.notify_waiters();
            }
        }
    }
}

/// The rules engine. Cheap to clone.
#[derive(Clone)]
pub struct RulesEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RulesEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesEngine")
            .field("rules", &self.inner.rules.load().len())
            .finish_non_exhaustive()
    }
}

impl RulesEngine {
    /// Loads the saved rules, starts the workers and registers the broker hook. A saved rule
    /// that no longer compiles is skipped with an error in the log (never silently).
    pub fn start(
        config: EngineConfig,
        store: Arc<dyn RuleStore>,
        deps: EngineDeps,
    ) -> Result<RulesEngine, RuleError> {
        let revision = store.revision()?;
        let set = rule_set(store.load()?, &RuleSet::new());
        let webhook_targets = config
            .webhook_targets
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.compile(name)?)))
            .collect::<Result<BTreeMap<_, _>, RuleError>>()?;
        let mailer = config
            .smtp
            .clone()
            .map(|smtp| Mailer::start(&deps.rt, smtp, config.email_queue))
            .transpose()
            .map_err(|e| RuleError::Invalid(format!("the SMTP relay settings: {e}")))?;
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        let mut shards = Vec::new();
        for _ in 0..config.workers.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity.max(1));
            queues.push(tx);
            receivers.push(rx);
            shards.push(Shard::new(config.queue_capacity, config.nap));
        }
        let archive = match &config.archive_dir {
            Some(dir) => Some(
                Archive::start(dir.clone(), config.archive_queue)
                    .map_err(|e| RuleError::Store(format!("cannot start the archive writer: {e}")))?,
            ),
            None => None,
        };
        let engine = RulesEngine {
            inner: Arc::new(Inner {
                archive,
                webhooks: Webhooks::start(&deps.rt, config.webhook_queue, config.webhook_ca_file.as_deref())
                    .map_err(RuleError::Invalid)?,
                webhook_targets,
                streams: StreamSink::start(
                    &deps.rt,
                    deps.streams.clone(),
                    config.stream_queue,
                    config.stream_max_len,
                ),
                stream_max_len: config.stream_max_len.max(1),
                mailer,
                index: ArcSwap::from_pointee(Index::build(&set)),
                rules: ArcSwap::from_pointee(set),
                write: Mutex::new(()),
                inline: config.inline,
                jobs_at_once: config.jobs_at_once.max(1),
                revision: AtomicU64::new(revision.unwrap_or(NO_REVISION)),
                store,
                queues,
                shards,
                counters: EngineCounters::default(),
                deps,
                own_id: ClientId::generate(),
                own_principal: Principal {
                    id: Arc::from("rules-engine"),
                    attributes: Default::default(),
                    grants: None,
                },
            }),
        };
        for (i, rx) in receivers.into_iter().enumerate() {
            let inner = engine.inner.clone();
            std::thread::Builder::new()
                .name(format!("shoal-rules-{i}"))
                .spawn(move || worker(inner, i, rx))
                .map_err(|e| RuleError::Store(format!("cannot start a rules worker: {e}")))?;
        }
        if revision.is_some() {
            let weak = Arc::downgrade(&engine.inner);
            std::thread::Builder::new()
                .name("shoal-rules-sync".into())
                .spawn(move || poll_shared_rules(weak, config.sync_interval))
                .map_err(|e| RuleError::Store(format!("cannot start the rules sync thread: {e}")))?;
        }
        engine
            .inner
            .deps
            .broker
            .add_hook(Arc::new(Hook(engine.inner.clone())));
        tracing::info!(rules = engine.inner.rules.load().len(), "rules engine started");
        Ok(engine)
    }

    /// The store `stream` actions append to.
    pub fn streams(&self) -> &Arc<dyn StreamStore> {
        &self.inner.deps.streams
    }

    /// Records each stream keeps.
    pub fn stream_max_len(&self) -> u64 {
        self.inner.stream_max_len
    }

    /// Creates or replaces the rules an operator's configuration file defines (left alone
    /// when unchanged, so their counters and creation times survive a restart). Rules the file
    /// does not name are not touched.
    pub fn apply_configured(&self, rules: &BTreeMap<String, TopicRulePayload>) -> Result<(), RuleError> {
        for (name, payload) in rules {
            self.apply_one(name, payload)
                .map_err(|e| RuleError::Invalid(format!("rule {name:?}: {e}")))?;
        }
        Ok(())
    }

    fn apply_one(&self, name: &str, payload: &TopicRulePayload) -> Result<(), RuleError> {
        match self.get(name) {
            Ok(info) if &info.topic_rule_payload == payload => Ok(()),
            Ok(_) => self.replace(name, payload.clone()).map(|_| ()),
            Err(RuleError::NotFound(_)) => self.create(name, payload.clone()).map(|_| ()),
            Err(e) => Err(e),
        }
    }

    /// Every rule, by name.
    pub fn list(&self) -> Vec<RuleInfo> {
        self.inner.rules.load().values().map(|l| l.info()).collect()
    }

    /// One rule.
    pub fn get(&self, name: &str) -> Result<RuleInfo, RuleError> {
        let name = RuleName::parse(name)?;
        self.inner
            .rules
            .load()
            .get(&name)
            .map(|l| l.info())
            .ok_or_else(|| RuleError::NotFound(name.to_string()))
    }

    /// Creates a rule; fails if the name is taken.
    pub fn create(&self, name: &str, payload: TopicRulePayload) -> Result<RuleInfo, RuleError> {
        self.change(name, |existing| match existing {
            Some(_) => Err(RuleError::Exists(name.to_string())),
            None => Ok(Some(Rule::compile(name, payload, now_ms())?)),
        })
        .and_then(|info| info.ok_or_else(|| RuleError::NotFound(name.to_string())))
    }

    /// Replaces a rule's definition (keeping its creation time); fails if it does not exist.
    pub fn replace(&self, name: &str, payload: TopicRulePayload) -> Result<RuleInfo, RuleError> {
        self.change(name, |existing| match existing {
            Some(old) => Ok(Some(Rule::compile(name, payload, old.rule.created_ms)?)),
            None => Err(RuleError::NotFound(name.to_string())),
        })
        .and_then(|info| info.ok_or_else(|| RuleError::NotFound(name.to_string())))
    }

    /// Enables or disables a rule.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<RuleInfo, RuleError> {
        self.change(name, |existing| match existing {
            Some(old) => {
                let mut payload = old.rule.payload.clone();
                payload.rule_disabled = !enabled;
                Ok(Some(Rule::compile(name, payload, old.rule.created_ms)?))
            }
            None => Err(RuleError::NotFound(name.to_string())),
        })
        .and_then(|info| info.ok_or_else(|| RuleError::NotFound(name.to_string())))
    }

    /// Deletes a rule.
    pub fn delete(&self, name: &str) -> Result<(), RuleError> {
        self.change(name, |existing| match existing {
            Some(_) => Ok(None),
            None => Err(RuleError::NotFound(name.to_string())),
        })
        .map(|_| ())
    }

    /// Applies one definition change (`f` returns the new rule, or `None` to delete it):
    /// compute, save, swap. Returns the new rule's description.
    fn change(
        &self,
        name: &str,
        f: impl FnOnce(Option<&Arc<Live>>) -> Result<Option<Rule>, RuleError>,
    ) -> Result<Option<RuleInfo>, RuleError> {
        let key = RuleName::parse(name)?;
        let _serial = self.inner.write.lock();
        // Another node may have changed the shared rules since the last poll: start from them.
        sync_locked(&self.inner)?;
        let current = self.inner.rules.load_full();
        let mut next: RuleSet = (*current).clone();
        let result = match f(current.get(&key))? {
            Some(rule) => {
                let live = Arc::new(Live {
                    rule,
                    counters: RuleCounters::default(),
                });
                let info = live.info();
                next.insert(key.clone(), live);
                Some(info)
            }
            None => {
                next.remove(&key);
                None
            }
        };
        let stored: Vec<StoredRule> = next
            .values()
            .map(|l| StoredRule {
                name: l.rule.name.to_string(),
                created_ms: l.rule.created_ms,
                payload: l.rule.payload.clone(),
            })
            .collect();
        if let Some(rev) = self.inner.store.save(&stored)? {
            self.inner.revision.store(rev, Relaxed);
        }
        self.inner.index.store(Arc::new(Index::build(&next)));
        self.inner.rules.store(Arc::new(next));
        match &result {
            Some(info) => tracing::info!(
                rule = name,
                enabled = !info.topic_rule_payload.rule_disabled,
                "rule saved"
            ),
            None => tracing::info!(rule = name, "rule deleted"),
        }
        Ok(result)
    }

    /// At shutdown: waits until the rules workers have done the messages queued so far, then
    /// writes every buffered Parquet archive row out and flushes the archive's files. Blocks
    /// for at most `timeout`; `true` when all of it finished in time.
    pub fn flush_archive(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(self.inner.queues.len());
        let mut waiting = 0;
        for (queue, shard) in self.inner.queues.iter().zip(&self.inner.shards) {
            match crate::archive::send_by(queue, Work::Barrier(done_tx.clone()), deadline) {
                Ok(()) => {
                    shard.wake();
                    waiting += 1;
                }
                Err(crate::archive::SendByError::Stopped) => {}
                Err(crate::archive::SendByError::TimedOut) => return false,
            }
        }
        for _ in 0..waiting {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                return false;
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        self.inner.archive.as_ref().is_none_or(|a| a.flush(left))
    }

    /// Appends the `shoal_rules_*` metric families (Prometheus text format).
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.inner.counters;
        let archive = self.inner.archive.as_ref().map(|a| &*a.counters);
        let w = &self.inner.webhooks.counters;
        let st = &self.inner.streams.counters;
        let mail = self.inner.mailer.as_ref().map(|m| &*m.counters);
        let _ = writeln!(
            out,
            "# HELP shoal_rules_enqueued_total Messages handed to the rules workers.\n\
             # TYPE shoal_rules_enqueued_total counter\nshoal_rules_enqueued_total {}\n\
             # HELP shoal_rules_dropped_total Messages the rules skipped because the workers' queues were full.\n\
             # TYPE shoal_rules_dropped_total counter\nshoal_rules_dropped_total {}\n\
             # HELP shoal_rules_held_back_total Client messages whose publisher waited for room in a rules worker's queue (back-pressure).\n\
             # TYPE shoal_rules_held_back_total counter\nshoal_rules_held_back_total {}\n\
             # HELP shoal_rules_hold_timeouts_total Of those, the waits that ran out of time (the queue was behind on slow work).\n\
             # TYPE shoal_rules_hold_timeouts_total counter\nshoal_rules_hold_timeouts_total {}\n\
             # HELP shoal_rules_basic_ingest_unknown_total Basic Ingest publishes naming no enabled rule.\n\
             # TYPE shoal_rules_basic_ingest_unknown_total counter\nshoal_rules_basic_ingest_unknown_total {}\n\
             # HELP shoal_rules_hop_limit_total Rule outputs that skipped the rules, {MAX_HOPS} rules deep already.\n\
             # TYPE shoal_rules_hop_limit_total counter\nshoal_rules_hop_limit_total {}\n\
             # HELP shoal_rules_alerts_total Alerts raised by plugin actions.\n\
             # TYPE shoal_rules_alerts_total counter\nshoal_rules_alerts_total {}\n\
             # HELP shoal_rules_archive_written_total Documents the archive action wrote (JSON lines, rows of complete Parquet files).\n\
             # TYPE shoal_rules_archive_written_total counter\nshoal_rules_archive_written_total {}\n\
             # HELP shoal_rules_archive_buffered Parquet archive rows waiting for their file.\n\
             # TYPE shoal_rules_archive_buffered gauge\nshoal_rules_archive_buffered {}\n\
             # HELP shoal_rules_archive_dropped_total Archive records lost: the writer was behind, or their Parquet file could not be written.\n\
             # TYPE shoal_rules_archive_dropped_total counter\nshoal_rules_archive_dropped_total {}\n\
             # HELP shoal_rules_archive_errors_total Archive files that could not be opened or written.\n\
             # TYPE shoal_rules_archive_errors_total counter\nshoal_rules_archive_errors_total {}\n\
             # HELP shoal_rules_webhooks_total Webhook requests by result (retries count each further attempt).\n\
             # TYPE shoal_rules_webhooks_total counter\n\
             shoal_rules_webhooks_total{{result=\"sent\"}} {}\n\
             shoal_rules_webhooks_total{{result=\"failed\"}} {}\n\
             shoal_rules_webhooks_total{{result=\"retried\"}} {}\n\
             shoal_rules_webhooks_total{{result=\"dropped\"}} {}\n\
             # HELP shoal_rules_stream_records_total Stream records by result.\n\
             # TYPE shoal_rules_stream_records_total counter\n\
             shoal_rules_stream_records_total{{result=\"appended\"}} {}\n\
             shoal_rules_stream_records_total{{result=\"failed\"}} {}\n\
             shoal_rules_stream_records_total{{result=\"dropped\"}} {}\n\
             # HELP shoal_rules_emails_total Emails of email actions by result (retries count each further attempt).\n\
             # TYPE shoal_rules_emails_total counter\n\
             shoal_rules_emails_total{{result=\"sent\"}} {}\n\
             shoal_rules_emails_total{{result=\"failed\"}} {}\n\
             shoal_rules_emails_total{{result=\"retried\"}} {}\n\
             shoal_rules_emails_total{{result=\"dropped\"}} {}",
            self.inner
                .shards
                .iter()
                .map(|s| s.sent.0.load(Relaxed))
                .sum::<u64>(),
            c.dropped.load(Relaxed),
            c.held_back.load(Relaxed),
            c.hold_timeouts.load(Relaxed),
            c.ingest_unknown.load(Relaxed),
            c.hop_limit.load(Relaxed),
            c.alerts.load(Relaxed),
            archive.map_or(0, |a| a.written.load(Relaxed)),
            archive.map_or(0, |a| a.buffered.load(Relaxed)),
            archive.map_or(0, |a| a.dropped.load(Relaxed)),
            archive.map_or(0, |a| a.errors.load(Relaxed)),
            w.sent.load(Relaxed),
            w.failed.load(Relaxed),
            w.retried.load(Relaxed),
            w.dropped.load(Relaxed),
            st.appended.load(Relaxed),
            st.failed.load(Relaxed),
            st.dropped.load(Relaxed),
            mail.map_or(0, |m| m.sent.load(Relaxed)),
            mail.map_or(0, |m| m.failed.load(Relaxed)),
            mail.map_or(0, |m| m.retried.load(Relaxed)),
            mail.map_or(0, |m| m.dropped.load(Relaxed)),
        );
        let rules = self.inner.rules.load();
        let families: [Family; 7] = [
            (
                "shoal_rules_matched_total",
                "Messages whose topic matched the rule.",
                |s| s.matched,
            ),
            (
                "shoal_rules_selected_total",
                "Messages that passed the rule's WHERE.",
                |s| s.selected,
            ),
            (
                "shoal_rules_sql_errors_total",
                "Evaluations of the rule that failed.",
                |s| s.sql_errors,
            ),
            (
                "shoal_rules_actions_ok_total",
                "Actions of the rule that succeeded.",
                |s| s.actions_ok,
            ),
            (
                "shoal_rules_actions_failed_total",
                "Actions of the rule that failed.",
                |s| s.actions_failed,
            ),
            (
                "shoal_rules_error_actions_total",
                "Error actions the rule ran.",
                |s| s.error_actions,
            ),
            (
                "shoal_rules_error_action_failures_total",
                "Error actions of the rule that failed.",
                |s| s.error_action_failures,
            ),
        ];
        let infos: Vec<RuleInfo> = rules.values().map(|l| l.info()).collect();
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for info in &infos {
                let _ = writeln!(out, "{name}{{rule=\"{}\"}} {}", info.rule_name, get(&info.stats));
            }
        }
    }
}

/// The rules of a saved set, compiled. A rule whose definition is the one `current` runs is
/// kept as it is (with its counters); a saved rule that no longer compiles is skipped with an
/// error in the log (never silently).
fn rule_set(saved: Vec<StoredRule>, current: &RuleSet) -> RuleSet {
    let mut set = RuleSet::new();
    for stored in saved {
        let kept = RuleName::parse(&stored.name).ok().and_then(|name| {
            current
                .get(&name)
                .filter(|l| l.rule.payload == stored.payload && l.rule.created_ms == stored.created_ms)
                .cloned()
        });
        if let Some(live) = kept {
            set.insert(live.rule.name.clone(), live);
            continue;
        }
        match Rule::compile(&stored.name, stored.payload, stored.created_ms) {
            Ok(rule) => {
                set.insert(
                    rule.name.clone(),
                    Arc::new(Live {
                        rule,
                        counters: RuleCounters::default(),
                    }),
                );
            }
            Err(e) => tracing::error!(rule = %stored.name, error = %e, "skipping a saved rule"),
        }
    }
    set
}

/// `Inner::revision` when the store is not shared.
const NO_REVISION: u64 = u64::MAX;

/// Reloads the rules if the shared store's revision moved since they were read. The caller
/// holds `inner.write`. A rule whose saved definition is unchanged keeps its counters.
fn sync_locked(inner: &Inner) -> Result<(), RuleError> {
    let seen = inner.revision.load(Relaxed);
    if seen == NO_REVISION {
        return Ok(());
    }
    let Some(now) = inner.store.revision()? else {
        return Ok(());
    };
    if now == seen {
        return Ok(());
    }
    let next = rule_set(inner.store.load()?, &inner.rules.load_full());
    tracing::info!(
        rules = next.len(),
        revision = now,
        "rules changed on another node; reloaded"
    );
    inner.index.store(Arc::new(Index::build(&next)));
    inner.rules.store(Arc::new(next));
    inner.revision.store(now, Relaxed);
    Ok(())
}

/// The sync thread of a shared rule store: checks the revision every `interval` while the
/// engine lives.
fn poll_shared_rules(inner: std::sync::Weak<Inner>, interval: Duration) {
    loop {
        std::thread::park_timeout(interval);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _serial = inner.write.lock();
        if let Err(e) = sync_locked(&inner) {
            tracing::warn!(error = %e, "cannot check the shared rules for changes");
        }
    }
}

/// The broker hook: match and enqueue, nothing else.
struct Hook(Arc<Inner>);

impl MessageHook for Hook {
    /// Basic Ingest topics, and topics some enabled rule selects FROM.
    fn wants(&self, topic: &Topic) -> bool {
        topic.as_str().starts_with(BASIC_INGEST) || self.0.index.load().any_matching(topic)
    }

    /// Holds a client's publisher back while the worker queue its message goes to is nearly
    /// full, unless that queue is stalled (see [`Shard`]).
    fn admit(&self, topic: &Topic, client_id: &ClientId) -> Option<Admission> {
        let inner = &self.0;
        let i = shard(client_id.as_str(), inner.shards.len());
        let s = &inner.shards[i];
        if s.depth() < s.high || s.stalled.load(Relaxed) {
            return None;
        }
        // Whether the message will be queued: some rule it matches runs on the worker (with
        // `--rules-inline`, the rules that never wait run in the hook instead).
        let queued = |l: &Arc<Live>| !(inner.inline && l.rule.inline);
        let will_queue = match topic.as_str().strip_prefix(BASIC_INGEST) {
            Some(rest) => ingest_rule(inner, rest).0.is_some_and(|l| queued(&l)),
            None => inner.index.load().rules_matching(topic).any(queued),
        };
        if !will_queue {
            return None;
        }
        inner.counters.held_back.fetch_add(1, Relaxed);
        let inner = Arc::clone(inner);
        Some(Box::pin(async move {
            let s = &inner.shards[i];
            /// Counts this publisher in `waiting` while it waits, even if its connection
            /// drops the wait half-way.
            struct Waiting<'a>(&'a AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, SeqCst);
                }
            }
            s.waiting.fetch_add(1, SeqCst);
            let waiting = Waiting(&s.waiting);
            let drained = async {
                loop {
                    let notified = s.drained.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if s.depth() <= s.low {
                        return;
                    }
                    notified.await;
                }
            };
            let timed_out = tokio::time::timeout(MAX_HOLD, drained).await.is_err();
            drop(waiting);
            if timed_out {
                s.stalled.store(true, Relaxed);
                inner.counters.hold_timeouts.fetch_add(1, Relaxed);
            }
        }))
    }

    fn on_publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> HookOutcome {
        let inner = &self.0;
        // The engine's own output: how deep (which rule published it is looked at below).
        let own_output = origin.client_id == &inner.own_id;
        let running = if own_output { RUNNING.get() } else { None };
        let mut hops = 0;
        if own_output {
            let Some((id, h)) = running else {
                return HookOutcome::Continue;
            };
            if h >= MAX_HOPS {
                let n = inner.counters.hop_limit.fetch_add(1, Relaxed);
                if n.is_power_of_two() {
                    let rules = inner.rules.load();
                    let rule = rules
                        .values()
                        .find(|l| live_id(l) == id)
                        .map(|l| l.rule.name.as_str());
                    tracing::warn!(rule = rule.unwrap_or("?"), topic = %msg.topic, "a rule's output is {MAX_HOPS} rules deep: it skips the rules");
                }
                return HookOutcome::Continue;
            }
            hops = h + 1;
        }
        let topic = msg.topic.as_str();
        // Loaded once per message: the fast path below and the look-up after it share it.
        let index = inner.index.load();
        if !own_output && !topic.starts_with(BASIC_INGEST) {
            // The common case when no rule runs here (inline off, or only rules that wait,
            // such as plugin rules): a client's message for the workers, which look the
            // rules up themselves (no group `Arc` cloned here and dropped there).
            if !(inner.inline && index.any_inline) {
                if !index.any_matching(&msg.topic) {
                    return HookOutcome::Continue;
                }
                enqueue(
                    inner,
                    Job::new(msg, Publisher::of(&origin), 0, hops, JobRules::LookUp),
                );
                return HookOutcome::Continue;
            }
        }
        let (skip, matched, outcome): (usize, Option<Matched>, HookOutcome) =
            if let Some(rest) = topic.strip_prefix(BASIC_INGEST) {
                let (live, sub) = ingest_rule(inner, rest);
                match live {
                    Some(l) => (
                        topic.len() - sub.len(),
                        Some(Matched::Many(vec![l])),
                        HookOutcome::Consumed,
                    ),
                    None => {
                        inner.counters.ingest_unknown.fetch_add(1, Relaxed);
                        tracing::debug!(%topic, "Basic Ingest publish names no enabled rule; dropped");
                        return HookOutcome::Consumed;
                    }
                }
            } else {
                (0, index.matching(&msg.topic), HookOutcome::Continue)
            };
        // A rule never sees its own output (looked up only when some rule matched: most
        // outputs go to no rule).
        let matched = match (matched, running) {
            (Some(m), Some((id, _))) if m.rules().iter().any(|l| live_id(l) == id) => {
                let others: Vec<_> = m.rules().iter().filter(|l| live_id(l) != id).cloned().collect();
                (!others.is_empty()).then_some(Matched::Many(others))
            }
            (m, _) => m,
        };
        let Some(matched) = matched else {
            return outcome;
        };
        // Rules that never wait run here, on the I/O thread, in the publisher's order: no
        // hand-off, no worker wake-up. The others (the job's rules) go to a worker.
        let has_inline = inner.inline && matched.rules().iter().any(|l| l.rule.inline);
        let (deferred, with_inline) = if has_inline {
            let others = matched
                .rules()
                .iter()
                .filter(|l| !l.rule.inline)
                .cloned()
                .collect();
            (Matched::Many(others), Some(matched))
        } else {
            (matched, None)
        };
        let nothing_deferred = deferred.rules().is_empty();
        let job = Job::new(
            msg,
            Publisher::of(&origin),
            skip,
            hops,
            JobRules::Listed(deferred),
        );
        if let Some(all) = with_inline {
            let services = SqlServices { deps: &inner.deps };
            let ctx = job.ctx(&services);
            for live in all.rules().iter().filter(|l| l.rule.inline) {
                run_rule(inner, live, &job, &ctx);
            }
        }
        if nothing_deferred {
            return outcome;
        }
        enqueue(inner, job);
        outcome
    }
}

/// The enabled rule a Basic Ingest topic names (`rest` is the topic after
/// [`BASIC_INGEST`]), and the part of `rest` after the rule's name.
fn ingest_rule<'t>(inner: &Inner, rest: &'t str) -> (Option<Arc<Live>>, &'t str) {
    let (rule, sub) = rest.split_once('/').unwrap_or((rest, ""));
    let live = RuleName::parse(rule)
        .ok()
        .and_then(|n| inner.rules.load().get(&n).cloned())
        .filter(|l| l.rule.enabled());
    (live, sub)
}

/// Hands `job` to the worker of its publisher, or counts it dropped when that queue is full.
fn enqueue(inner: &Inner, job: Job) {
    let shard = shard(job.from.client_id.as_str(), inner.queues.len());
    match inner.queues[shard].try_send(Work::Job(job)) {
        Ok(()) => inner.shards[shard].sent(),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            let n = inner.counters.dropped.fetch_add(1, Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "rules workers are behind; messages skip the rules"
                );
            }
        }
    }
}

fn shard(client_id: &str, n: usize) -> usize {
    // FNV-1a: stable and cheap.
    let mut h = Fnv::default();
    std::hash::Hasher::write(&mut h, client_id.as_bytes());
    (std::hash::Hasher::finish(&h) % n.max(1) as u64) as usize
}

/// `get_thing_shadow()` and the clock for SQL evaluation on a worker.
struct SqlServices<'a> {
    deps: &'a EngineDeps,
}

impl crate::sql::Services for SqlServices<'_> {
    fn thing_shadow(&self, request: &ShadowRequest<'_>) -> Result<Option<serde_json::Value>, String> {
        let key = shadow_key(request.thing, request.shadow)?;
        let shadows = self.deps.shadows.clone();
        let read = self
            .deps
            .rt
            .block_on(async move { tokio::time::timeout(SHADOW_TIMEOUT, shadows.get(&key, b"")).await });
        match read {
            Ok(Ok(doc)) => Ok(Some(doc)),
            Ok(Err(r)) if r.error.code == 404 => Ok(None),
            Ok(Err(r)) => Err(format!("get_thing_shadow: {}", r.error)),
            Err(_) => Err("get_thing_shadow: the shadow service did not answer in time".into()),
        }
    }
}

fn shadow_key(thing: &str, shadow: Option<&str>) -> Result<ShadowKey, String> {
    let thing = ThingName::parse(thing).map_err(|e| format!("thing name {thing:?}: {e}"))?;
    let shadow = shadow
        .map(|s| ShadowName::parse(s).map_err(|e| format!("shadow name {s:?}: {e}")))
        .transpose()?;
    Ok(ShadowKey::new(thing, shadow))
}

/// What a rules worker's queue carries.
enum Work {
    Job(Job),
    /// Answer once everything queued before is done ([`RulesEngine::flush_archive`]).
    Barrier(SyncSender<()>),
}

/// The next work from the queue, napping or sleeping while there is none ([`Shard`]);
/// `None` when the engine is gone.
fn next_work(me: &Shard, rx: &Receiver<Work>) -> Option<Work> {
    use std::sync::mpsc::TryRecvError;
    let mut naps = 0;
    loop {
        match rx.try_recv() {
            Ok(work) => return Some(work),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if naps < me.naps {
            naps += 1;
            me.state.0.store(NAPPING, SeqCst);
            std::thread::park_timeout(me.nap);
        } else {
            me.state.0.store(ASLEEP, SeqCst);
            fence(SeqCst);
            match rx.try_recv() {
                Ok(work) => {
                    me.state.0.store(AWAKE, Relaxed);
                    return Some(work);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => std::thread::park(),
            }
        }
        me.state.0.store(AWAKE, Relaxed);
    }
}

/// Most jobs a worker takes from its queue at once by default: the messages whose plugin
/// calls it makes together ([`run_jobs`]).
pub const DEFAULT_JOBS_AT_ONCE: usize = 64;

fn worker(inner: Arc<Inner>, shard: usize, rx: Receiver<Work>) {
    let me = &inner.shards[shard];
    let _ = me.worker.set(std::thread::current());
    let mut taken = 0;
    let at_once = inner.jobs_at_once;
    let mut jobs = Vec::with_capacity(at_once);
    while let Some(work) = next_work(me, &rx) {
        // The job woken for, and whatever else waits already (up to a bound); a barrier
        // ends the batch and is answered once the jobs before it are done.
        let mut barrier = None;
        let mut next = Some(work);
        while let Some(work) = next.take() {
            match work {
                Work::Job(job) => jobs.push(job),
                Work::Barrier(done) => {
                    barrier = Some(done);
                    break;
                }
            }
            if jobs.len() < at_once {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            taken += jobs.len() as u64;
            me.taken(taken);
            run_jobs(&inner, &jobs);
            jobs.clear();
        }
        if let Some(done) = barrier {
            let _ = done.try_send(());
        }
    }
}

/// Runs the rules of `jobs`, in order. When some rule calls a plugin and more than one job
/// waits, in three steps: every job's rules are evaluated, then each plugin gets all its
/// messages in one batch ([`PluginHost::invoke_batch_ref`], which saves entering the
/// component per message), then every job's actions run, in order, with the plugins'
/// outcomes. Each message's actions still run in its rules' order and after the previous
/// message's; what changes is that a rule's SQL (and a plugin's host calls) for a later
/// message of the batch may run before an earlier message's actions have.
fn run_jobs(inner: &Arc<Inner>, jobs: &[Job]) {
    let services = SqlServices { deps: &inner.deps };
    let index = inner.index.load();
    if jobs.len() == 1 || !index.any_plugin {
        for job in jobs {
            let ctx = job.ctx(&services);
            match &job.rules {
                JobRules::Listed(rules) => {
                    for live in rules.rules() {
                        run_rule(inner, live, job, &ctx);
                    }
                }
                JobRules::LookUp => {
                    for live in index.rules_matching(&job.msg.topic) {
                        run_rule(inner, live, job, &ctx);
                    }
                }
            }
        }
        return;
    }
    let ctxs: Vec<Ctx<'_>> = jobs.iter().map(|job| job.ctx(&services)).collect();
    // 1. Every job's rules, evaluated.
    let mut evaluated: Vec<(usize, &Arc<Live>, Evaluation)> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let ctx = &ctxs[i];
        match &job.rules {
            JobRules::Listed(rules) => {
                for live in rules.rules() {
                    evaluated.push((i, live, evaluate(live, ctx)));
                }
            }
            JobRules::LookUp => {
                for live in index.rules_matching(&job.msg.topic) {
                    evaluated.push((i, live, evaluate(live, ctx)));
                }
            }
        }
    }
    // 2. The plugin calls of the selected rules' actions, in the order step 3 takes them.
    let properties: Vec<Vec<(&str, &str)>> = jobs.iter().map(Job::properties).collect();
    let mut calls: Vec<(&str, PluginMessage<'_>)> = Vec::new();
    for (i, live, evaluation) in &evaluated {
        let Some(Ok(selected)) = evaluation else {
            continue;
        };
        for (_, action) in &live.rule.actions {
            if let Compiled::Plugin { name } = action {
                let payload = selected.bytes(&live.rule.sql, &ctxs[*i]);
                calls.push((name, plugin_message(&jobs[*i], payload, &properties[*i])));
            }
        }
    }
    let outcomes = call_plugins(inner, &calls);
    drop(calls);
    // 3. The actions, job by job, rule by rule, with the outcomes in the same order.
    let mut outcomes = outcomes.into_iter();
    for (i, live, evaluation) in &evaluated {
        if let Some(evaluation) = evaluation {
            act(inner, live, &jobs[*i], &ctxs[*i], evaluation, &mut outcomes);
        }
    }
}

/// One outcome per call, in order: each plugin's calls go to it in one batch.
fn call_plugins(inner: &Inner, calls: &[(&str, PluginMessage<'_>)]) -> Vec<Outcome> {
    let plugins = &inner.deps.plugins;
    let mut outcomes = Vec::with_capacity(calls.len());
    let Some(&(first, _)) = calls.first() else {
        return outcomes;
    };
    // Usually one plugin: its messages as they are.
    if calls.iter().all(|(name, _)| *name == first) {
        let msgs: Vec<PluginMessage<'_>> = calls.iter().map(|(_, m)| *m).collect();
        plugins.invoke_batch_ref(first, &msgs, &mut outcomes);
        return outcomes;
    }
    let mut slots: Vec<Option<Outcome>> = vec![None; calls.len()];
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in calls {
        if !names.contains(name) {
            names.push(name);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let at: Vec<usize> = (0..calls.len()).filter(|&k| calls[k].0 == name).collect();
        let msgs: Vec<PluginMessage<'_>> = at.iter().map(|&k| calls[k].1).collect();
        out.clear();
        plugins.invoke_batch_ref(name, &msgs, &mut out);
        for (k, outcome) in at.into_iter().zip(out.drain(..)) {
            slots[k] = Some(outcome);
        }
    }
    outcomes.extend(slots.into_iter().map(|o| {
        o.unwrap_or_else(|| {
            Outcome::Failed(PluginFault::Unavailable(
                "the plugin host returned no outcome for this message".into(),
            ))
        })
    }));
    outcomes
}

/// One failed action, as AWS's error document lists it.
struct Failure {
    action: &'static str,
    resource: String,
    message: String,
}

fn aws_action_name(kind: &str) -> &'static str {
    match kind {
        "republish" => "RepublishAction",
        "shadow" => "ShadowAction",
        "plugin" => "PluginAction",
        "archive" => "ArchiveAction",
        "webhook" => "WebhookAction",
        "stream" => "StreamAction",
        "email" => "EmailAction",
        "http" => "HttpAction",
        _ => "Action",
    }
}

/// What a rule selected from a message that passed its `WHERE`.
enum Selected {
    /// `SELECT *`: the output document AWS's `SELECT *` gives (a JSON object in Shoal's
    /// compact form, anything else unchanged), built on first use; `None` once it is known
    /// that the payload already is that document (then it is borrowed, never copied).
    Payload(OnceCell<Option<Output>>),
    /// The output document.
    Output(Output),
}

impl Selected {
    /// The built output document, or `None` when it is the payload itself (`sql` and `ctx`
    /// are the rule's and the message's).
    fn built(&self, sql: &Sql, ctx: &Ctx<'_>) -> Option<&Output> {
        match self {
            Selected::Payload(cell) => cell
                .get_or_init(|| {
                    (!sql.payload_is_output(ctx)).then(|| {
                        // `SELECT *` cannot fail; were it to, the payload goes on unchanged.
                        sql.select(ctx)
                            .unwrap_or_else(|_| Output::Binary(ctx.payload().to_vec()))
                    })
                })
                .as_ref(),
            Selected::Output(output) => Some(output),
        }
    }

    /// The output document's bytes.
    fn bytes<'a>(&'a self, sql: &Sql, ctx: &'a Ctx<'_>) -> &'a [u8] {
        match self.built(sql, ctx) {
            Some(output) => output.as_bytes(),
            None => ctx.payload(),
        }
    }

    /// The output document: `Ok` with its text when it is JSON, `Err` with the bytes when
    /// it is binary.
    fn json<'a>(&'a self, sql: &Sql, ctx: &'a Ctx<'_>) -> Result<&'a str, &'a [u8]> {
        match self.built(sql, ctx) {
            Some(Output::Json(text)) => Ok(text),
            Some(Output::Binary(bytes)) => Err(bytes),
            // Compact JSON, so UTF-8 (checked again only for the archive's sake).
            None => std::str::from_utf8(ctx.payload()).map_err(|_| ctx.payload()),
        }
    }
}

/// A rule's verdict on a message: `None` when its `WHERE` let the message pass by, else what it
/// selected (or why it could not be evaluated).
type Evaluation = Option<Result<Selected, EvalError>>;

/// Counts the message as matched and evaluates the rule's SQL on it.
fn evaluate(live: &Live, ctx: &Ctx<'_>) -> Evaluation {
    live.counters.hot.add(MATCHED, 1);
    let sql = &live.rule.sql;
    match sql.filter(ctx) {
        Ok(false) => None,
        // `SELECT *`: built only when an action needs it (often it is the payload itself).
        Ok(true) if sql.selects_payload() => Some(Ok(Selected::Payload(OnceCell::new()))),
        Ok(true) => Some(sql.select(ctx).map(Selected::Output)),
        Err(e) => Some(Err(e)),
    }
}

fn run_rule(inner: &Arc<Inner>, live: &Arc<Live>, job: &Job, ctx: &Ctx<'_>) {
    if let Some(evaluation) = evaluate(live, ctx) {
        act(inner, live, job, ctx, &evaluation, &mut std::iter::empty());
    }
}

/// Runs a rule's actions on what it selected (or its error action when its evaluation
/// failed). `outcomes` holds the outcomes of its plugin actions, called ahead for a batch
/// ([`run_jobs`]), in order; a plugin action without one calls the plugin now.
fn act(
    inner: &Arc<Inner>,
    live: &Arc<Live>,
    job: &Job,
    ctx: &Ctx<'_>,
    evaluation: &Result<Selected, EvalError>,
    outcomes: &mut dyn Iterator<Item = Outcome>,
) {
    let c = &live.counters;
    let selected = match evaluation {
        Ok(selected) => selected,
        Err(e) => {
            c.sql_errors.fetch_add(1, Relaxed);
            tracing::debug!(rule = %live.rule.name, error = %e, "rule evaluation failed");
            let failure = Failure {
                action: "SqlEvaluation",
                resource: live.rule.name.to_string(),
                message: e.to_string(),
            };
            run_error_action(inner, live, job, ctx, &[failure]);
            return;
        }
    };
    c.hot.add(SELECTED, 1);
    let _running = Running::enter(live, job.hops);
    let mut failures = Vec::new();
    for entry @ (spec, action) in &live.rule.actions {
        let called = match action {
            Compiled::Plugin { .. } => outcomes.next(),
            _ => None,
        };
        match run_action(inner, live, entry, job, ctx, selected, false, called) {
            Ok(()) => {
                c.hot.add(ACTIONS_OK, 1);
            }
            Err((resource, message)) => {
                c.actions_failed.fetch_add(1, Relaxed);
                tracing::debug!(rule = %live.rule.name, action = spec.kind(), %resource, error = %message, "rule action failed");
                failures.push(Failure {
                    action: aws_action_name(spec.kind()),
                    resource,
                    message,
                });
            }
        }
    }
    if !failures.is_empty() {
        run_error_action(inner, live, job, ctx, &failures);
    }
}

fn run_error_action(inner: &Arc<Inner>, live: &Arc<Live>, job: &Job, ctx: &Ctx<'_>, failures: &[Failure]) {
    let Some(entry @ (spec, _)) = &live.rule.error_action else {
        tracing::warn!(
            rule = %live.rule.name,
            failures = failures.len(),
            first = %failures.first().map_or("", |f| f.message.as_str()),
            "rule action failed and the rule has no error action"
        );
        return;
    };
    let doc = json!({
        "ruleName": live.rule.name.as_str(),
        "topic": job.msg.topic.as_str(),
        "cloudwatchTraceId": uuid::Uuid::new_v4().to_string(),
        "clientId": job.from.client_id.as_str(),
        "base64OriginalPayload": base64::engine::general_purpose::STANDARD.encode(&job.msg.payload),
        "failures": failures.iter().map(|f| json!({
            "failedAction": f.action,
            "failedResource": f.resource,
            "errorMessage": f.message,
        })).collect::<Vec<_>>(),
    });
    live.counters.error_actions.fetch_add(1, Relaxed);
    // What the error action publishes is this rule's output, for the loop guard and hop count
    // (also after a failed evaluation, and when it runs later on another thread).
    let _running = Running::enter(live, job.hops);
    let output = Selected::Output(Output::Json(doc.to_string()));
    if let Err((resource, message)) = run_action(inner, live, entry, job, ctx, &output, true, None) {
        live.counters.error_action_failures.fetch_add(1, Relaxed);
        tracing::warn!(rule = %live.rule.name, action = spec.kind(), %resource, error = %message, "the rule's error action failed too");
    }
}

type ActionResult = Result<(), (String, String)>;

/// Runs one action. `error_path` is set when the action is the rule's error action: its later
/// failures are counted and logged, never sent to the error action again. `called`: a plugin
/// action's outcome when the plugin was called already ([`run_jobs`]).
#[allow(clippy::too_many_arguments)]
fn run_action(
    inner: &Arc<Inner>,
    live: &Arc<Live>,
    (spec, action): &(ActionSpec, Compiled),
    job: &Job,
    ctx: &Ctx<'_>,
    selected: &Selected,
    error_path: bool,
    called: Option<Outcome>,
) -> ActionResult {
    // How AWS's error document names this action when it fails after returning.
    let aws_name = aws_action_name(spec.kind());
    // The output document's bytes, built on first use (or the payload itself, borrowed).
    let out = || selected.bytes(&live.rule.sql, ctx);
    match action {
        Compiled::Republish { topic, qos } => {
            let topic = topic
                .render(ctx)
                .map_err(|e| (topic.source().to_string(), format!("topic template: {e}")))?;
            publish(inner, &topic, out().to_vec(), *qos, false).map_err(|e| (topic, e))
        }
        Compiled::Shadow { thing, shadow } => {
            let thing = thing
                .render(ctx)
                .map_err(|e| (thing.source().to_string(), format!("thingName template: {e}")))?;
            let shadow = shadow
                .as_ref()
                .map(|s| {
                    s.render(ctx)
                        .map_err(|e| (s.source().to_string(), format!("shadowName template: {e}")))
                })
                .transpose()?;
            update_shadow(inner, &thing, shadow.as_deref(), out()).map_err(|e| (thing, e))
        }
        Compiled::Plugin { name } => run_plugin(inner, live, name, job, ctx, selected, error_path, called)
            .map_err(|e| (name.clone(), e)),
        Compiled::Archive(format) => {
            let rule = live.rule.name.as_str();
            let Some(archive) = &inner.archive else {
                return Err((rule.to_string(), "no archive directory is configured".into()));
            };
            let line = match selected.json(&live.rule.sql, ctx) {
                Ok(text) => text.to_owned(),
                Err(bytes) => {
                    json!({ "payloadBase64": base64::engine::general_purpose::STANDARD.encode(bytes) })
                        .to_string()
                }
            };
            archive
                .append(Record {
                    rule: rule.to_string(),
                    at_ms: job.msg.received_ms,
                    line,
                    format: *format,
                })
                .map_err(|e| (format!("archive/{rule}"), e))
        }
        Compiled::Webhook {
            url,
            headers,
            body,
            timeout,
            retries,
        } => {
            let body = match body {
                Some(t) => t
                    .render(ctx)
                    .map_err(|e| (url.clone(), format!("body template: {e}")))?
                    .into_bytes(),
                None => out().to_vec(),
            };
            let on_failure = later_failure(inner, live, job, aws_name, url.clone(), error_path);
            inner
                .webhooks
                .post(WebhookRequest {
                    url: url.clone(),
                    headers: headers.clone(),
                    body,
                    timeout: *timeout,
                    retries: *retries,
                    on_failure,
                })
                .map_err(|e| (url.clone(), e))
        }
        Compiled::Stream { stream, key } => {
            let stream = stream
                .render(ctx)
                .map_err(|e| (stream.source().to_string(), format!("streamName template: {e}")))?;
            check_name("stream", &stream).map_err(|e| (stream.clone(), e.to_string()))?;
            let key = match key {
                Some(k) => k
                    .render(ctx)
                    .map_err(|e| (stream.clone(), format!("partitionKey template: {e}")))?,
                None => String::new(),
            };
            let on_failure = later_failure(inner, live, job, aws_name, stream.clone(), error_path);
            let record = NewRecord {
                stream: stream.clone(),
                key,
                data: out().to_vec(),
            };
            inner.streams.append(record, on_failure).map_err(|e| (stream, e))
        }
        Compiled::Email {
            to,
            subject,
            body,
            retries,
        } => {
            let to = to
                .iter()
                .map(|t| {
                    t.render(ctx)
                        .map_err(|e| (t.source().to_string(), format!("recipient template: {e}")))
                })
                .collect::<Result<Vec<String>, _>>()?;
            let resource = to.join(", ");
            let Some(mailer) = &inner.mailer else {
                return Err((resource, "no SMTP relay is configured (smtp_relay)".into()));
            };
            let subject = subject
                .render(ctx)
                .map_err(|e| (resource.clone(), format!("subject template: {e}")))?;
            let body = match body {
                Some(t) => t
                    .render(ctx)
                    .map_err(|e| (resource.clone(), format!("body template: {e}")))?,
                None => String::from_utf8_lossy(out()).into_owned(),
            };
            let on_failure = later_failure(inner, live, job, aws_name, resource.clone(), error_path);
            mailer
                .send(Email {
                    to,
                    subject,
                    body,
                    retries: *retries,
                    on_failure,
                })
                .map_err(|e| (resource, e))
        }
    }
}

/// The callback for an action that fails after `run_action` returned (a webhook's last retry,
/// a stream batch the store refused): counts the failure and runs the rule's error action.
fn later_failure(
    inner: &Arc<Inner>,
    live: &Arc<Live>,
    job: &Job,
    action: &'static str,
    resource: String,
    error_path: bool,
) -> OnFailure {
    let live = live.clone();
    if error_path {
        return Box::new(move |error: String| {
            live.counters.error_action_failures.fetch_add(1, Relaxed);
            tracing::warn!(rule = %live.rule.name, action, %resource, %error, "the rule's error action failed too");
        });
    }
    if live.rule.error_action.is_none() {
        // Nothing to run later: no copy of the message, no task.
        return Box::new(move |error: String| {
            live.counters.actions_failed.fetch_add(1, Relaxed);
            tracing::warn!(rule = %live.rule.name, action, %resource, %error, "rule action failed and the rule has no error action");
        });
    }
    let inner = inner.clone();
    let later = job.detached();
    Box::new(move |error: String| {
        live.counters.actions_failed.fetch_add(1, Relaxed);
        // The error action may wait on the runtime (shadows): not on its threads.
        tokio::task::spawn_blocking(move || {
            let services = SqlServices { deps: &inner.deps };
            let ctx = later.ctx(&services);
            let failure = Failure {
                action,
                resource,
                message: error,
            };
            run_error_action(&inner, &live, &later, &ctx, &[failure]);
        });
    })
}

fn publish(inner: &Inner, topic: &str, payload: Vec<u8>, qos: u8, retain: bool) -> Result<(), String> {
    let broker = &inner.deps.broker;
    let topic = Topic::parse(topic.to_string(), broker.topic_limits())
        .map_err(|e| format!("invalid topic {topic:?}: {e}"))?;
    let qos = if qos >= 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let routed = broker.publish(
        Message::new(topic, payload.into(), qos, retain),
        Some(Origin {
            client_id: &inner.own_id,
            principal: &inner.own_principal,
        }),
    );
    match routed.refused {
        // A watchdog request the broker refused (malformed, over the limit).
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

fn update_shadow(inner: &Inner, thing: &str, shadow: Option<&str>, body: &[u8]) -> Result<(), String> {
    let key = shadow_key(thing, shadow)?;
    let shadows = inner.deps.shadows.clone();
    let body = body.to_vec();
    // The responses carry the engine's origin, so rules do not see the answers to their own
    // updates (no loop through a shadow).
    let requester = inner.own_id.clone();
    let result = inner.deps.rt.block_on(async move {
        tokio::time::timeout(SHADOW_TIMEOUT, shadows.update_as(&key, &body, Some(&requester))).await
    });
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(r)) => Err(format!("shadow update rejected: {}", r.error)),
        Err(_) => Err("the shadow service did not answer in time".into()),
    }
}

/// The message a plugin gets: the job's, with the rule's output document as its payload.
fn plugin_message<'a>(
    job: &'a Job,
    payload: &'a [u8],
    properties: &'a [(&'a str, &'a str)],
) -> PluginMessage<'a> {
    PluginMessage {
        topic: job.topic(),
        payload,
        qos: match job.msg.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        },
        timestamp_ms: job.msg.received_ms,
        client_id: Some(job.from.client_id.as_str()),
        thing_name: job.from.thing.as_deref(),
        user_properties: properties,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_plugin(
    inner: &Arc<Inner>,
    live: &Arc<Live>,
    name: &str,
    job: &Job,
    ctx: &Ctx<'_>,
    selected: &Selected,
    error_path: bool,
    called: Option<Outcome>,
) -> Result<(), String> {
    let outcome = called.unwrap_or_else(|| {
        let properties = job.properties();
        let payload = selected.bytes(&live.rule.sql, ctx);
        inner
            .deps
            .plugins
            .invoke_ref(name, &plugin_message(job, payload, &properties))
    });
    let actions = match outcome {
        Outcome::Ok(actions) => actions,
        Outcome::Rejected(reason) => return Err(format!("plugin rejected the message: {reason}")),
        Outcome::Failed(fault) => return Err(fault.to_string()),
    };
    let mut errors = Vec::new();
    for action in actions {
        if let Err(e) = run_plugin_action(inner, live, name, job, action, error_path) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "actions the plugin returned failed: {}",
            errors.join("; ")
        ))
    }
}

fn run_plugin_action(
    inner: &Arc<Inner>,
    live: &Arc<Live>,
    plugin: &str,
    job: &Job,
    action: PluginAction,
    error_path: bool,
) -> Result<(), String> {
    match action {
        PluginAction::Publish(p) => publish(inner, &p.topic, p.payload.to_vec(), p.qos, p.retain),
        PluginAction::ShadowUpdate(u) => {
            update_shadow(inner, &u.thing, u.shadow_name.as_deref(), u.document.as_bytes())
        }
        PluginAction::Alert(a) => {
            inner.counters.alerts.fetch_add(1, Relaxed);
            let thing = a.thing.clone().unwrap_or_else(|| "-".into());
            let doc = json!({
                "severity": format!("{:?}", a.severity).to_lowercase(),
                "title": a.title,
                "body": a.body,
                "thing": a.thing,
                "plugin": plugin,
                "at": now_ms(),
            });
            tracing::info!(plugin, thing = %thing, title = %a.title, "plugin alert");
            publish(
                inner,
                &format!("{ALERT_TOPIC_PREFIX}{thing}"),
                doc.to_string().into_bytes(),
                1,
                false,
            )
        }
        PluginAction::StreamAppend(s) => {
            check_name("stream", &s.stream).map_err(|e| format!("stream-append: {e}"))?;
            let key = job
                .from
                .thing
                .clone()
                .unwrap_or_else(|| job.from.client_id.as_str().to_string());
            let on_failure = later_failure(
                inner,
                live,
                job,
                "PluginAction",
                format!("{plugin} stream-append {}", s.stream),
                error_path,
            );
            let record = NewRecord {
                stream: s.stream.clone(),
                key,
                data: s.payload.to_vec(),
            };
            inner
                .streams
                .append(record, on_failure)
                .map_err(|e| format!("stream-append to {:?}: {e}", s.stream))
        }
        PluginAction::Webhook(w) => {
            let Some(Compiled::Webhook {
                url,
                headers,
                timeout,
                retries,
                ..
            }) = inner.webhook_targets.get(&w.target)
            else {
                return Err(format!(
                    "webhook: no webhook target named {:?} is configured (webhook_targets)",
                    w.target
                ));
            };
            let on_failure = later_failure(
                inner,
                live,
                job,
                "PluginAction",
                format!("{plugin} webhook {}", w.target),
                error_path,
            );
            inner
                .webhooks
                .post(WebhookRequest {
                    url: url.clone(),
                    headers: headers.clone(),
                    body: w.body.to_vec(),
                    timeout: *timeout,
                    retries: *retries,
                    on_failure,
                })
                .map_err(|e| format!("webhook to target {:?}: {e}", w.target))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker asleep on an empty queue wakes for the next job, and a napping one takes
    /// jobs that arrive during its nap, whether or not they make a batch; with no naps it
    /// sleeps at once and every job wakes it. No job is left waiting (each is awaited for at
    /// most 5 s here; a lost wake-up would leave the worker asleep for ever).
    #[test]
    fn a_napping_or_sleeping_worker_takes_the_next_job() {
        for (capacity, nap) in [(8, 50), (80, 50), (8, 0)] {
            let shard = Arc::new(Shard::new(capacity, Duration::from_millis(nap)));
            assert_eq!(shard.batch, (capacity as u64 / 8).max(1));
            let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(capacity);
            let me = shard.clone();
            let worker = std::thread::spawn(move || {
                let _ = me.worker.set(std::thread::current());
                let mut taken = 0;
                while let Some(work) = next_work(&me, &rx) {
                    if let Work::Barrier(done) = work {
                        taken += 1;
                        me.taken(taken);
                        let _ = done.try_send(());
                    }
                }
                taken
            });
            // Waits until the worker is in one of `states`; returns the one it saw.
            let until = |states: &[u8]| {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let state = shard.state.0.load(SeqCst);
                    if states.contains(&state) {
                        return state;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the worker never reached {states:?}"
                    );
                    std::thread::yield_now();
                }
            };
            let mut napping = 0;
            for round in 0..20 {
                // Even rounds: asleep. Odd rounds: napping (five naps of 50 ms), or asleep
                // already if this thread was descheduled that long.
                let seen = if round % 2 == 0 || nap == 0 {
                    until(&[ASLEEP])
                } else {
                    until(&[NAPPING, ASLEEP])
                };
                napping += usize::from(seen == NAPPING);
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
                tx.send(Work::Barrier(done_tx)).unwrap();
                shard.sent();
                done_rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|_| panic!("round {round}: the job was not taken"));
            }
            if nap > 0 {
                assert!(napping > 0, "the worker was never caught napping");
            }
            drop(tx);
            shard.wake();
            assert_eq!(worker.join().unwrap(), 20);
        }
    }

    fn live(name: &str, from: &str, disabled: bool) -> Arc<Live> {
        let payload = TopicRulePayload {
            sql: format!("SELECT * FROM '{from}'"),
            description: None,
            actions: Vec::new(),
            rule_disabled: disabled,
            aws_iot_sql_version: None,
            error_action: None,
        };
        Arc::new(Live {
            rule: Rule::compile(name, payload, 0).unwrap(),
            counters: RuleCounters::default(),
        })
    }

    /// 1,000 site rules, a few wildcard ones, a disabled one.
    fn thousand() -> RuleSet {
        let mut set = RuleSet::new();
        for i in 0..1000 {
            let l = live(&format!("site{i}"), &format!("site{i}/+/telemetry"), false);
            set.insert(l.rule.name.clone(), l);
        }
        for (name, from, disabled) in [
            ("everything", "#", false),
            ("alerts", "+/+/alerts", false),
            ("off", "site7/#", true),
            ("shadows", "$aws/things/+/shadow/update", false),
            // Rules sharing a filter are matched as one group.
            ("twin", "site7/+/telemetry", false),
            ("twin_off", "site7/+/telemetry", true),
        ] {
            let l = live(name, from, disabled);
            set.insert(l.rule.name.clone(), l);
        }
        set
    }

    fn topic(t: &str) -> Topic {
        Topic::parse(t.to_string(), &shoal_broker::topic::TopicLimits::default()).unwrap()
    }

    fn names(v: Option<Matched>) -> Vec<String> {
        let rules = v.map(|m| m.rules().to_vec()).unwrap_or_default();
        let mut n: Vec<String> = rules.iter().map(|l| l.rule.name.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn the_index_finds_exactly_the_enabled_rules_a_linear_scan_finds() {
        let set = thousand();
        let index = Index::build(&set);
        for t in [
            "site7/a/telemetry",
            "site999/b/telemetry",
            "site7/a/alerts",
            "site7",
            "other/x",
            "$aws/things/t1/shadow/update",
            "$aws/things/t1/shadow/get",
        ] {
            let t = topic(t);
            let linear: Vec<Arc<Live>> = set
                .values()
                .filter(|l| l.rule.enabled() && l.rule.sql.matches(&t))
                .cloned()
                .collect();
            let linear = (!linear.is_empty()).then_some(Matched::Many(linear));
            assert_eq!(names(index.matching(&t)), names(linear), "{}", t.as_str());
        }
        assert_eq!(
            names(index.matching(&topic("site7/a/telemetry"))),
            ["everything", "site7", "twin"]
        );
        assert_eq!(
            names(index.matching(&topic("$aws/things/t1/shadow/update"))),
            ["shadows"]
        );
    }

    #[test]
    #[ignore = "benchmark: cargo +1.97.0 test -p shoal-rules --release --lib -- --ignored --nocapture"]
    fn topic_matching_with_a_thousand_rules() {
        let set = thousand();
        let index = Index::build(&set);
        let topics: Vec<Topic> = (0..1000)
            .map(|i| topic(&format!("site{i}/truck/telemetry")))
            .collect();
        let rounds = 200;
        let timed = |f: &dyn Fn(&Topic) -> usize| {
            let start = std::time::Instant::now();
            let mut found = 0;
            for _ in 0..rounds {
                for t in &topics {
                    found += f(t);
                }
            }
            (
                start.elapsed().as_nanos() as f64 / (rounds * topics.len()) as f64,
                found,
            )
        };
        let (indexed, a) = timed(&|t| index.matching(t).map_or(0, |m| m.rules().len()));
        let (linear, b) = timed(&|t| {
            set.values()
                .filter(|l| l.rule.enabled() && l.rule.sql.matches(t))
                .count()
        });
        assert_eq!(a, b);
        eprintln!(
            "1,004 rules, matching one topic: indexed {indexed:.0} ns, linear scan {linear:.0} ns ({:.0}x)",
            linear / indexed
        );
    }
}
