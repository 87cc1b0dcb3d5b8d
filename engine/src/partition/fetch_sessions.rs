//! Incremental fetch sessions (KIP-227): after one full fetch, a consumer names only the
//! partitions whose fetch state changed (and those it drops), and the broker answers only the
//! partitions with news. At thousands of partitions this is the difference between a fetch
//! that carries every partition twice and one that carries a handful.
//!
//! Pure logic, as Kafka's `FetchManager` and `FetchSessionCache`; the clock comes in as
//! milliseconds. A request's (session id, epoch) says what it is:
//! - epoch -1: a sessionless full fetch; a session named by the id is closed.
//! - epoch 0: a full fetch that opens a new session (closing the one named, if any); the answer
//!   carries the new id, or 0 when the cache has no room (the client goes on sessionless).
//! - epoch > 0: an incremental fetch of that session, which must be at exactly that epoch
//!   (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH otherwise); its partitions are
//!   updated, forgotten ones removed, and the whole session is fetched. A partition is answered
//!   when it has records, an error, or a high watermark or log start the client has not been
//!   told; partitions that returned records move to the back of the session (fairness under
//!   the response byte limit).
//!
//! The cache holds at most `slots` sessions (`max.incremental.fetch.session.cache.slots`) and
//! [`CACHED_PARTITIONS_MAX`] partitions in all. A new session evicts, as Kafka's does, the least
//! recently used one if it is stale (unused for [`EVICTION_MS`]), else the smallest session
//! older than that if the new one is at least as large; otherwise it gets no session.

use std::collections::{HashMap, HashSet};

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

pub const FINAL_EPOCH: i32 = -1;
pub const INITIAL_EPOCH: i32 = 0;
/// Kafka's `min.incremental.fetch.session.eviction.ms`.
pub const EVICTION_MS: u64 = 120_000;
/// Partitions cached by all sessions together (each costs about 200 bytes: the key twice, the
/// state, the map's slot): what a client can make the cache hold is bounded whatever it asks.
pub const CACHED_PARTITIONS_MAX: usize = 1_000_000;

/// A partition as a fetch names it: by topic id from Fetch v13 (the name is then empty), by
/// name before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionRef {
    pub topic_id: Uuid,
    pub topic: TopicName,
    pub partition: i32,
}

impl PartitionRef {
    /// A copy for the cache: a decoded name is a slice of its request frame, which a cached
    /// slice would keep alive for the session's life (a padded 100 MiB fetch, 1000 times over).
    fn owned(&self) -> PartitionRef {
        let name: &str = &self.topic;
        PartitionRef {
            topic_id: self.topic_id,
            topic: TopicName(StrBytes::from_string(name.to_owned())),
            partition: self.partition,
        }
    }
}

/// What the consumer asks of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub fetch_offset: i64,
    pub max_bytes: i32,
    pub leader_epoch: i32,
}

/// What a response holds for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start: i64,
    pub has_records: bool,
}

/// What the client was last told of a partition; -1: nothing yet (so it is answered).
#[derive(Debug, Clone, Copy)]
struct Told {
    high_watermark: i64,
    log_start: i64,
}

const UNTOLD: Told = Told {
    high_watermark: -1,
    log_start: -1,
};

struct Entry {
    r: PartitionRef,
    want: Want,
    told: Told,
}

struct Session {
    /// The epoch the next incremental fetch must carry.
    epoch: i32,
    by_id: bool,
    /// The partitions in fetch order: an incremental fetch walks them without hashing (at
    /// 10,000 partitions, two map lookups each cost more than the fetch itself).
    entries: Vec<Entry>,
    /// Where each partition is in `entries`, for the partitions a request names.
    index: HashMap<PartitionRef, usize>,
    created_ms: u64,
    last_used_ms: u64,
}

impl Session {
    fn new(now: u64, by_id: bool, requested: &[(PartitionRef, Want)]) -> Session {
        let mut s = Session {
            epoch: next_epoch(INITIAL_EPOCH),
            by_id,
            entries: Vec::with_capacity(requested.len()),
            index: HashMap::with_capacity(requested.len()),
            created_ms: now,
            last_used_ms: now,
        };
        s.update(requested.iter().cloned());
        s
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds or updates the partitions a request names.
    fn update(&mut self, requested: impl Iterator<Item = (PartitionRef, Want)>) {
        for (r, want) in requested {
            match self.index.get(&r) {
                Some(&i) => self.entries[i].want = want,
                None => {
                    let r = r.owned();
                    self.index.insert(r.clone(), self.entries.len());
                    self.entries.push(Entry {
                        r,
                        want,
                        told: UNTOLD,
                    });
                }
            }
        }
    }

    /// Keeps the entries `keep` accepts, in order, then appends those `back` holds.
    fn reorder(&mut self, keep: impl Fn(&Entry) -> bool, back: Vec<Entry>) {
        self.entries.retain(keep);
        self.entries.extend(back);
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.r.clone(), i))
            .collect();
    }
}

/// How a fetch is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Answer every requested partition; `session_id` is the new session's, or 0 for none.
    Full { session_id: i32 },
    /// Answer the session's partitions that have news.
    Incremental { session_id: i32, epoch: i32 },
    /// Answer this error, with no partitions.
    Error(i16),
}

impl Plan {
    pub fn session_id(&self) -> i32 {
        match *self {
            Plan::Full { session_id } | Plan::Incremental { session_id, .. } => session_id,
            Plan::Error(_) => 0,
        }
    }
}

/// The broker's fetch sessions.
pub struct FetchSessions {
    slots: usize,
    sessions: HashMap<i32, Session>,
    cached: usize,
    /// Sessions evicted to make room for new ones.
    pub evictions: u64,
}

impl FetchSessions {
    pub fn new(slots: usize) -> FetchSessions {
        FetchSessions {
            slots,
            sessions: HashMap::new(),
            cached: 0,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Starts serving a fetch: its plan, and the partitions to fetch in order.
    pub fn begin(
        &mut self,
        now: u64,
        session_id: i32,
        epoch: i32,
        by_id: bool,
        requested: Vec<(PartitionRef, Want)>,
        forgotten: &[PartitionRef],
    ) -> (Plan, Vec<(PartitionRef, Want)>) {
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            if session_id != 0 {
                self.remove(session_id);
            }
            let session_id = if epoch == INITIAL_EPOCH {
                self.create(now, by_id, &requested)
            } else {
                0
            };
            return (Plan::Full { session_id }, requested);
        }
        let error = |e: ResponseError| (Plan::Error(e.code()), Vec::new());
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return error(ResponseError::FetchSessionIdNotFound);
        };
        if s.epoch != epoch {
            return error(ResponseError::InvalidFetchSessionEpoch);
        }
        if s.by_id != by_id {
            return error(ResponseError::FetchSessionTopicIdError);
        }
        let before = s.len();
        s.update(requested.into_iter());
        if !forgotten.is_empty() {
            let gone: HashSet<&PartitionRef> = forgotten.iter().collect();
            s.reorder(|e| !gone.contains(&e.r), Vec::new());
        }
        let after = s.len();
        self.cached = self.cached - before + after;
        if after == 0 || self.cached > CACHED_PARTITIONS_MAX {
            // An emptied session closes (Kafka then answers sessionless); one that grew past
            // the cache's bound is dropped, and the client starts over with a full fetch.
            let too_big = after != 0;
            self.remove(session_id);
            return if too_big {
                error(ResponseError::FetchSessionIdNotFound)
            } else {
                (Plan::Full { session_id: 0 }, Vec::new())
            };
        }
        let s = self.sessions.get_mut(&session_id).expect("found above");
        s.epoch = next_epoch(s.epoch);
        s.last_used_ms = now;
        let fetch = s.entries.iter().map(|e| (e.r.clone(), e.want)).collect();
        (
            Plan::Incremental {
                session_id,
                epoch: s.epoch,
            },
            fetch,
        )
    }

    /// Records what the response tells the client; returns, for each fetched partition, whether
    /// the response includes it.
    pub fn finish(
        &mut self,
        plan: Plan,
        fetched: &[(PartitionRef, Want)],
        seen: &[Seen],
    ) -> Vec<bool> {
        debug_assert_eq!(fetched.len(), seen.len());
        let all = vec![true; fetched.len()];
        let (session_id, incremental_epoch) = match plan {
            Plan::Full { session_id: 0 } | Plan::Error(_) => return all,
            Plan::Full { session_id } => (session_id, None),
            Plan::Incremental { session_id, epoch } => (session_id, Some(epoch)),
        };
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return all;
        };
        if incremental_epoch.is_some_and(|e| e != s.epoch) {
            // Another fetch of this session came in between: tell everything.
            return all;
        }
        if incremental_epoch.is_none() {
            // The full fetch that opened the session: remember what it told, answer everything.
            for ((r, _), seen) in fetched.iter().zip(seen) {
                if let Some(&i) = s.index.get(r) {
                    s.entries[i].told = told(seen);
                }
            }
            return all;
        }
        // An incremental fetch fetched the session's entries, in order (the epoch is checked).
        if fetched.len() != s.entries.len() {
            return all;
        }
        let mut include = Vec::with_capacity(fetched.len());
        let mut with_records = false;
        for (e, seen) in s.entries.iter_mut().zip(seen) {
            let news = seen.has_records
                || seen.error != 0
                || e.told.high_watermark != seen.high_watermark
                || e.told.log_start != seen.log_start;
            e.told = told(seen);
            with_records |= seen.has_records;
            include.push(news);
        }
        if with_records {
            // Partitions that returned records go to the back: under the response byte limit
            // the others are served first next time.
            let mut moved = Vec::new();
            let mut keep = Vec::with_capacity(s.entries.len());
            for (e, seen) in s.entries.drain(..).zip(seen) {
                if seen.has_records {
                    moved.push(e);
                } else {
                    keep.push(e);
                }
            }
            s.entries = keep;
            s.reorder(|_| true, moved);
        }
        include
    }

    /// A new session for a full fetch of `requested`, or 0 when there is no room.
    fn create(&mut self, now: u64, by_id: bool, requested: &[(PartitionRef, Want)]) -> i32 {
        if self.slots == 0 || requested.is_empty() {
            return 0;
        }
        // The partition bound is never met by evicting: a session too large for what is left
        // goes without one (Kafka evicts at most one session, for a slot).
        if self.cached + requested.len() > CACHED_PARTITIONS_MAX {
            return 0;
        }
        if self.sessions.len() >= self.slots && !self.evict_for(now, requested.len()) {
            return 0;
        }
        let session = Session::new(now, by_id, requested);
        let id = loop {
            let id = (Uuid::new_v4().as_u128() as u32 & i32::MAX as u32) as i32;
            if id != 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.cached += session.len();
        self.sessions.insert(id, session);
        id
    }

    /// Evicts one session to make room for a new one of `size` partitions; false if none may go.
    fn evict_for(&mut self, now: u64, size: usize) -> bool {
        let age = |since: u64| now.saturating_sub(since);
        let stale = self
            .sessions
            .iter()
            .min_by_key(|(id, s)| (s.last_used_ms, **id))
            .filter(|(_, s)| age(s.last_used_ms) > EVICTION_MS)
            .map(|(id, _)| *id);
        let smaller = || {
            self.sessions
                .iter()
                .filter(|(_, s)| age(s.created_ms) > EVICTION_MS && s.len() <= size)
                .min_by_key(|(id, s)| (s.len(), **id))
                .map(|(id, _)| *id)
        };
        match stale.or_else(smaller) {
            Some(id) => {
                self.remove(id);
                self.evictions += 1;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: i32) {
        if let Some(s) = self.sessions.remove(&id) {
            self.cached -= s.len();
        }
    }
}

/// What an answer tells the client of a partition. After an error the next answer tells the
/// partition again, whatever it holds.
fn told(seen: &Seen) -> Told {
    Told {
        high_watermark: if seen.error != 0 {
            -1
        } else {
            seen.high_watermark
        },
        log_start: seen.log_start,
    }
}

/// The epoch after `epoch`: 1 after the largest (0 and -1 are never a session's).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn p(topic: &'static str, partition: i32) -> PartitionRef {
        PartitionRef {
            topic_id: Uuid::nil(),
            topic: TopicName(StrBytes::from_static_str(topic)),
            partition,
        }
    }

    fn want(offset: i64) -> Want {
        Want {
            fetch_offset: offset,
            max_bytes: 1 << 20,
            leader_epoch: -1,
        }
    }

    fn seen(hw: i64, records: bool) -> Seen {
        Seen {
            error: 0,
            high_watermark: hw,
            log_start: 0,
            has_records: records,
        }
    }

    fn names(fetch: &[(PartitionRef, Want)]) -> Vec<(String, i32, i64)> {
        fetch
            .iter()
            .map(|(r, w)| (r.topic.0.to_string(), r.partition, w.fetch_offset))
            .collect()
    }

    /// Opens a session over t/0, t/1, u/0 (all at offset 0, high watermark 10): its id.
    fn open(c: &mut FetchSessions, now: u64) -> i32 {
        let req = vec![
            (p("t", 0), want(0)),
            (p("t", 1), want(0)),
            (p("u", 0), want(0)),
        ];
        let (plan, fetch) = c.begin(now, 0, INITIAL_EPOCH, false, req, &[]);
        let Plan::Full { session_id } = plan else {
            panic!("{plan:?}")
        };
        assert_ne!(session_id, 0);
        let include = c.finish(plan, &fetch, &[seen(10, true); 3]);
        assert_eq!(include, vec![true; 3], "a full fetch answers everything");
        session_id
    }

    #[test]
    fn sessionless_fetches_never_open_or_need_a_session() {
        let mut c = FetchSessions::new(10);
        // kafka-go's Client.Fetch: session id -1, epoch -1 (issue 27).
        for id in [0, -1, 12345] {
            let (plan, fetch) = c.begin(0, id, FINAL_EPOCH, true, vec![(p("", 0), want(5))], &[]);
            assert_eq!(plan, Plan::Full { session_id: 0 });
            assert_eq!(fetch.len(), 1);
        }
        assert!(c.is_empty());
        // epoch -1 on an open session closes it.
        let id = open(&mut c, 0);
        c.begin(1, id, FINAL_EPOCH, false, vec![], &[]);
        assert!(c.is_empty());
    }

    #[test]
    fn incremental_fetches_carry_changes_and_answer_news_only() {
        let mut c = FetchSessions::new(10);
        let id = open(&mut c, 0);
        // The client moved t/0 to 10 (it got records) and forgets u/0.
        let (plan, fetch) = c.begin(1, id, 1, false, vec![(p("t", 0), want(10))], &[p("u", 0)]);
        assert_eq!(
            plan,
            Plan::Incremental {
                session_id: id,
                epoch: 2
            }
        );
        assert_eq!(names(&fetch), vec![("t".into(), 0, 10), ("t".into(), 1, 0)]);
        // t/0: nothing new; t/1: its high watermark moved.
        let include = c.finish(plan, &fetch, &[seen(10, false), seen(11, false)]);
        assert_eq!(include, vec![false, true]);
        // Same again: nothing to tell.
        let (plan, fetch) = c.begin(2, id, 2, false, vec![], &[]);
        assert_eq!(
            c.finish(plan, &fetch, &[seen(10, false), seen(11, false)]),
            vec![false, false]
        );
        // Records are always answered, and move the partition to the back.
        let (plan, fetch) = c.begin(3, id, 3, false, vec![], &[]);
        assert_eq!(
            c.finish(plan, &fetch, &[seen(12, true), seen(11, false)]),
            vec![true, false]
        );
        let (plan, fetch) = c.begin(4, id, 4, false, vec![], &[]);
        assert_eq!(names(&fetch), vec![("t".into(), 1, 0), ("t".into(), 0, 10)]);
        // An error is answered, and the partition is told again once it clears.
        let mut err = seen(11, false);
        err.error = ResponseError::NotLeaderOrFollower.code();
        assert_eq!(
            c.finish(plan, &fetch, &[err, seen(12, false)]),
            vec![true, false]
        );
        let (plan, fetch) = c.begin(5, id, 5, false, vec![], &[]);
        assert_eq!(
            c.finish(plan, &fetch, &[seen(11, false), seen(12, false)]),
            vec![true, false]
        );
        // A new partition added incrementally is answered the first time.
        let (plan, fetch) = c.begin(6, id, 6, false, vec![(p("v", 0), want(0))], &[]);
        assert_eq!(fetch.len(), 3);
        assert_eq!(
            c.finish(
                plan,
                &fetch,
                &[seen(11, false), seen(12, false), seen(0, false)]
            ),
            vec![false, false, true]
        );
    }

    #[test]
    fn wrong_ids_and_epochs_are_refused_and_change_nothing() {
        let mut c = FetchSessions::new(10);
        let id = open(&mut c, 0);
        let code = |plan: Plan| match plan {
            Plan::Error(e) => e,
            other => panic!("{other:?}"),
        };
        let (plan, _) = c.begin(1, id + 1, 1, false, vec![], &[]);
        assert_eq!(code(plan), ResponseError::FetchSessionIdNotFound.code());
        let (plan, _) = c.begin(1, 0, 1, false, vec![], &[]);
        assert_eq!(code(plan), ResponseError::FetchSessionIdNotFound.code());
        let (plan, _) = c.begin(1, id, 2, false, vec![], &[]);
        assert_eq!(code(plan), ResponseError::InvalidFetchSessionEpoch.code());
        let (plan, _) = c.begin(1, id, 1, true, vec![], &[]);
        assert_eq!(code(plan), ResponseError::FetchSessionTopicIdError.code());
        // The session is intact: epoch 1 still works.
        let (plan, fetch) = c.begin(1, id, 1, false, vec![], &[]);
        assert!(matches!(plan, Plan::Incremental { epoch: 2, .. }));
        assert_eq!(fetch.len(), 3);
        // A full fetch naming the session replaces it.
        let (plan, _) = c.begin(2, id, INITIAL_EPOCH, false, vec![(p("t", 0), want(0))], &[]);
        assert!(matches!(plan, Plan::Full { session_id } if session_id != id && session_id != 0));
        assert_eq!(c.len(), 1);
        // Forgetting everything closes the session.
        let new_id = plan.session_id();
        let (plan, fetch) = c.begin(3, new_id, 1, false, vec![], &[p("t", 0)]);
        assert_eq!((plan, fetch.len()), (Plan::Full { session_id: 0 }, 0));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_stale_then_smaller_old_sessions_else_refuses() {
        let mut c = FetchSessions::new(2);
        let a = open(&mut c, 0);
        let b = open(&mut c, 0);
        let one = || vec![(p("t", 0), want(0))];
        // Both young and larger: no room, the client goes sessionless.
        let (plan, _) = c.begin(1000, 0, INITIAL_EPOCH, false, one(), &[]);
        assert_eq!(plan, Plan::Full { session_id: 0 });
        // b stays in use; a goes stale and is evicted.
        c.begin(EVICTION_MS, b, 1, false, vec![], &[]);
        let (plan, _) = c.begin(EVICTION_MS + 1000, 0, INITIAL_EPOCH, false, one(), &[]);
        let small = plan.session_id();
        assert_ne!(small, 0);
        assert_eq!(c.evictions, 1);
        let (plan, _) = c.begin(EVICTION_MS + 1001, a, 1, false, vec![], &[]);
        assert_eq!(
            plan,
            Plan::Error(ResponseError::FetchSessionIdNotFound.code())
        );
        // Later, b is old but in use: a new session at least as large as the smallest old one
        // (the 1-partition session, old now too) evicts that one.
        let now = 3 * EVICTION_MS;
        c.begin(now, b, 2, false, vec![], &[]);
        c.begin(now, small, 1, false, vec![], &[]);
        let (plan, _) = c.begin(now + 1, 0, INITIAL_EPOCH, false, one(), &[]);
        assert_ne!(plan.session_id(), 0);
        assert_eq!(c.evictions, 2);
        let (plan, _) = c.begin(now + 2, small, 2, false, vec![], &[]);
        assert_eq!(
            plan,
            Plan::Error(ResponseError::FetchSessionIdNotFound.code())
        );
        // No slots: never a session.
        let mut off = FetchSessions::new(0);
        assert_eq!(
            off.begin(0, 0, 0, false, one(), &[]).0,
            Plan::Full { session_id: 0 }
        );
    }

    #[test]
    fn epochs_wrap_past_the_largest_to_one() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(7), 8);
        assert_eq!(next_epoch(i32::MAX), 1);
    }
}
