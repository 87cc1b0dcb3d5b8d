//! JoinGroup and the join phase of a rebalance (see `state.rs` for the states): a new member
//! first gets its id (MEMBER_ID_REQUIRED, JoinGroup v4+), a known member rejoining unchanged
//! in a settled generation gets that generation back, anyone else starts (or joins) the join
//! phase, which completes once every member has rejoined — or at the rebalance deadline,
//! without the stragglers — with the protocol every member speaks that most prefer.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::errors::{
    FENCED_INSTANCE_ID, INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT, MEMBER_ID_REQUIRED,
    NONE, UNKNOWN_MEMBER_ID,
};
use crate::group::state::{
    Answer, Completed, Group, JoinRequest, JoinResult, Member, State, SESSION_TIMEOUT_MS,
};

impl Group {
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
        if let Some(instance) = &req.instance_id {
            self.evict_previous_incarnation(instance, &member_id);
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

    /// What the leader's join answer lists: (member id, instance id, metadata for `protocol`).
    pub(super) fn member_metadata(&self, protocol: &str) -> Vec<(String, Option<String>, Bytes)> {
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

    pub(super) fn prepare_rebalance(&mut self, now: u64) {
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

    /// Completes the join phase when every member has rejoined (or the deadline passed).
    pub(super) fn try_complete_join(&mut self, now: u64) -> Vec<Completed> {
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
    pub(super) fn choose_protocol(&self) -> String {
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
    use crate::errors::REBALANCE_IN_PROGRESS;
    use crate::group::state::tests::{join, new_member};

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
}
