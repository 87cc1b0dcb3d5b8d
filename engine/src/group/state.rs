//! One consumer group's membership state machine (the classic rebalance protocol), as pure code:
//! time comes in as milliseconds, answers go out as values. The coordinator (`coordinator.rs`)
//! holds the waiting requests and the clock. This file: the vocabulary, the group and the
//! requests of members it knows (SyncGroup, Heartbeat, LeaveGroup, the commit check) and its
//! clock; `join.rs`: JoinGroup and the join phase of a rebalance; `static_member.rs`: static
//! membership (KIP-345).
//!
//! States, as in Kafka: `Empty` (no members) → `PreparingRebalance` (members (re)join; the join
//! completes once every known member has rejoined, or at the rebalance timeout, when the
//! stragglers are removed) → `CompletingRebalance` (joins answered with the new generation;
//! waiting for the leader's assignment in SyncGroup) → `Stable` (assignment handed out;
//! heartbeats keep members alive). A member that misses its session timeout is removed and the
//! group rebalances. Invariants (asserted in tests): the generation only grows; every answered
//! join of one generation names the same leader and protocol; a member is answered at most once
//! per join or sync.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::errors::{ILLEGAL_GENERATION, NONE, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID};

/// Session timeouts a member may ask for (Kafka's group.min/max.session.timeout.ms).
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<i32> = 6_000..=1_800_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id first gets one with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    /// JoinGroup v9+ (KIP-814): a leader can be told to skip computing an assignment.
    pub supports_skip_assignment: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: (member id, instance id, metadata for the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// KIP-814: the leader gets the members but must not compute an assignment (a restarted
    /// static leader of a Stable group).
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(error: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub(super) fn error(error: i16) -> SyncResult {
        SyncResult {
            error,
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer for a request that waited (a join or sync that completed later).
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    Join(String, JoinResult),
    Sync(String, SyncResult),
}

/// A request's answer now, or later through [`Completed`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    Now(T),
    Later,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub(super) last_seen_ms: u64,
    pub(super) awaiting_join: bool,
    pub(super) awaiting_sync: bool,
}

impl Member {
    /// The member's metadata for `protocol` (empty if it does not speak it).
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(p, _)| p == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// In join order.
    pub members: BTreeMap<u64, Member>,
    pub(super) next_join_order: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet: id -> expiry.
    pub(super) pending_ids: BTreeMap<String, u64>,
    /// PreparingRebalance: the join completes by then at the latest.
    pub(super) rebalance_deadline_ms: u64,
    /// PreparingRebalance from Empty: not before then (more members may be on their way).
    pub(super) join_not_before_ms: u64,
    pub(super) initial_delay_ms: u64,
}

impl Group {
    pub fn new(id: &str, initial_delay_ms: u64) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            next_join_order: 0,
            pending_ids: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            join_not_before_ms: 0,
            initial_delay_ms,
        }
    }

    /// The state DescribeGroups and ListGroups report: a group without members is Empty.
    pub fn reported_state(&self) -> State {
        if self.members.is_empty() {
            State::Empty
        } else {
            self.state
        }
    }

    /// No members and no member ids handed out: nothing for the clock to do.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending_ids.is_empty()
    }

    pub(super) fn order_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.id == member_id)
            .map(|(o, _)| *o)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.values().find(|m| m.id == member_id)
    }

    /// Whether a member's subscription names `topic` (consumer protocol groups only).
    pub fn subscribed_to(&self, topic: &str) -> bool {
        self.protocol_type.as_deref() == Some("consumer")
            && self.members.values().any(|m| {
                m.protocols.iter().any(|(_, meta)| {
                    consumer_subscription(meta).is_some_and(|ts| ts.iter().any(|t| t == topic))
                })
            })
    }

    /// Syncs waiting for the leader's assignment end with REBALANCE_IN_PROGRESS (the
    /// generation they waited for is over).
    pub(super) fn fail_pending_syncs(&mut self) -> Vec<Completed> {
        let mut out = Vec::new();
        for m in self.members.values_mut() {
            if std::mem::take(&mut m.awaiting_sync) {
                out.push(Completed::Sync(
                    m.id.clone(),
                    SyncResult::error(REBALANCE_IN_PROGRESS),
                ));
            }
        }
        out
    }

    pub fn sync(
        &mut self,
        now: u64,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (Answer<SyncResult>, Vec<Completed>) {
        let now_err = |e| (Answer::Now(SyncResult::error(e)), Vec::new());
        let Some(order) = self.order_of(member_id) else {
            return now_err(UNKNOWN_MEMBER_ID);
        };
        if generation != self.generation {
            return now_err(ILLEGAL_GENERATION);
        }
        self.members.get_mut(&order).expect("found").last_seen_ms = now;
        match self.state {
            State::Empty | State::PreparingRebalance => now_err(REBALANCE_IN_PROGRESS),
            State::Stable => {
                let m = &self.members[&order];
                (Answer::Now(self.sync_ok(m.assignment.clone())), Vec::new())
            }
            State::CompletingRebalance => {
                self.members.get_mut(&order).expect("found").awaiting_sync = true;
                if self.leader.as_deref() != Some(member_id) {
                    return (Answer::Later, Vec::new());
                }
                for m in self.members.values_mut() {
                    m.assignment = assignments
                        .iter()
                        .find(|(id, _)| *id == m.id)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default();
                }
                self.state = State::Stable;
                let mut mine = None;
                let mut out = Vec::new();
                for m in self.members.values_mut() {
                    if std::mem::take(&mut m.awaiting_sync) {
                        let r = SyncResult {
                            error: NONE,
                            protocol_type: self.protocol_type.clone(),
                            protocol: self.protocol.clone(),
                            assignment: m.assignment.clone(),
                        };
                        if m.id == member_id {
                            mine = Some(r);
                        } else {
                            out.push(Completed::Sync(m.id.clone(), r));
                        }
                    }
                }
                (Answer::Now(mine.expect("the leader waits too")), out)
            }
        }
    }

    fn sync_ok(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment,
        }
    }

    pub fn heartbeat(&mut self, now: u64, member_id: &str, generation: i32) -> i16 {
        let Some(order) = self.order_of(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        self.members.get_mut(&order).expect("found").last_seen_ms = now;
        match self.state {
            State::PreparingRebalance => REBALANCE_IN_PROGRESS,
            _ => NONE,
        }
    }

    /// Removes members (LeaveGroup); returns an error code per member and answers that a
    /// rebalance produced.
    pub fn leave(&mut self, now: u64, member_ids: &[String]) -> (Vec<i16>, Vec<Completed>) {
        let mut codes = Vec::new();
        let mut left = false;
        for id in member_ids {
            match self.order_of(id) {
                Some(o) => {
                    self.members.remove(&o);
                    codes.push(NONE);
                    left = true;
                }
                None => codes.push(UNKNOWN_MEMBER_ID),
            }
        }
        let completed = if left {
            self.after_removal(now)
        } else {
            Vec::new()
        };
        (codes, completed)
    }

    fn after_removal(&mut self, now: u64) -> Vec<Completed> {
        let mut out = Vec::new();
        if self
            .leader
            .as_ref()
            .is_some_and(|l| self.member(l).is_none())
        {
            self.leader = None;
        }
        match self.state {
            State::Stable | State::CompletingRebalance => {
                out.extend(self.fail_pending_syncs());
                if self.members.is_empty() {
                    self.state = State::Empty;
                    self.generation += 1;
                    self.protocol = None;
                } else {
                    self.prepare_rebalance(now);
                }
            }
            State::PreparingRebalance => out.extend(self.try_complete_join(now)),
            State::Empty => {}
        }
        out
    }

    /// Time passes: members past their session timeout leave, a join phase past its deadline
    /// completes without its stragglers, expired handed-out member ids are forgotten.
    pub fn tick(&mut self, now: u64) -> Vec<Completed> {
        self.pending_ids.retain(|_, expiry| *expiry > now);
        let expired: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join && now > m.last_seen_ms + m.session_timeout_ms as u64)
            .map(|(o, _)| *o)
            .collect();
        let mut out = Vec::new();
        if !expired.is_empty() {
            for o in expired {
                self.members.remove(&o);
            }
            out.extend(self.after_removal(now));
        }
        out.extend(self.try_complete_join(now));
        out
    }

    /// Whether an OffsetCommit from this member and generation may be applied: generation -1 is
    /// a commit from outside any group membership, allowed while the group has no members.
    pub fn check_commit(&self, member_id: &str, generation: i32) -> i16 {
        if generation < 0 {
            return if self.members.is_empty() {
                NONE
            } else {
                UNKNOWN_MEMBER_ID
            };
        }
        if self.order_of(member_id).is_none() {
            return UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        // As in Kafka: a member may still commit for its generation while the group prepares
        // a rebalance (that is when it hands its partitions back); not while the new generation
        // waits for its assignment.
        match self.state {
            State::CompletingRebalance => REBALANCE_IN_PROGRESS,
            _ => NONE,
        }
    }
}

/// The topics a consumer-protocol subscription names (ConsumerProtocolSubscription: version
/// i16, topics [string], ...). None if the bytes are not one.
pub fn consumer_subscription(metadata: &[u8]) -> Option<Vec<String>> {
    let mut at = 2usize; // version
    let read_i32 = |at: &mut usize| -> Option<i32> {
        let b = metadata.get(*at..*at + 4)?;
        *at += 4;
        Some(i32::from_be_bytes(b.try_into().ok()?))
    };
    let count = read_i32(&mut at)?;
    if count < 0 || count as usize > metadata.len() {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i16::from_be_bytes(metadata.get(at..at + 2)?.try_into().ok()?);
        at += 2;
        let name = metadata.get(at..at + len.max(0) as usize)?;
        at += len.max(0) as usize;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
    }
    Some(topics)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::errors::{INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT, MEMBER_ID_REQUIRED};

    pub(in crate::group) fn join(id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: id.to_string(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
            supports_skip_assignment: false,
        }
    }

    /// Joins a new member the v4+ way (MEMBER_ID_REQUIRED first); returns its id.
    pub(in crate::group) fn new_member(
        g: &mut Group,
        now: u64,
        protocols: &[&str],
    ) -> (String, Answer<JoinResult>, Vec<Completed>) {
        let (a, done) = g.join(now, join("", protocols));
        assert!(done.is_empty());
        let Answer::Now(r) = a else {
            panic!("answered at once")
        };
        assert_eq!(r.error, MEMBER_ID_REQUIRED);
        let (a, done) = g.join(now, join(&r.member_id, protocols));
        (r.member_id, a, done)
    }

    #[test]
    fn two_members_join_sync_and_get_their_assignments() {
        let mut g = Group::new("g", 0);
        let (a, answer, _) = new_member(&mut g, 0, &["range", "roundrobin"]);
        // Alone and no initial delay: generation 1 at once, a is the leader.
        let Answer::Now(ra) = answer else { panic!() };
        assert_eq!(
            (ra.error, ra.generation, ra.leader.as_str()),
            (NONE, 1, a.as_str())
        );
        assert_eq!(ra.members.len(), 1);
        let (Answer::Now(s), _) = g.sync(1, &a, 1, vec![(a.clone(), Bytes::from("all"))]) else {
            panic!()
        };
        assert_eq!((s.error, &s.assignment[..]), (NONE, &b"all"[..]));
        assert_eq!(g.state, State::Stable);

        // b joins: rebalance; a learns by heartbeat and rejoins; both answered, same generation.
        let (b, answer, _) = new_member(&mut g, 2, &["roundrobin", "range"]);
        assert_eq!(answer, Answer::Later);
        assert_eq!(g.heartbeat(3, &a, 1), REBALANCE_IN_PROGRESS);
        let (answer, done) = g.join(4, join(&a, &["range", "roundrobin"]));
        let Answer::Now(ra) = answer else { panic!() };
        let [Completed::Join(who, rb)] = done.as_slice() else {
            panic!("{done:?}")
        };
        assert_eq!(who, &b);
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(ra.leader, rb.leader);
        assert_eq!(ra.protocol, rb.protocol);
        // Votes tie 1-1; the first member's preference wins.
        assert_eq!(ra.protocol.as_deref(), Some("range"));
        let leader = ra.leader.clone();
        let follower = if leader == a { &b } else { &a };
        assert_eq!(g.sync(5, follower, 2, vec![]).0, Answer::Later);
        let (Answer::Now(sl), done) = g.sync(
            5,
            &leader,
            2,
            vec![
                (a.clone(), Bytes::from("p0")),
                (b.clone(), Bytes::from("p1")),
            ],
        ) else {
            panic!()
        };
        assert_eq!(sl.error, NONE);
        let [Completed::Sync(who, sf)] = done.as_slice() else {
            panic!()
        };
        assert_eq!(who, follower);
        let want = if *follower == a { "p0" } else { "p1" };
        assert_eq!(&sf.assignment[..], want.as_bytes());
        assert_eq!(g.check_commit(&a, 2), NONE);
        assert_eq!(g.check_commit(&a, 1), ILLEGAL_GENERATION);
        assert_eq!(g.check_commit("stranger", 2), UNKNOWN_MEMBER_ID);
        assert_eq!(g.check_commit("", -1), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_silent_member_is_expired_and_the_rest_rebalance() {
        let mut g = Group::new("g", 0);
        let (a, _, _) = new_member(&mut g, 0, &["range"]);
        g.sync(0, &a, 1, vec![]);
        let (b, _, _) = new_member(&mut g, 1, &["range"]);
        let (_, done) = g.join(1, join(&a, &["range"]));
        assert!(done
            .iter()
            .any(|c| matches!(c, Completed::Join(id, _) if *id == b)));
        let leader = g.leader.clone().unwrap();
        let (synced, _) = g.sync(2, &leader, 2, vec![]);
        assert!(
            matches!(synced, Answer::Now(SyncResult { error: NONE, .. })),
            "{synced:?} {g:?}"
        );
        assert_eq!(g.state, State::Stable);
        // b heartbeats; a goes quiet past its 10 s session.
        for t in (1_000..=10_000).step_by(1_000) {
            assert_eq!(g.heartbeat(t, &b, 2), NONE);
            assert!(g.tick(t).is_empty());
        }
        assert!(g.member(&a).is_some(), "within its session");
        assert_eq!(g.heartbeat(11_000, &b, 2), NONE);
        g.tick(11_000);
        assert!(g.member(&a).is_none(), "a expired");
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.heartbeat(12_001, &b, 2), REBALANCE_IN_PROGRESS);
        let (answer, _) = g.join(12_002, join(&b, &["range"]));
        let Answer::Now(r) = answer else { panic!() };
        assert_eq!((r.generation, r.leader.as_str()), (3, b.as_str()));
    }

    #[test]
    fn leaving_and_bad_requests() {
        let mut g = Group::new("g", 0);
        assert_eq!(
            g.join(0, join("made-up", &["range"])).0,
            Answer::Now(JoinResult::error(UNKNOWN_MEMBER_ID, "made-up"))
        );
        let mut short = join("", &["range"]);
        short.session_timeout_ms = 10;
        assert!(matches!(g.join(0, short).0, Answer::Now(r) if r.error == INVALID_SESSION_TIMEOUT));
        let (a, _, _) = new_member(&mut g, 0, &["range"]);
        // A protocol nobody else speaks.
        let (id_req, _) = g.join(1, join("", &["sticky"]));
        let Answer::Now(r) = id_req else { panic!() };
        assert_eq!(r.error, INCONSISTENT_GROUP_PROTOCOL);
        assert_eq!(
            g.sync(1, &a, 7, vec![]).0,
            Answer::Now(SyncResult::error(ILLEGAL_GENERATION))
        );
        assert_eq!(g.heartbeat(1, "nobody", 1), UNKNOWN_MEMBER_ID);
        let (codes, _) = g.leave(2, &[a.clone(), "nobody".into()]);
        assert_eq!(codes, vec![NONE, UNKNOWN_MEMBER_ID]);
        assert_eq!(g.state, State::Empty);
        assert_eq!(
            g.check_commit("", -1),
            NONE,
            "an empty group takes simple commits"
        );
        let generation = g.generation;
        assert!(generation >= 2, "generations only grow");
    }

    #[test]
    fn consumer_subscriptions_parse_and_garbage_does_not() {
        // version 1, topics ["orders", "b"], then user data we ignore.
        let mut m = vec![0, 1, 0, 0, 0, 2, 0, 6];
        m.extend_from_slice(b"orders");
        m.extend_from_slice(&[0, 1, b'b', 0, 0, 0, 0]);
        assert_eq!(
            consumer_subscription(&m),
            Some(vec!["orders".to_string(), "b".into()])
        );
        assert_eq!(consumer_subscription(&m[..9]), None);
        assert_eq!(consumer_subscription(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        let mut g = Group::new("g", 0);
        let mut r = join("", &["range"]);
        r.instance_id = Some("i".into());
        r.protocols = vec![("range".into(), Bytes::from(m))];
        g.join(0, r);
        assert!(g.subscribed_to("orders") && !g.subscribed_to("other"));
    }
}
