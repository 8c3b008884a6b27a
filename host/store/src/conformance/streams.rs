//! The [`StreamStore`] contract as an executable check (see [`run_stream_suite`]).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher, RandomState};

use shoal_rules::stream::{
    GroupInfo, GroupStart, NewRecord, Record, StreamError, StreamId, StreamInfo, StreamStore,
};

/// Runs every stream conformance check against `store`.
///
/// The streams it creates have names unique to the run (`conf-{random}-…`), so several runs can
/// share one backend (one Redis); it deletes them at the end. Covers: ids rising within a call
/// and across calls, batches mixing streams, `range` with `after` and `count`, trimming to
/// `max_len` (length, first and last id), `info` and `list` (with groups and pending counts),
/// `NotFound` and `Exists` errors, groups starting at the beginning, the end or after an id,
/// `read_group` moving the cursor with two consumers never given the same record,
/// `read_pending` returning one consumer's unacknowledged records (and leaving trimmed ones out),
/// `ack` counting only pending ids and being idempotent, `delete_group` and `delete`, invalid
/// names, and binary data and empty keys round-tripping.
///
/// # Panics
///
/// On the first deviation from the contract, naming the case.
pub async fn run_stream_suite(store: &dyn StreamStore) {
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    let t = Suite {
        store,
        run: format!("conf-{:08x}", h.finish() as u32),
    };
    t.ids_rise().await;
    t.mixed_batch().await;
    t.range_after_and_count().await;
    t.trimming().await;
    t.info_and_list().await;
    t.groups().await;
    t.consumers_pending_ack().await;
    t.pending_after_trim().await;
    t.delete_group().await;
    t.delete_stream().await;
    t.invalid_names().await;
    t.binary_data().await;
    t.cleanup().await;
}

struct Suite<'a> {
    store: &'a dyn StreamStore,
    /// Prefix of every stream name of this run.
    run: String,
}

fn rec(stream: &str, key: &str, data: &[u8]) -> NewRecord {
    NewRecord {
        stream: stream.to_string(),
        key: key.to_string(),
        data: data.to_vec(),
    }
}

fn ids_of(records: &[Record]) -> Vec<StreamId> {
    records.iter().map(|r| r.id).collect()
}

fn rising(ids: &[StreamId]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

fn is_not_found(e: &StreamError) -> bool {
    matches!(e, StreamError::NotFound(_))
}

fn is_exists(e: &StreamError) -> bool {
    matches!(e, StreamError::Exists(_))
}

fn is_invalid(e: &StreamError) -> bool {
    matches!(e, StreamError::Invalid(_))
}

impl Suite<'_> {
    fn name(&self, s: &str) -> String {
        format!("{}-{s}", self.run)
    }

    fn fail(&self, case: &str, msg: impl std::fmt::Display) -> ! {
        panic!("[{}] {case}: {msg}", self.store.kind())
    }

    fn check(&self, case: &str, ok: bool, msg: impl std::fmt::Display) {
        if !ok {
            self.fail(case, msg);
        }
    }

    fn same<T: PartialEq + Debug>(&self, case: &str, got: T, want: T) {
        if got != want {
            self.fail(case, format!("got {got:?}, want {want:?}"));
        }
    }

    fn ok<T>(&self, case: &str, what: &str, r: Result<T, StreamError>) -> T {
        r.unwrap_or_else(|e| self.fail(case, format!("{what} failed: {e:?}")))
    }

    fn err<T: Debug>(
        &self,
        case: &str,
        what: &str,
        r: Result<T, StreamError>,
        want: fn(&StreamError) -> bool,
    ) {
        match r {
            Err(e) if want(&e) => {}
            other => self.fail(case, format!("{what}: unexpected {other:?}")),
        }
    }

    async fn append(&self, case: &str, records: &[NewRecord], max_len: u64) -> Vec<StreamId> {
        let ids = self.ok(case, "append", self.store.append(records, max_len).await);
        self.same(case, ids.len(), records.len());
        ids
    }

    /// Appends `n` records (keys `k0`…, data `d0`…) to `stream` in one batch.
    async fn append_n(&self, case: &str, stream: &str, n: usize, max_len: u64) -> Vec<StreamId> {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| rec(stream, &format!("k{i}"), format!("d{i}").as_bytes()))
            .collect();
        self.append(case, &records, max_len).await
    }

    async fn range(&self, case: &str, stream: &str, after: Option<StreamId>, count: usize) -> Vec<Record> {
        self.ok(case, "range", self.store.range(stream, after, count).await)
    }

    async fn info(&self, case: &str, stream: &str) -> StreamInfo {
        self.ok(case, "info", self.store.info(stream).await)
    }

    async fn create(&self, case: &str, stream: &str, group: &str, start: GroupStart) {
        self.ok(
            case,
            "create_group",
            self.store.create_group(stream, group, start).await,
        );
    }

    async fn read(&self, case: &str, stream: &str, group: &str, consumer: &str, n: usize) -> Vec<Record> {
        self.ok(
            case,
            "read_group",
            self.store.read_group(stream, group, consumer, n).await,
        )
    }

    async fn pending(&self, case: &str, stream: &str, group: &str, consumer: &str, n: usize) -> Vec<Record> {
        self.ok(
            case,
            "read_pending",
            self.store.read_pending(stream, group, consumer, n).await,
        )
    }

    async fn ack(&self, case: &str, stream: &str, group: &str, ids: &[StreamId]) -> u64 {
        self.ok(case, "ack", self.store.ack(stream, group, ids).await)
    }

    async fn group(&self, case: &str, stream: &str, group: &str) -> GroupInfo {
        let info = self.info(case, stream).await;
        info.groups
            .into_iter()
            .find(|g| g.name == group)
            .unwrap_or_else(|| self.fail(case, format!("info of {stream} has no group {group}")))
    }

    async fn ids_rise(&self) {
        let case = "ids rise";
        let s = self.name("ids");
        let first = self
            .append(
                case,
                &[rec(&s, "k1", b"a"), rec(&s, "k2", b"b"), rec(&s, "k3", b"c")],
                100,
            )
            .await;
        self.check(
            case,
            rising(&first),
            format!("ids of one batch do not rise: {first:?}"),
        );
        let mut all = first.clone();
        // Many appends within the same few milliseconds: the sequence part keeps them rising.
        for i in 0..50 {
            let id = self
                .append(case, &[rec(&s, "burst", format!("{i}").as_bytes())], 100)
                .await;
            all.extend(id);
        }
        self.check(
            case,
            rising(&all),
            format!("ids across appends do not rise: {all:?}"),
        );
        let got = self.range(case, &s, None, 1000).await;
        self.same(case, ids_of(&got), all.clone());
        self.same(
            case,
            got[..3]
                .iter()
                .map(|r| (r.key.as_str(), r.data.as_slice()))
                .collect::<Vec<_>>(),
            vec![("k1", &b"a"[..]), ("k2", b"b"), ("k3", b"c")],
        );
        let info = self.info(case, &s).await;
        self.same(case, info.length, 53);
        self.same(case, info.first_id, all.first().copied());
        self.same(case, info.last_id, all.last().copied());
        self.same(case, info.groups, Vec::new());
        let none = self.append(case, &[], 100).await;
        self.same(case, none, Vec::new());
    }

    async fn mixed_batch(&self) {
        let case = "mixed batch";
        let (a, b) = (self.name("mix-a"), self.name("mix-b"));
        let ids = self
            .append(
                case,
                &[
                    rec(&a, "a1", b"1"),
                    rec(&b, "b1", b"2"),
                    rec(&a, "a2", b"3"),
                    rec(&b, "b2", b"4"),
                    rec(&a, "a3", b"5"),
                ],
                100,
            )
            .await;
        let got_a = self.range(case, &a, None, 10).await;
        let got_b = self.range(case, &b, None, 10).await;
        self.same(case, ids_of(&got_a), vec![ids[0], ids[2], ids[4]]);
        self.same(case, ids_of(&got_b), vec![ids[1], ids[3]]);
        self.same(
            case,
            got_a.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["a1", "a2", "a3"],
        );
        self.same(
            case,
            got_b.iter().map(|r| r.data.as_slice()).collect::<Vec<_>>(),
            vec![&b"2"[..], b"4"],
        );
        self.check(case, rising(&ids_of(&got_a)), "ids of a do not rise");
        self.check(case, rising(&ids_of(&got_b)), "ids of b do not rise");
        self.same(case, self.info(case, &a).await.length, 3);
        self.same(case, self.info(case, &b).await.length, 2);
    }

    async fn range_after_and_count(&self) {
        let case = "range after/count";
        let s = self.name("range");
        let ids = self.append_n(case, &s, 5, 100).await;
        let r = self.range(case, &s, None, 2).await;
        self.same(case, ids_of(&r), ids[..2].to_vec());
        self.same(
            case,
            (r[1].key.as_str(), r[1].data.as_slice()),
            ("k1", &b"d1"[..]),
        );
        let r = self.range(case, &s, Some(ids[1]), 2).await;
        self.same(case, ids_of(&r), ids[2..4].to_vec());
        let r = self.range(case, &s, Some(ids[1]), 100).await;
        self.same(case, ids_of(&r), ids[2..].to_vec());
        self.same(case, self.range(case, &s, Some(ids[4]), 10).await, Vec::new());
        let r = self.range(case, &s, Some(StreamId::ZERO), 10).await;
        self.same(case, ids_of(&r), ids.clone());
        // After an id that is not in the stream, with a carry into the next millisecond.
        let before = StreamId {
            ms: ids[0].ms - 1,
            seq: u64::MAX,
        };
        let r = self.range(case, &s, Some(before), 10).await;
        self.same(case, ids_of(&r), ids.clone());
        let end = StreamId {
            ms: u64::MAX,
            seq: u64::MAX,
        };
        self.same(case, self.range(case, &s, Some(end), 10).await, Vec::new());
        self.same(case, self.range(case, &s, None, 0).await, Vec::new());
        let never = self.name("never");
        self.same(case, self.range(case, &never, None, 10).await, Vec::new());
        self.same(case, self.range(case, &never, Some(ids[0]), 10).await, Vec::new());
    }

    async fn trimming(&self) {
        let case = "trimming";
        let s = self.name("trim");
        let ids = self.append_n(case, &s, 5, 3).await;
        let info = self.info(case, &s).await;
        self.same(case, info.length, 3);
        self.same(case, info.first_id, Some(ids[2]));
        self.same(case, info.last_id, Some(ids[4]));
        self.same(
            case,
            ids_of(&self.range(case, &s, None, 10).await),
            ids[2..].to_vec(),
        );

        let more = self.append_n(case, &s, 1, 10).await;
        let info = self.info(case, &s).await;
        self.same(case, info.length, 4);
        self.same(case, info.first_id, Some(ids[2]));
        self.same(case, info.last_id, Some(more[0]));

        // A batch longer than max_len keeps its own newest records.
        let batch = self.append_n(case, &s, 4, 2).await;
        self.check(case, batch[0] > more[0], "ids rise after trimming");
        let info = self.info(case, &s).await;
        self.same(case, info.length, 2);
        self.same(case, info.first_id, Some(batch[2]));
        self.same(case, info.last_id, Some(batch[3]));
        self.same(
            case,
            ids_of(&self.range(case, &s, None, 10).await),
            batch[2..].to_vec(),
        );

        // max_len 0 keeps one record.
        let last = self.append_n(case, &s, 1, 0).await;
        let info = self.info(case, &s).await;
        self.same(case, info.length, 1);
        self.same(case, info.first_id, Some(last[0]));
        self.same(case, info.last_id, Some(last[0]));

        // Trimming one stream of a mixed batch leaves the other alone.
        let (x, y) = (self.name("trim-x"), self.name("trim-y"));
        self.append_n(case, &y, 3, 100).await;
        let ids = self
            .append(
                case,
                &[
                    rec(&x, "x0", b""),
                    rec(&x, "x1", b""),
                    rec(&y, "y3", b""),
                    rec(&x, "x2", b""),
                ],
                3,
            )
            .await;
        self.same(case, self.info(case, &x).await.length, 3);
        let y_info = self.info(case, &y).await;
        self.same(case, y_info.length, 3);
        self.same(case, y_info.last_id, Some(ids[2]));
        self.same(
            case,
            self.range(case, &y, None, 10)
                .await
                .iter()
                .map(|r| r.key.clone())
                .collect::<Vec<_>>(),
            vec!["k1".to_string(), "k2".into(), "y3".into()],
        );
    }

    async fn info_and_list(&self) {
        let case = "info/list";
        self.err(
            case,
            "info of a stream never written",
            self.store.info(&self.name("never")).await,
            is_not_found,
        );
        let s = self.name("listed");
        let ids = self.append_n(case, &s, 3, 100).await;
        self.create(case, &s, "g1", GroupStart::Beginning).await;
        self.create(case, &s, "g0", GroupStart::End).await;
        self.read(case, &s, "g1", "c", 2).await;
        let info = self.info(case, &s).await;
        self.same(
            case,
            info.clone(),
            StreamInfo {
                name: s.clone(),
                length: 3,
                first_id: Some(ids[0]),
                last_id: Some(ids[2]),
                groups: vec![
                    GroupInfo {
                        name: "g0".into(),
                        last_delivered: ids[2],
                        pending: 0,
                    },
                    GroupInfo {
                        name: "g1".into(),
                        last_delivered: ids[1],
                        pending: 2,
                    },
                ],
            },
        );
        let listed = self.ok(case, "list", self.store.list().await);
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        self.same(case, &names, &sorted);
        self.same(case, listed.iter().find(|i| i.name == s), Some(&info));
        for other in ["ids", "mix-a", "mix-b", "range", "trim", "trim-x", "trim-y"] {
            let other = self.name(other);
            let want = self.info(case, &other).await;
            self.same(case, listed.iter().find(|i| i.name == other), Some(&want));
        }
        self.check(
            case,
            !names.contains(&self.name("never").as_str()),
            "list shows a stream never written",
        );
    }

    async fn groups(&self) {
        let case = "groups";
        let s = self.name("groups");
        let ids = self.append_n(case, &s, 4, 100).await;
        self.create(case, &s, "g-begin", GroupStart::Beginning).await;
        self.err(
            case,
            "creating a group twice",
            self.store
                .create_group(&s, "g-begin", GroupStart::Beginning)
                .await,
            is_exists,
        );
        self.err(
            case,
            "creating a group twice (other start)",
            self.store.create_group(&s, "g-begin", GroupStart::End).await,
            is_exists,
        );
        self.create(case, &s, "g-end", GroupStart::End).await;
        self.create(case, &s, "g-after", GroupStart::After(ids[1])).await;
        self.same(
            case,
            self.info(case, &s).await.groups,
            vec![
                GroupInfo {
                    name: "g-after".into(),
                    last_delivered: ids[1],
                    pending: 0,
                },
                GroupInfo {
                    name: "g-begin".into(),
                    last_delivered: StreamId::ZERO,
                    pending: 0,
                },
                GroupInfo {
                    name: "g-end".into(),
                    last_delivered: ids[3],
                    pending: 0,
                },
            ],
        );
        self.same(
            case,
            ids_of(&self.read(case, &s, "g-begin", "c", 10).await),
            ids.clone(),
        );
        self.same(case, self.read(case, &s, "g-end", "c", 10).await, Vec::new());
        self.same(
            case,
            ids_of(&self.read(case, &s, "g-after", "c", 10).await),
            ids[2..].to_vec(),
        );
        let new = self.append_n(case, &s, 1, 100).await;
        for g in ["g-begin", "g-end", "g-after"] {
            let got = self.read(case, &s, g, "c", 10).await;
            self.same(case, ids_of(&got), new.clone());
        }
        self.same(case, self.group(case, &s, "g-end").await.pending, 1);
        self.same(case, self.group(case, &s, "g-begin").await.pending, 5);
        self.same(case, self.group(case, &s, "g-begin").await.last_delivered, new[0]);

        // A group on a stream that does not exist creates it, empty.
        let only = self.name("group-only");
        self.create(case, &only, "g", GroupStart::Beginning).await;
        self.same(
            case,
            self.info(case, &only).await,
            StreamInfo {
                name: only.clone(),
                length: 0,
                first_id: None,
                last_id: None,
                groups: vec![GroupInfo {
                    name: "g".into(),
                    last_delivered: StreamId::ZERO,
                    pending: 0,
                }],
            },
        );
        let listed = self.ok(case, "list", self.store.list().await);
        self.check(
            case,
            listed.iter().any(|i| i.name == only),
            "list lacks a stream created by create_group",
        );
        self.same(case, self.range(case, &only, None, 10).await, Vec::new());
        self.same(case, self.read(case, &only, "g", "c", 10).await, Vec::new());
        self.err(
            case,
            "creating a group twice on the new stream",
            self.store.create_group(&only, "g", GroupStart::End).await,
            is_exists,
        );
        let first = self.append_n(case, &only, 1, 100).await;
        self.same(case, ids_of(&self.read(case, &only, "g", "c", 10).await), first);
        let empty_end = self.name("group-end-empty");
        self.create(case, &empty_end, "g", GroupStart::End).await;
        self.same(
            case,
            self.group(case, &empty_end, "g").await.last_delivered,
            StreamId::ZERO,
        );
        let first = self.append_n(case, &empty_end, 2, 100).await;
        self.same(
            case,
            ids_of(&self.read(case, &empty_end, "g", "c", 10).await),
            first,
        );

        // Errors.
        self.err(
            case,
            "an invalid group name",
            self.store
                .create_group(&s, "bad/group", GroupStart::Beginning)
                .await,
            is_invalid,
        );
        self.err(
            case,
            "an empty group name",
            self.store.create_group(&s, "", GroupStart::Beginning).await,
            is_invalid,
        );
        self.err(
            case,
            "a group on an invalid stream name",
            self.store
                .create_group("bad stream", "g", GroupStart::Beginning)
                .await,
            is_invalid,
        );
        self.err(
            case,
            "read_group of a missing group",
            self.store.read_group(&s, "nope", "c", 10).await,
            is_not_found,
        );
        self.err(
            case,
            "read_group of a missing group, count 0",
            self.store.read_group(&s, "nope", "c", 0).await,
            is_not_found,
        );
        self.err(
            case,
            "read_group of a missing stream",
            self.store
                .read_group(&self.name("never"), "g-begin", "c", 10)
                .await,
            is_not_found,
        );
        self.err(
            case,
            "read_group with an invalid consumer name",
            self.store.read_group(&s, "g-begin", "bad consumer", 10).await,
            is_invalid,
        );
        self.same(case, self.read(case, &s, "g-begin", "c", 0).await, Vec::new());
    }

    async fn consumers_pending_ack(&self) {
        let case = "consumers, pending, ack";
        let s = self.name("consumers");
        let ids = self.append_n(case, &s, 6, 100).await;
        self.create(case, &s, "g", GroupStart::Beginning).await;
        let c1a = self.read(case, &s, "g", "c1", 2).await;
        let c2a = self.read(case, &s, "g", "c2", 2).await;
        let c1b = self.read(case, &s, "g", "c1", 10).await;
        let c2b = self.read(case, &s, "g", "c2", 10).await;
        self.same(case, ids_of(&c1a), ids[0..2].to_vec());
        self.same(case, ids_of(&c2a), ids[2..4].to_vec());
        self.same(case, ids_of(&c1b), ids[4..6].to_vec());
        self.same(case, c2b, Vec::new());
        self.same(
            case,
            (c1a[0].key.as_str(), c1a[0].data.as_slice()),
            ("k0", &b"d0"[..]),
        );
        let c1: BTreeSet<StreamId> = ids_of(&c1a).into_iter().chain(ids_of(&c1b)).collect();
        let c2: BTreeSet<StreamId> = ids_of(&c2a).into_iter().collect();
        self.check(
            case,
            c1.is_disjoint(&c2),
            "two consumers of one group got the same record",
        );
        self.same(case, c1.union(&c2).copied().collect::<Vec<_>>(), ids.clone());
        self.same(
            case,
            self.group(case, &s, "g").await,
            GroupInfo {
                name: "g".into(),
                last_delivered: ids[5],
                pending: 6,
            },
        );

        // Pending, per consumer.
        let p1 = self.pending(case, &s, "g", "c1", 10).await;
        self.same(case, ids_of(&p1), vec![ids[0], ids[1], ids[4], ids[5]]);
        self.same(case, p1[2].data.as_slice(), b"d4");
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c2", 10).await),
            ids[2..4].to_vec(),
        );
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c1", 3).await),
            vec![ids[0], ids[1], ids[4]],
        );
        self.same(case, self.pending(case, &s, "g", "c3", 10).await, Vec::new());
        self.same(case, self.pending(case, &s, "g", "c1", 0).await, Vec::new());
        self.err(
            case,
            "read_pending of a missing group",
            self.store.read_pending(&s, "nope", "c1", 10).await,
            is_not_found,
        );
        self.err(
            case,
            "read_pending of a missing stream",
            self.store.read_pending(&self.name("never"), "g", "c1", 10).await,
            is_not_found,
        );

        // A second group has its own cursor and pending list.
        self.create(case, &s, "g2", GroupStart::Beginning).await;
        self.same(
            case,
            ids_of(&self.read(case, &s, "g2", "c1", 10).await),
            ids.clone(),
        );

        // Ack.
        self.same(case, self.ack(case, &s, "g", &ids[0..2]).await, 2);
        self.same(case, self.ack(case, &s, "g", &ids[0..2]).await, 0);
        let unknown = StreamId { ms: 1, seq: 0 };
        self.same(case, self.ack(case, &s, "g", &[ids[2], unknown]).await, 1);
        self.same(case, self.ack(case, &s, "g", &[ids[4], ids[4]]).await, 1);
        self.same(case, self.ack(case, &s, "g", &[]).await, 0);
        self.same(case, self.group(case, &s, "g").await.pending, 2);
        self.same(case, self.group(case, &s, "g2").await.pending, 6);
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c1", 10).await),
            vec![ids[5]],
        );
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c2", 10).await),
            vec![ids[3]],
        );
        self.same(case, self.pending(case, &s, "g2", "c1", 10).await.len(), 6);
        self.err(
            case,
            "ack on a missing group",
            self.store.ack(&s, "nope", &[ids[3]]).await,
            is_not_found,
        );
        self.err(
            case,
            "ack (nothing) on a missing group",
            self.store.ack(&s, "nope", &[]).await,
            is_not_found,
        );
        self.err(
            case,
            "ack on a missing stream",
            self.store.ack(&self.name("never"), "g", &[ids[3]]).await,
            is_not_found,
        );
        // The cursor did not move back: nothing more to deliver.
        self.same(case, self.read(case, &s, "g", "c1", 10).await, Vec::new());
    }

    async fn pending_after_trim(&self) {
        let case = "pending after trimming";
        let s = self.name("pending-trim");
        let old = self.append_n(case, &s, 3, 100).await;
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.same(
            case,
            ids_of(&self.read(case, &s, "g", "c", 10).await),
            old.clone(),
        );
        let new = self.append_n(case, &s, 3, 2).await;
        self.same(case, self.pending(case, &s, "g", "c", 10).await, Vec::new());
        self.same(case, self.group(case, &s, "g").await.pending, 3);
        // The cursor skips what was trimmed.
        self.same(
            case,
            ids_of(&self.read(case, &s, "g", "c", 10).await),
            new[1..].to_vec(),
        );
        self.same(case, self.group(case, &s, "g").await.pending, 5);
        // Trimmed pending entries do not use up the count.
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c", 1).await),
            vec![new[1]],
        );
        self.same(
            case,
            ids_of(&self.pending(case, &s, "g", "c", 10).await),
            new[1..].to_vec(),
        );
        // Trimmed but pending: acknowledging counts them.
        self.same(case, self.ack(case, &s, "g", &old).await, 3);
        self.same(case, self.group(case, &s, "g").await.pending, 2);
    }

    async fn delete_group(&self) {
        let case = "delete_group";
        let s = self.name("del-group");
        let ids = self.append_n(case, &s, 2, 100).await;
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.create(case, &s, "keep", GroupStart::Beginning).await;
        self.read(case, &s, "g", "c", 10).await;
        self.read(case, &s, "keep", "c", 1).await;
        self.ok(case, "delete_group", self.store.delete_group(&s, "g").await);
        self.err(
            case,
            "deleting a group twice",
            self.store.delete_group(&s, "g").await,
            is_not_found,
        );
        self.err(
            case,
            "deleting a group of a missing stream",
            self.store.delete_group(&self.name("never"), "g").await,
            is_not_found,
        );
        let info = self.info(case, &s).await;
        self.same(
            case,
            info.groups,
            vec![GroupInfo {
                name: "keep".into(),
                last_delivered: ids[0],
                pending: 1,
            }],
        );
        self.same(case, info.length, 2);
        self.err(
            case,
            "read_group of a deleted group",
            self.store.read_group(&s, "g", "c", 10).await,
            is_not_found,
        );
        self.err(
            case,
            "read_pending of a deleted group",
            self.store.read_pending(&s, "g", "c", 10).await,
            is_not_found,
        );
        self.err(
            case,
            "ack on a deleted group",
            self.store.ack(&s, "g", &ids).await,
            is_not_found,
        );
        // A new group of the same name starts afresh.
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.same(case, self.group(case, &s, "g").await.pending, 0);
        self.same(case, self.pending(case, &s, "g", "c", 10).await, Vec::new());
        self.same(
            case,
            ids_of(&self.read(case, &s, "g", "c", 10).await),
            ids.clone(),
        );
        self.same(case, self.group(case, &s, "keep").await.pending, 1);
    }

    async fn delete_stream(&self) {
        let case = "delete";
        let s = self.name("del");
        self.append_n(case, &s, 2, 100).await;
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.read(case, &s, "g", "c", 1).await;
        self.ok(case, "delete", self.store.delete(&s).await);
        self.err(
            case,
            "info of a deleted stream",
            self.store.info(&s).await,
            is_not_found,
        );
        self.same(case, self.range(case, &s, None, 10).await, Vec::new());
        let listed = self.ok(case, "list", self.store.list().await);
        self.check(
            case,
            listed.iter().all(|i| i.name != s),
            "list shows a deleted stream",
        );
        self.err(
            case,
            "read_group on a deleted stream",
            self.store.read_group(&s, "g", "c", 10).await,
            is_not_found,
        );
        self.err(
            case,
            "read_pending on a deleted stream",
            self.store.read_pending(&s, "g", "c", 10).await,
            is_not_found,
        );
        self.err(case, "deleting twice", self.store.delete(&s).await, is_not_found);
        self.err(
            case,
            "deleting a stream never written",
            self.store.delete(&self.name("never")).await,
            is_not_found,
        );
        // Written again: a new stream, without the old groups.
        let ids = self.append_n(case, &s, 1, 100).await;
        let info = self.info(case, &s).await;
        self.same(case, info.length, 1);
        self.same(case, info.first_id, Some(ids[0]));
        self.same(case, info.groups, Vec::new());
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.same(case, self.pending(case, &s, "g", "c", 10).await, Vec::new());
    }

    async fn invalid_names(&self) {
        let case = "invalid names";
        let good = self.name("valid");
        for bad in ["", "a/b", "with space", "colon:x", "ü"] {
            self.err(
                case,
                &format!("append to {bad:?}"),
                self.store.append(&[rec(bad, "k", b"d")], 10).await,
                is_invalid,
            );
        }
        let long = format!("{}-{}", self.run, "x".repeat(129 - self.run.len() - 1));
        self.same(case, long.len(), 129);
        self.err(
            case,
            "append to a 129-character name",
            self.store.append(&[rec(&long, "k", b"d")], 10).await,
            is_invalid,
        );
        // One bad name rejects the whole batch.
        self.err(
            case,
            "a batch with one bad name",
            self.store
                .append(&[rec(&good, "k", b"d"), rec("bad/name", "k", b"d")], 10)
                .await,
            is_invalid,
        );
        self.err(
            case,
            "info after a rejected batch",
            self.store.info(&good).await,
            is_not_found,
        );
        self.same(case, self.range(case, &good, None, 10).await, Vec::new());
        let max = &long[..128];
        self.append(case, &[rec(max, "k", b"d")], 10).await;
        self.same(case, self.info(case, max).await.length, 1);
    }

    async fn binary_data(&self) {
        let case = "binary data";
        let s = self.name("binary");
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let records = vec![
            rec(&s, "", &all_bytes),
            rec(&s, "ключ ü /#\0 \u{1F600}", b""),
            rec(&s, "", b""),
            rec(&s, "big", &large),
            rec(&s, "json", br#"{"a":1,"b":[true,null]}"#),
        ];
        let ids = self.append(case, &records, 100).await;
        let want: Vec<Record> = records
            .iter()
            .zip(&ids)
            .map(|(r, id)| Record {
                id: *id,
                key: r.key.clone(),
                data: r.data.clone(),
            })
            .collect();
        self.check(
            case,
            self.range(case, &s, None, 10).await == want,
            "range did not return the records as written",
        );
        self.create(case, &s, "g", GroupStart::Beginning).await;
        self.check(
            case,
            self.read(case, &s, "g", "c", 10).await == want,
            "read_group did not return the records as written",
        );
        self.check(
            case,
            self.pending(case, &s, "g", "c", 10).await == want,
            "read_pending did not return the records as written",
        );
    }

    async fn cleanup(&self) {
        let case = "cleanup";
        let prefix = format!("{}-", self.run);
        let listed = self.ok(case, "list", self.store.list().await);
        let ours: Vec<String> = listed
            .into_iter()
            .map(|i| i.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        self.check(
            case,
            ours.len() >= 15,
            format!("only {} streams listed", ours.len()),
        );
        for s in &ours {
            self.ok(case, "delete", self.store.delete(s).await);
        }
        let listed = self.ok(case, "list", self.store.list().await);
        self.check(
            case,
            listed.iter().all(|i| !i.name.starts_with(&prefix)),
            "streams left after deleting them all",
        );
    }
}
