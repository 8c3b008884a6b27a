//! Retained messages, indexed by topic level so a wildcard SUBSCRIBE finds its matches without
//! scanning every retained topic.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    msg: Option<Arc<Message>>,
}

/// The retained-message tree.
#[derive(Debug, Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
}

impl RetainedTree {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// `true` when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sets (or with `None`, deletes) the retained message of `topic`.
    pub fn set(&mut self, topic: &str, msg: Option<Arc<Message>>) {
        match msg {
            Some(m) => {
                let mut node = &mut self.root;
                for level in topic.split('/') {
                    node = node.children.entry(Box::from(level)).or_default();
                }
                if node.msg.replace(m).is_none() {
                    self.count += 1;
                }
            }
            None => {
                let levels: Vec<&str> = topic.split('/').collect();
                if remove(&mut self.root, &levels) {
                    self.count -= 1;
                }
            }
        }
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.clone()
    }

    /// Every retained message whose topic matches `filter` (a filter proper, no `$share`).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        walk(&self.root, &levels, 0, &mut out);
        out
    }

    /// Every retained message (for listing).
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.count);
        all(&self.root, &mut out);
        out
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.msg.take().is_some(),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove(child, rest);
            if child.msg.is_none() && child.children.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn all(node: &Node, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.msg {
        out.push(m.clone());
    }
    for c in node.children.values() {
        all(c, out);
    }
}

fn walk(node: &Node, levels: &[&str], idx: usize, out: &mut Vec<Arc<Message>>) {
    if idx == levels.len() {
        if let Some(m) = &node.msg {
            out.push(m.clone());
        }
        return;
    }
    // A leading wildcard does not match topics starting with '$' [MQTT-4.7.2-1].
    let skip_dollar = idx == 0;
    match levels[idx] {
        "#" => {
            // "a/#" also matches "a" itself [MQTT-4.7.1-2].
            if idx > 0
                && let Some(m) = &node.msg
            {
                out.push(m.clone());
            }
            for (name, c) in &node.children {
                if skip_dollar && name.starts_with('$') {
                    continue;
                }
                all(c, out);
            }
        }
        "+" => {
            for (name, c) in &node.children {
                if skip_dollar && name.starts_with('$') {
                    continue;
                }
                walk(c, levels, idx + 1, out);
            }
        }
        lit => {
            if let Some(c) = node.children.get(lit) {
                walk(c, levels, idx + 1, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;
    use crate::topic::{Topic, TopicLimits};
    use ntex::util::Bytes;

    fn m(t: &str) -> Arc<Message> {
        Arc::new(Message::new(
            Topic::parse(t, &TopicLimits::default()).unwrap(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
        ))
    }
    fn topics(tree: &RetainedTree, f: &str) -> Vec<String> {
        let mut v: Vec<String> = tree.matching(f).iter().map(|m| m.topic.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn set_replace_delete_match() {
        let mut r = RetainedTree::default();
        for t in ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "/lead"] {
            r.set(t, Some(m(t)));
        }
        r.set("a/b", Some(m("a/b")));
        assert_eq!(r.len(), 6);
        assert_eq!(topics(&r, "a/#"), vec!["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&r, "a/+"), vec!["a/b", "a/c"]);
        assert_eq!(topics(&r, "#"), vec!["/lead", "a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&r, "+/lead"), vec!["/lead"]);
        assert_eq!(topics(&r, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(topics(&r, "a/b"), vec!["a/b"]);
        r.set("a/b", None);
        r.set("nope", None);
        assert_eq!(r.len(), 5);
        assert!(r.get("a/b").is_none());
        assert!(r.get("a/b/c").is_some());
        assert_eq!(topics(&r, "a/+"), vec!["a/c"]);
    }
}
