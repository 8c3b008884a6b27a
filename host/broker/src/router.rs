//! The subscription trie: which sessions want a message published on a topic.
//!
//! One node per topic level. A node's literal children are in a map by level; its `+` and `#`
//! children are fields of their own, so matching a level costs one map lookup (the literal
//! level: a topic name holds no wildcards) and two pointer checks, instead of three lookups.
//! A node holds plain subscriptions by session id and shared-subscription groups by name. The whole trie sits behind one `RwLock` in the broker: matching takes the read
//! lock for a walk of a few levels, (un)subscribing takes the write lock. A lock-free trie was
//! rejected for now: subscription changes are rare next to publishes, and an uncontended read
//! lock costs tens of nanoseconds.
//!
//! The maps hash with foldhash (seeded at random per process and per map) rather than SipHash:
//! every publish hashes one level per trie step, and foldhash is built for the short keys
//! topics are made of (its own benchmarks put it several times faster than SipHash there; none
//! here measures the hasher alone: the trie walk with it is in docs/BENCHMARKS.md). It
//! resists HashDoS less strongly than SipHash (its seed is random, its function not
//! cryptographic): a client that found colliding levels could slow the lookups through the
//! node holding them, at the root every publish. Filters come only from clients the broker
//! admitted, bounded in number and length; SipHash stays an option if an operator needs the
//! stronger guarantee for anonymous listeners.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::message::{ClientId, QoS};
use crate::session::{Session, SubOptions};
use crate::topic::{Topic, TopicFilter};

/// The trie's maps (see the module documentation for the hasher).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
struct Entry {
    session: Arc<Session>,
    opts: SubOptions,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Entry>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by literal level.
    children: Map<Box<str>, Node>,
    /// The `+` child.
    plus: Option<Box<Node>>,
    /// The `#` child.
    hash: Option<Box<Node>>,
    direct: Map<u64, Entry>,
    groups: Map<Box<str>, Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.direct.is_empty()
            && self.groups.is_empty()
    }

    /// The child for filter level `level` (`+`, `#` or a literal), created if missing.
    fn child_or_default(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_default().as_mut(),
            "#" => self.hash.get_or_insert_default().as_mut(),
            _ => self.children.entry(Box::from(level)).or_default(),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

/// One session's share of a published message, after merging every subscription of that
/// session that matched.
#[derive(Debug, Clone)]
pub struct Target {
    /// The receiving session.
    pub session: Arc<Session>,
    /// Highest QoS among its matching subscriptions.
    pub qos: QoS,
    /// Retain As Published on any matching subscription.
    pub retain_as_published: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
}

/// The subscription trie.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    count: usize,
}

impl Router {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// `true` when nobody subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `session`'s subscription on `filter`. Returns `true` if it is new.
    pub fn subscribe(&mut self, filter: &TopicFilter, session: &Arc<Session>, opts: SubOptions) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = node.child_or_default(level);
        }
        let entry = Entry {
            session: session.clone(),
            opts,
        };
        let new = match filter.share_group() {
            None => node.direct.insert(session.id, entry).is_none(),
            Some(g) => {
                let group = node.groups.entry(Box::from(g)).or_default();
                if let Some(e) = group.members.iter_mut().find(|e| e.session.id == session.id) {
                    *e = entry;
                    false
                } else {
                    group.members.push(entry);
                    true
                }
            }
        };
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes `session_id`'s subscription on `filter`. Returns `true` if there was one.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let removed = remove(&mut self.root, &levels, filter.share_group(), session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Whether any subscription (plain or shared) matches `topic`: [`Router::targets`] would
    /// find someone, unless No Local excludes the publisher. Allocates nothing.
    pub fn has_match(&self, topic: &Topic) -> bool {
        if self.count == 0 {
            return false;
        }
        with_levels(topic, |levels| {
            any_match(&self.root, levels, 0, topic.is_system())
        })
    }

    /// Every session that should receive a message on `topic` published by `publisher`,
    /// one [`Target`] per session (overlapping subscriptions merged, No Local applied, one
    /// member picked per shared group).
    pub fn targets(&self, topic: &Topic, publisher: Option<&ClientId>) -> Vec<Target> {
        let mut hits: Vec<&Entry> = Vec::new();
        // Number of trie nodes that contributed: a session has at most one entry per node, so
        // with a single contributing node there is nothing to merge (the common case).
        let mut nodes = 0usize;
        let mut groups: Vec<&Group> = Vec::new();
        if self.count > 0 {
            with_levels(topic, |levels| {
                collect(
                    &self.root,
                    levels,
                    0,
                    topic.is_system(),
                    &mut Hits {
                        entries: &mut hits,
                        groups: &mut groups,
                        nodes: &mut nodes,
                    },
                );
            });
        }
        let mut out: Vec<Target> = Vec::with_capacity(hits.len());
        for e in &hits {
            if e.opts.no_local && publisher.is_some_and(|p| *p == e.session.client_id) {
                continue;
            }
            out.push(Target {
                session: e.session.clone(),
                qos: e.opts.qos,
                retain_as_published: e.opts.retain_as_published,
                sub_ids: e.opts.subscription_id.map(|i| vec![i.get()]).unwrap_or_default(),
            });
        }
        // Shared groups: one member each, preferring members that are online.
        for g in groups {
            nodes += 1;
            if g.members.is_empty() {
                continue;
            }
            let n = g.members.len();
            let start = g.next.fetch_add(1, Ordering::Relaxed);
            let pick = (0..n)
                .map(|i| &g.members[(start + i) % n])
                .find(|e| e.session.is_online())
                .unwrap_or(&g.members[start % n]);
            out.push(Target {
                session: pick.session.clone(),
                qos: pick.opts.qos,
                retain_as_published: pick.opts.retain_as_published,
                sub_ids: pick
                    .opts
                    .subscription_id
                    .map(|i| vec![i.get()])
                    .unwrap_or_default(),
            });
        }
        if nodes > 1 && out.len() > 1 {
            merge_per_session(&mut out);
        }
        out
    }
}

/// Runs `f` over `topic`'s levels, held on the stack unless the topic is deeper than 16.
fn with_levels<R>(topic: &Topic, f: impl FnOnce(&[&str]) -> R) -> R {
    let mut levels = [""; 16];
    let mut n = 0;
    for level in topic.levels() {
        if n == levels.len() {
            // Deeper than the stack buffer: take the allocating path.
            let all: Vec<&str> = topic.levels().collect();
            return f(&all);
        }
        levels[n] = level;
        n += 1;
    }
    f(&levels[..n])
}

/// Whether any subscription, plain or shared, matches `topic` (No Local not considered).
fn any_match(node: &Node, levels: &[&str], idx: usize, system: bool) -> bool {
    let wildcard_ok = !(idx == 0 && system);
    if wildcard_ok
        && let Some(h) = &node.hash
        && !(h.direct.is_empty() && h.groups.is_empty())
    {
        return true;
    }
    if idx == levels.len() {
        return !(node.direct.is_empty() && node.groups.is_empty());
    }
    if let Some(c) = node.children.get(levels[idx])
        && any_match(c, levels, idx + 1, system)
    {
        return true;
    }
    wildcard_ok
        && node
            .plus
            .as_deref()
            .is_some_and(|p| any_match(p, levels, idx + 1, system))
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, session_id: u64) -> bool {
    if let Some((first, rest)) = levels.split_first() {
        let Some(child) = node.child_mut(first) else {
            return false;
        };
        let removed = remove(child, rest, group, session_id);
        if removed && child.is_empty() {
            node.remove_child(first);
        }
        removed
    } else {
        match group {
            None => node.direct.remove(&session_id).is_some(),
            Some(g) => {
                let Some(grp) = node.groups.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|e| e.session.id != session_id);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
        }
    }
}

/// What one walk of the trie finds for a topic: plain subscriptions, shared groups, and the
/// number of nodes that contributed plain ones.
struct Hits<'a, 'o> {
    entries: &'o mut Vec<&'a Entry>,
    groups: &'o mut Vec<&'a Group>,
    nodes: &'o mut usize,
}

/// Collects the plain subscriptions and the shared groups matching `levels[idx..]` under
/// `node`, in one walk.
fn collect<'a>(node: &'a Node, levels: &[&str], idx: usize, system: bool, hits: &mut Hits<'a, '_>) {
    let wildcard_ok = !(idx == 0 && system);
    if wildcard_ok && let Some(h) = &node.hash {
        if !h.direct.is_empty() {
            *hits.nodes += 1;
            hits.entries.extend(h.direct.values());
        }
        hits.groups.extend(h.groups.values());
    }
    if idx == levels.len() {
        if !node.direct.is_empty() {
            *hits.nodes += 1;
            hits.entries.extend(node.direct.values());
        }
        hits.groups.extend(node.groups.values());
        return;
    }
    if let Some(c) = node.children.get(levels[idx]) {
        collect(c, levels, idx + 1, system, hits);
    }
    if wildcard_ok && let Some(p) = &node.plus {
        collect(p, levels, idx + 1, system, hits);
    }
}

/// Merges targets of the same session: highest QoS, any Retain As Published, all ids
/// `[MQTT-3.3.4-2]`.
fn merge_per_session(out: &mut Vec<Target>) {
    out.sort_unstable_by_key(|t| t.session.id);
    let mut merged: Vec<Target> = Vec::with_capacity(out.len());
    for t in out.drain(..) {
        match merged.last_mut() {
            Some(last) if last.session.id == t.session.id => {
                if t.qos > last.qos {
                    last.qos = t.qos;
                }
                last.retain_as_published |= t.retain_as_published;
                last.sub_ids.extend(t.sub_ids);
            }
            _ => merged.push(t),
        }
    }
    *out = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::topic::TopicLimits;

    fn session(id: u64) -> Arc<Session> {
        Arc::new(Session::new(
            id,
            ClientId::parse(format!("c{id}"), 100).unwrap(),
            Arc::new(Principal::anonymous()),
        ))
    }
    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, &TopicLimits::default()).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s, &TopicLimits::default()).unwrap()
    }
    fn ids(r: &Router, topic: &str) -> Vec<u64> {
        let mut v: Vec<u64> = r.targets(&t(topic), None).iter().map(|t| t.session.id).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut r = Router::default();
        let (s1, s2, s3, s4) = (session(1), session(2), session(3), session(4));
        r.subscribe(&f("a/b"), &s1, SubOptions::qos(QoS::AtMostOnce));
        r.subscribe(&f("a/+"), &s2, SubOptions::qos(QoS::AtMostOnce));
        r.subscribe(&f("#"), &s3, SubOptions::qos(QoS::AtMostOnce));
        r.subscribe(&f("a/#"), &s4, SubOptions::qos(QoS::AtMostOnce));
        assert_eq!(ids(&r, "a/b"), vec![1, 2, 3, 4]);
        assert_eq!(ids(&r, "a"), vec![3, 4]);
        assert_eq!(ids(&r, "a/c/d"), vec![3, 4]);
        // [MQTT-4.7.2-1]
        assert_eq!(ids(&r, "$SYS/a"), Vec::<u64>::new());
        assert_eq!(r.len(), 4);
        assert!(r.unsubscribe(&f("a/+"), 2));
        assert!(!r.unsubscribe(&f("a/+"), 2));
        assert_eq!(ids(&r, "a/b"), vec![1, 3, 4]);
    }

    /// Wildcard children are pruned like literal ones: after every unsubscribe the trie is
    /// empty again, and a removal leaves the other filters' matches alone.
    #[test]
    fn unsubscribing_prunes_wildcard_nodes() {
        let mut r = Router::default();
        let filters = ["a/+/#", "+/b", "#", "a/+", "a/b/c", "$share/g/+/b"];
        for (i, filter) in filters.iter().enumerate() {
            assert!(r.subscribe(
                &f(filter),
                &session(i as u64 + 1),
                SubOptions::qos(QoS::AtMostOnce)
            ));
        }
        assert_eq!(ids(&r, "a/b"), vec![1, 2, 3, 4, 6]);
        assert!(r.unsubscribe(&f("+/b"), 2));
        assert!(!r.unsubscribe(&f("+/b"), 2));
        assert_eq!(ids(&r, "a/b"), vec![1, 3, 4, 6]);
        for (i, filter) in filters.iter().enumerate() {
            r.unsubscribe(&f(filter), i as u64 + 1);
        }
        assert!(r.is_empty());
        assert!(r.root.is_empty(), "{:?}", r.root);
        assert!(!r.has_match(&t("a/b")));
    }

    /// `has_match` agrees with `targets` finding someone, for plain, wildcard, shared and
    /// `$`-topic cases, and for topics deeper than its stack buffer.
    #[test]
    fn has_match_agrees_with_targets() {
        let unlimited = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        let t = |s: &str| Topic::parse(s, &unlimited).unwrap();
        let deep: String = (0..20).map(|i| format!("l{i}")).collect::<Vec<_>>().join("/");
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "x/y",
            "$SYS/a",
            "$aws/things/t/shadow/update/documents",
            "s/1",
            &deep,
        ];
        let mut r = Router::default();
        for topic in topics {
            assert!(!r.has_match(&t(topic)), "empty router matched {topic}");
        }
        let filters = [
            "a/b",
            "a/+/c",
            "$aws/things/+/shadow/update/accepted",
            "$share/g/s/+",
            "#",
            "+/y",
            "l0/l1/#",
        ];
        for (i, filter) in filters.iter().enumerate() {
            r.subscribe(
                &f(filter),
                &session(i as u64 + 1),
                SubOptions::qos(QoS::AtMostOnce),
            );
            for topic in topics {
                assert_eq!(
                    r.has_match(&t(topic)),
                    !r.targets(&t(topic), None).is_empty(),
                    "{topic} after subscribing {:?}",
                    &filters[..=i]
                );
            }
        }
        // `#` does not reach `$` topics; the shadow filter matches only `accepted`.
        assert!(!r.has_match(&t("$aws/things/t/shadow/update/documents")));
        assert!(r.has_match(&t("$aws/things/t/shadow/update/accepted")));
        assert!(r.has_match(&t(&deep)));
    }

    #[test]
    fn overlapping_subscriptions_merge() {
        let mut r = Router::default();
        let s1 = session(1);
        let mut o = SubOptions::qos(QoS::AtMostOnce);
        o.subscription_id = NonZeroU32::new(5);
        r.subscribe(&f("a/+"), &s1, o);
        let mut o = SubOptions::qos(QoS::ExactlyOnce);
        o.subscription_id = NonZeroU32::new(6);
        r.subscribe(&f("a/b"), &s1, o);
        let ts = r.targets(&t("a/b"), None);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].qos, QoS::ExactlyOnce);
        let mut sub_ids = ts[0].sub_ids.clone();
        sub_ids.sort();
        assert_eq!(sub_ids, vec![5, 6]);
    }

    #[test]
    fn shared_groups_pick_one_member_round_robin() {
        let mut r = Router::default();
        let (s1, s2) = (session(1), session(2));
        s1.set_online(true);
        s2.set_online(true);
        r.subscribe(&f("$share/g/a/#"), &s1, SubOptions::qos(QoS::AtLeastOnce));
        r.subscribe(&f("$share/g/a/#"), &s2, SubOptions::qos(QoS::AtLeastOnce));
        let picks: Vec<u64> = (0..4).map(|_| ids(&r, "a/x")[0]).collect();
        assert_eq!(ids(&r, "a/x").len(), 1);
        assert!(picks.contains(&1) && picks.contains(&2));
        s2.set_online(false);
        for _ in 0..4 {
            assert_eq!(ids(&r, "a/x"), vec![1]);
        }
        assert!(r.unsubscribe(&f("$share/g/a/#"), 1));
        assert_eq!(ids(&r, "a/x"), vec![2]);
    }

    #[test]
    fn no_local() {
        let mut r = Router::default();
        let s1 = session(1);
        let mut o = SubOptions::qos(QoS::AtMostOnce);
        o.no_local = true;
        r.subscribe(&f("x"), &s1, o);
        assert!(r.targets(&t("x"), Some(&s1.client_id)).is_empty());
        assert_eq!(r.targets(&t("x"), None).len(), 1);
    }

    use std::num::NonZeroU32;
}
