//! One consumer group's membership state machine (the classic rebalance protocol), as pure code:
//! time comes in as milliseconds, answers go out as values. The coordinator (`coordinator.rs`)
//! holds the waiting requests and the clock.
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

use crate::errors::{
    FENCED_INSTANCE_ID, ILLEGAL_GENERATION, INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT,
    MEMBER_ID_REQUIRED, NONE, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};

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
    fn error(error: i16) -> SyncResult {
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
    last_seen_ms: u64,
    awaiting_join: bool,
    awaiting_sync: bool,
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
    next_join_order: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet: id -> expiry.
    pending_ids: BTreeMap<String, u64>,
    /// PreparingRebalance: the join completes by then at the latest.
    rebalance_deadline_ms: u64,
    /// PreparingRebalance from Empty: not before then (more members may be on their way).
    join_not_before_ms: u64,
    initial_delay_ms: u64,
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

    /// A static member whose instance id now belongs to another member id is a zombie (an old
    /// incarnation): Kafka answers it FENCED_INSTANCE_ID, which stops it rather than letting it
    /// rejoin and evict its successor.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        let Some(instance) = instance_id else {
            return false;
        };
        self.members
            .values()
            .any(|m| m.instance_id.as_deref() == Some(instance) && m.id != member_id)
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

    fn order_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.id == member_id)
            .map(|(o, _)| *o)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.values().find(|m| m.id == member_id)
    }

    fn new_member_id(client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4().simple())
    }

    pub fn join(&mut self, now: u64, req: JoinRequest) -> (Answer<JoinResult>, Vec<Completed>) {
        let fail = |e| {
            (
                Answer::Now(JoinResult::error(e, &req.member_id)),
                Vec::new(),
            )
        };
        if !SESSION_TIMEOUT_MS.contains(&req.session_timeout_ms) {
            return fail(INVALID_SESSION_TIMEOUT);
        }
        if req.protocols.is_empty()
            || req.protocol_type.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|t| !self.members.is_empty() && *t != req.protocol_type)
            || (!self.members.is_empty()
                && !req
                    .protocols
                    .iter()
                    .any(|(p, _)| self.supported_by_all_but(p, &req.member_id)))
        {
            return fail(INCONSISTENT_GROUP_PROTOCOL);
        }
        if !req.member_id.is_empty() && self.is_fenced(&req.member_id, req.instance_id.as_deref()) {
            return fail(FENCED_INSTANCE_ID);
        }
        let known = self.order_of(&req.member_id);
        if known.is_none()
            && !req.member_id.is_empty()
            && !self.pending_ids.contains_key(&req.member_id)
        {
            // A static member coming back with a new member id replaces its old self.
            let replaced = req.instance_id.as_ref().and_then(|i| {
                self.members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_ref() == Some(i))
                    .map(|(o, _)| *o)
            });
            if replaced.is_none() {
                return fail(UNKNOWN_MEMBER_ID);
            }
        }
        let member_id = if req.member_id.is_empty() {
            let id = Group::new_member_id(&req.client_id);
            if req.require_known_member_id && req.instance_id.is_none() {
                self.pending_ids
                    .insert(id.clone(), now + req.session_timeout_ms as u64);
                return fail_with_id(MEMBER_ID_REQUIRED, id);
            }
            id
        } else {
            req.member_id.clone()
        };
        self.pending_ids.remove(&member_id);
        if let Some(r) = self.replace_static_member(now, &member_id, &req) {
            return (Answer::Now(r), Vec::new());
        }
        // Static membership: the instance id's previous member leaves in its favour.
        if let Some(instance) = &req.instance_id {
            let old: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, m)| m.instance_id.as_ref() == Some(instance) && m.id != member_id)
                .map(|(o, _)| *o)
                .collect();
            for o in old {
                let m = self.members.remove(&o).expect("listed");
                if self.leader.as_deref() == Some(m.id.as_str()) {
                    self.leader = None;
                }
            }
        }
        if let Some(order) = known {
            if let Some(r) = self.rejoin_in_generation(now, order, &req.protocols) {
                return (Answer::Now(r), Vec::new());
            }
        }
        let mut completed = Vec::new();
        if self.state == State::CompletingRebalance {
            completed.extend(self.fail_pending_syncs());
        }
        let order = match self.order_of(&member_id) {
            Some(o) => o,
            None => {
                let o = self.next_join_order;
                self.next_join_order += 1;
                o
            }
        };
        self.members.insert(
            order,
            Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms.max(req.session_timeout_ms),
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_seen_ms: now,
                awaiting_join: true,
                awaiting_sync: false,
            },
        );
        self.protocol_type = Some(req.protocol_type);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        completed.extend(self.try_complete_join(now));
        // This member's own answer, if the join completed just now, is among `completed`.
        let mine = completed
            .iter()
            .position(|c| matches!(c, Completed::Join(id, _) if *id == member_id));
        match mine {
            Some(at) => {
                let Completed::Join(_, r) = completed.remove(at) else {
                    unreachable!("found a join")
                };
                (Answer::Now(r), completed)
            }
            None => (Answer::Later, completed),
        }
    }

    /// A known member rejoining with the protocols it joined with, while its generation is
    /// settled, gets that generation back instead of starting a rebalance — Kafka's
    /// `GroupCoordinator` (doCurrentMemberJoinGroup) does the same: in CompletingRebalance (it
    /// may have missed its join answer; the leader gets the members again, to assign) and, for
    /// a follower, in Stable (its SyncGroup then returns the assignment it holds). A client
    /// that sends its JoinGroup again — kafka-python 3.0 does when a join completed while the
    /// application was not polling that consumer — would otherwise restart the rebalance on
    /// every completion and never settle. The leader rejoining a Stable group, or a member
    /// whose subscription changed, rebalances (that is how a leader asks for one when only
    /// topic metadata changed). None: the join takes the ordinary path.
    fn rejoin_in_generation(
        &mut self,
        now: u64,
        order: u64,
        protocols: &[(String, Bytes)],
    ) -> Option<JoinResult> {
        let leader = self.leader.clone()?;
        let member = self.members.get_mut(&order)?;
        if member.protocols != protocols {
            return None;
        }
        let is_leader = member.id == leader;
        match self.state {
            State::CompletingRebalance => {}
            State::Stable if !is_leader => {}
            _ => return None,
        }
        debug_assert!(
            !member.awaiting_join,
            "settled generations have no waiting joins"
        );
        member.last_seen_ms = now;
        let member_id = member.id.clone();
        let protocol = self
            .protocol
            .clone()
            .expect("a settled generation has a protocol");
        Some(JoinResult {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            members: if is_leader {
                self.member_metadata(&protocol)
            } else {
                Vec::new()
            },
            protocol: Some(protocol),
            leader,
            member_id,
            skip_assignment: false,
        })
    }

    /// KIP-345: a static member restarting (its instance id known, a new member id) while the
    /// group is Stable takes its previous incarnation's place — assignment, join order and
    /// leadership — without a rebalance, unless its protocols would change the group's
    /// protocol. As Kafka's `updateStaticMemberAndRebalance`: a restarted leader that speaks
    /// JoinGroup v9 is told it leads, with the members, and to skip the assignment (KIP-814; it
    /// keeps watching metadata as a leader must); an older one is told the leader as it was
    /// (its old id), so that it syncs as a follower and gets the assignment it holds instead of
    /// computing one a Stable group would never hand out. The old member id is fenced from now
    /// on. None: the join takes the ordinary path.
    fn replace_static_member(
        &mut self,
        now: u64,
        member_id: &str,
        req: &JoinRequest,
    ) -> Option<JoinResult> {
        let instance = req.instance_id.as_ref()?;
        if self.state != State::Stable {
            return None;
        }
        let order = self
            .members
            .iter()
            .find(|(_, m)| m.instance_id.as_ref() == Some(instance) && m.id != member_id)
            .map(|(o, _)| *o)?;
        let current = self.protocol.clone()?;
        let old_protocols = std::mem::replace(
            &mut self.members.get_mut(&order)?.protocols,
            req.protocols.clone(),
        );
        if self.choose_protocol() != current {
            self.members.get_mut(&order)?.protocols = old_protocols;
            return None;
        }
        let leader_was = self.leader.clone()?;
        let m = self.members.get_mut(&order)?;
        let leads = leader_was == m.id;
        if leads {
            self.leader = Some(member_id.to_string());
        }
        m.id = member_id.to_string();
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms.max(req.session_timeout_ms);
        m.last_seen_ms = now;
        let skip_assignment = leads && req.supports_skip_assignment;
        Some(JoinResult {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            members: if skip_assignment {
                self.member_metadata(&current)
            } else {
                Vec::new()
            },
            protocol: Some(current),
            leader: if skip_assignment {
                member_id.to_string()
            } else {
                leader_was
            },
            member_id: member_id.to_string(),
            skip_assignment,
        })
    }

    /// What the leader's join answer lists: (member id, instance id, metadata for `protocol`).
    fn member_metadata(&self, protocol: &str) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.metadata_for(protocol),
                )
            })
            .collect()
    }

    fn supported_by_all_but(&self, protocol: &str, member_id: &str) -> bool {
        self.members
            .values()
            .filter(|m| m.id != member_id)
            .all(|m| m.protocols.iter().any(|(p, _)| p == protocol))
    }

    fn prepare_rebalance(&mut self, now: u64) {
        let from_empty = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms as u64)
            .max()
            .unwrap_or(0);
        self.rebalance_deadline_ms = now + longest;
        self.join_not_before_ms = if from_empty {
            now + self.initial_delay_ms
        } else {
            now
        };
        for m in self.members.values_mut() {
            m.awaiting_sync = false;
        }
    }

    fn fail_pending_syncs(&mut self) -> Vec<Completed> {
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

    /// Completes the join phase when every member has rejoined (or the deadline passed).
    fn try_complete_join(&mut self, now: u64) -> Vec<Completed> {
        if self.state != State::PreparingRebalance || now < self.join_not_before_ms {
            return Vec::new();
        }
        let all_in = self.members.values().all(|m| m.awaiting_join);
        if !all_in && now < self.rebalance_deadline_ms {
            return Vec::new();
        }
        // Stragglers are out.
        let gone: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join)
            .map(|(o, _)| *o)
            .collect();
        for o in gone {
            self.members.remove(&o);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return Vec::new();
        }
        self.protocol = Some(self.choose_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.values().any(|m| &m.id == l))
        {
            self.leader = self.members.values().next().map(|m| m.id.clone());
        }
        self.state = State::CompletingRebalance;
        let protocol = self.protocol.clone().expect("chosen");
        let leader = self.leader.clone().expect("chosen");
        let everyone = self.member_metadata(&protocol);
        let mut out = Vec::new();
        for m in self.members.values_mut() {
            m.awaiting_join = false;
            m.last_seen_ms = now;
            out.push(Completed::Join(
                m.id.clone(),
                JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: Some(protocol.clone()),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                },
            ));
        }
        out
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    fn choose_protocol(&self) -> String {
        let first = self.members.values().next().expect("members");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(p, _)| p)
            .filter(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == *p))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((p, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(p).or_default() += 1;
            }
        }
        // Ties go to the first member's preference.
        candidates
            .iter()
            .max_by_key(|p| {
                (
                    votes.get(*p).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|c| c == *p)),
                )
            })
            .map(|p| (*p).clone())
            .expect("a join only succeeds with a common protocol")
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

impl Group {
    /// Whether a member's subscription names `topic` (consumer protocol groups only).
    pub fn subscribed_to(&self, topic: &str) -> bool {
        self.protocol_type.as_deref() == Some("consumer")
            && self.members.values().any(|m| {
                m.protocols.iter().any(|(_, meta)| {
                    consumer_subscription(meta).is_some_and(|ts| ts.iter().any(|t| t == topic))
                })
            })
    }
}

fn fail_with_id(error: i16, member_id: String) -> (Answer<JoinResult>, Vec<Completed>) {
    (
        Answer::Now(JoinResult::error(error, &member_id)),
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str, protocols: &[&str]) -> JoinRequest {
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
    fn new_member(
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

    /// Two members in a Stable generation 2 (a leads, b follows) holding "pa" and "pb".
    fn stable_pair(g: &mut Group) -> (String, String) {
        let (a, _, _) = new_member(g, 0, &["range", "roundrobin"]);
        g.sync(0, &a, 1, vec![]);
        let (b, answer, _) = new_member(g, 1, &["range", "roundrobin"]);
        assert_eq!(answer, Answer::Later);
        let (Answer::Now(ra), _) = g.join(2, join(&a, &["range", "roundrobin"])) else {
            panic!()
        };
        assert_eq!((ra.generation, ra.leader.as_str()), (2, a.as_str()));
        let assignments = vec![
            (a.clone(), Bytes::from("pa")),
            (b.clone(), Bytes::from("pb")),
        ];
        assert_eq!(g.sync(3, &b, 2, vec![]).0, Answer::Later);
        let (Answer::Now(s), _) = g.sync(3, &a, 2, assignments) else {
            panic!()
        };
        assert_eq!((s.error, g.state), (NONE, State::Stable));
        (a, b)
    }

    /// Issue 17: kafka-python 3.0 sends its JoinGroup again when a join completed while the
    /// application polled another consumer. Each such rejoin restarted the rebalance, whose
    /// completion came while the other consumer was polled again: the follower never held its
    /// partitions. As Kafka does, a follower rejoining a Stable group unchanged gets the current
    /// generation back and syncs to the assignment it holds; nobody else is disturbed.
    #[test]
    fn a_follower_rejoining_unchanged_gets_its_generation_back() {
        let mut g = Group::new("g", 0);
        let (a, b) = stable_pair(&mut g);
        let (answer, done) = g.join(10, join(&b, &["range", "roundrobin"]));
        let Answer::Now(r) = answer else {
            panic!("a follower's unchanged rejoin waited for a rebalance: {answer:?}")
        };
        assert!(done.is_empty());
        assert_eq!(
            (
                r.error,
                r.generation,
                r.leader.as_str(),
                r.member_id.as_str()
            ),
            (NONE, 2, a.as_str(), b.as_str())
        );
        assert_eq!(r.protocol.as_deref(), Some("range"));
        assert!(r.members.is_empty(), "only the leader gets the members");
        assert_eq!(g.state, State::Stable);
        assert_eq!(
            g.heartbeat(11, &a, 2),
            NONE,
            "the leader is not asked to rejoin"
        );
        let (Answer::Now(s), _) = g.sync(12, &b, 2, vec![]) else {
            panic!()
        };
        assert_eq!((s.error, &s.assignment[..]), (NONE, &b"pb"[..]));
        // The rejoin counts as a sign of life.
        assert_eq!(g.member(&b).unwrap().last_seen_ms, 12);
    }

    /// What still rebalances, as in Kafka: the leader rejoining a Stable group (how it asks
    /// for a rebalance when only topic metadata changed) and a member whose subscription
    /// changed.
    #[test]
    fn the_leader_or_a_changed_member_rejoining_rebalances() {
        let mut g = Group::new("g", 0);
        let (a, b) = stable_pair(&mut g);
        let (answer, _) = g.join(10, join(&a, &["range", "roundrobin"]));
        assert_eq!(answer, Answer::Later);
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.heartbeat(11, &b, 2), REBALANCE_IN_PROGRESS);

        let mut g = Group::new("g", 0);
        let (a, b) = stable_pair(&mut g);
        let mut changed = join(&b, &["range", "roundrobin"]);
        changed.protocols[0].1 = Bytes::from("another subscription");
        assert_eq!(g.join(10, changed).0, Answer::Later);
        assert_eq!(g.heartbeat(11, &a, 2), REBALANCE_IN_PROGRESS);
        let (Answer::Now(r), done) = g.join(12, join(&a, &["range", "roundrobin"])) else {
            panic!()
        };
        assert_eq!((r.generation, done.len()), (3, 1));
    }

    /// A member that missed its join answer and rejoins unchanged while the generation waits
    /// for the leader's assignment gets the same answer again (the leader with the members)
    /// and the syncs already waiting stay waiting.
    #[test]
    fn rejoining_unchanged_while_the_assignment_is_awaited_repeats_the_answer() {
        let mut g = Group::new("g", 0);
        let (a, _, _) = new_member(&mut g, 0, &["range"]);
        g.sync(0, &a, 1, vec![]);
        let (b, _, _) = new_member(&mut g, 1, &["range"]);
        let (Answer::Now(first), _) = g.join(2, join(&a, &["range"])) else {
            panic!()
        };
        assert_eq!(g.state, State::CompletingRebalance);
        assert_eq!(g.sync(3, &b, 2, vec![]).0, Answer::Later);
        let (Answer::Now(again), done) = g.join(4, join(&a, &["range"])) else {
            panic!("the leader's repeated join waited")
        };
        assert!(done.is_empty(), "b's sync keeps waiting: {done:?}");
        assert_eq!(again, first);
        assert_eq!(again.members.len(), 2);
        let (Answer::Now(rb), _) = g.join(5, join(&b, &["range"])) else {
            panic!("the follower's repeated join waited")
        };
        assert_eq!((rb.generation, rb.members.len()), (2, 0));
        assert_eq!(g.state, State::CompletingRebalance);
        let (Answer::Now(s), done) = g.sync(
            6,
            &a,
            2,
            vec![
                (a.clone(), Bytes::from("pa")),
                (b.clone(), Bytes::from("pb")),
            ],
        ) else {
            panic!()
        };
        assert_eq!(s.error, NONE);
        assert!(
            matches!(done.as_slice(), [Completed::Sync(id, r)] if *id == b && r.assignment == "pb")
        );
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
    fn stragglers_are_dropped_at_the_rebalance_deadline() {
        let mut g = Group::new("g", 0);
        let (a, _, _) = new_member(&mut g, 0, &["range"]);
        let (b, answer, done) = new_member(&mut g, 0, &["range"]);
        // a was answered at once (alone); b's join started a rebalance a never rejoins.
        assert!(done.is_empty());
        assert_eq!(answer, Answer::Later);
        // a keeps heartbeating (and hears of the rebalance) but never rejoins.
        for t in (1_000..30_000).step_by(1_000) {
            assert_eq!(g.heartbeat(t, &a, 1), REBALANCE_IN_PROGRESS);
            assert!(g.tick(t).is_empty());
        }
        let done = g.tick(30_001);
        let [Completed::Join(who, r)] = done.as_slice() else {
            panic!("{done:?}")
        };
        assert_eq!((who.as_str(), r.leader.as_str()), (b.as_str(), b.as_str()));
        assert!(g.member(&a).is_none());
    }

    #[test]
    fn an_initial_delay_gathers_the_first_members() {
        let mut g = Group::new("g", 3_000);
        let (_, a1, _) = new_member(&mut g, 0, &["range"]);
        let (_, a2, _) = new_member(&mut g, 100, &["range"]);
        assert_eq!((a1, a2), (Answer::Later, Answer::Later));
        assert!(g.tick(2_999).is_empty());
        let done = g.tick(3_000);
        assert_eq!(done.len(), 2, "both answered in generation 1");
        assert_eq!(g.generation, 1);
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

    /// Issue 27 (librdkafka 0102): a static member restarting while the group is Stable gets a
    /// new member id, the current generation and its assignment at once; the others are not
    /// disturbed (before: the join was held for the rebalance and the others told
    /// REBALANCE_IN_PROGRESS). Its old id is fenced. A changed protocol still rebalances.
    #[test]
    fn a_static_member_restarting_in_a_stable_group_keeps_its_place() {
        let mut g = Group::new("g", 0);
        let static_join = |instance: &str, protocols: &[&str]| {
            let mut r = join("", protocols);
            r.instance_id = Some(instance.into());
            r
        };
        let (Answer::Now(_), _) = g.join(0, static_join("host-a", &["range", "roundrobin"])) else {
            panic!()
        };
        let (a_answer, _) = g.join(0, static_join("host-b", &["range", "roundrobin"]));
        assert_eq!(a_answer, Answer::Later, "b's join waits for a to rejoin");
        let a = g.members.values().next().unwrap().id.clone();
        let b = g.members.values().nth(1).unwrap().id.clone();
        let mut rejoin_a = join(&a, &["range", "roundrobin"]);
        rejoin_a.instance_id = Some("host-a".into());
        let (Answer::Now(ra), done) = g.join(1, rejoin_a) else {
            panic!()
        };
        assert_eq!((ra.leader.as_str(), done.len()), (a.as_str(), 1));
        let assignments = vec![
            (a.clone(), Bytes::from("pa")),
            (b.clone(), Bytes::from("pb")),
        ];
        g.sync(2, &b, ra.generation, vec![]);
        g.sync(2, &a, ra.generation, assignments);
        assert_eq!(g.state, State::Stable);
        let generation = g.generation;

        // The leader restarts: a new id, answered at once, the group stays Stable.
        let (Answer::Now(r), done) = g.join(3, static_join("host-a", &["range", "roundrobin"]))
        else {
            panic!("answered at once")
        };
        assert!(done.is_empty(), "nobody else is answered: {done:?}");
        assert_eq!(r.error, NONE);
        assert_ne!(r.member_id, a);
        assert_eq!((r.generation, g.state), (generation, State::Stable));
        assert_eq!(
            r.leader, a,
            "the leader as it was: the new member syncs as a follower"
        );
        assert!(r.members.is_empty());
        assert_eq!(g.leader.as_deref(), Some(r.member_id.as_str()));
        assert_eq!(g.heartbeat(4, &b, generation), NONE, "b is not disturbed");
        let (Answer::Now(s), _) = g.sync(4, &r.member_id, generation, vec![]) else {
            panic!()
        };
        assert_eq!((s.error, &s.assignment[..]), (NONE, &b"pa"[..]));
        assert_eq!(g.heartbeat(5, &a, generation), UNKNOWN_MEMBER_ID);
        assert!(g.is_fenced(&a, Some("host-a")));

        // Restarted again, speaking JoinGroup v9 (KIP-814): told it leads, with the members,
        // and to skip the assignment.
        let mut v9 = static_join("host-a", &["range", "roundrobin"]);
        v9.supports_skip_assignment = true;
        let (Answer::Now(r9), done) = g.join(5, v9) else {
            panic!("answered at once")
        };
        assert!(done.is_empty());
        assert!(r9.skip_assignment);
        assert_eq!(
            (r9.leader.as_str(), r9.generation),
            (r9.member_id.as_str(), generation)
        );
        assert_eq!(r9.members.len(), 2);
        assert_eq!(g.state, State::Stable);
        let (Answer::Now(s), _) = g.sync(5, &r9.member_id, generation, vec![]) else {
            panic!()
        };
        assert_eq!(&s.assignment[..], &b"pa"[..]);

        // A restart whose preferences change the group's protocol rebalances.
        let (answer, _) = g.join(6, static_join("host-a", &["roundrobin", "range"]));
        assert_eq!(answer, Answer::Later);
        assert_eq!(g.state, State::PreparingRebalance);
    }

    #[test]
    fn a_static_member_rejoining_under_a_new_id_replaces_itself() {
        let mut g = Group::new("g", 0);
        let mut r = join("", &["range"]);
        r.instance_id = Some("host-1".into());
        let (Answer::Now(first), _) = g.join(0, r.clone()) else {
            panic!()
        };
        assert_eq!(
            first.error, NONE,
            "static members need no MEMBER_ID_REQUIRED round"
        );
        let (Answer::Now(second), _) = g.join(1, r) else {
            panic!()
        };
        assert_eq!(second.error, NONE);
        assert_ne!(first.member_id, second.member_id);
        assert_eq!(g.members.len(), 1);
        assert!(g.member(&first.member_id).is_none());
        // The old incarnation comes back with its old id: fenced, and nothing changes.
        assert!(g.is_fenced(&first.member_id, Some("host-1")));
        assert!(!g.is_fenced(&second.member_id, Some("host-1")));
        assert!(!g.is_fenced(&first.member_id, None));
        let mut zombie = join(&first.member_id, &["range"]);
        zombie.instance_id = Some("host-1".into());
        let (Answer::Now(z), _) = g.join(2, zombie) else {
            panic!()
        };
        assert_eq!(z.error, FENCED_INSTANCE_ID);
        assert!(g.member(&second.member_id).is_some());
    }
}
