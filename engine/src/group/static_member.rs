//! Static membership (KIP-345): a member with a `group.instance.id` keeps its place across
//! restarts. Restarting, it comes back with a new member id; its previous incarnation leaves in
//! its favour, and in a Stable group it takes that incarnation's place without a rebalance. The
//! old member id is fenced (FENCED_INSTANCE_ID) from then on.

use crate::errors::NONE;
use crate::group::state::{Group, JoinRequest, JoinResult, State};

impl Group {
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

    /// KIP-345: a static member restarting (its instance id known, a new member id) while the
    /// group is Stable takes its previous incarnation's place — assignment, join order and
    /// leadership — without a rebalance, unless its protocols would change the group's
    /// protocol. As Kafka's `updateStaticMemberAndRebalance`: a restarted leader that speaks
    /// JoinGroup v9 is told it leads, with the members, and to skip the assignment (KIP-814; it
    /// keeps watching metadata as a leader must); an older one is told the leader as it was
    /// (its old id), so that it syncs as a follower and gets the assignment it holds instead of
    /// computing one a Stable group would never hand out. The old member id is fenced from now
    /// on. None: the join takes the ordinary path.
    pub(super) fn replace_static_member(
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

    /// The members that held `instance` under another id than `member_id` leave (a static
    /// member restarted; it joins in their place). A leader among them no longer leads.
    pub(super) fn evict_previous_incarnation(&mut self, instance: &str, member_id: &str) {
        let old: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.instance_id.as_deref() == Some(instance) && m.id != member_id)
            .map(|(o, _)| *o)
            .collect();
        for o in old {
            let m = self.members.remove(&o).expect("listed");
            if self.leader.as_deref() == Some(m.id.as_str()) {
                self.leader = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::errors::{FENCED_INSTANCE_ID, UNKNOWN_MEMBER_ID};
    use crate::group::state::tests::join;
    use crate::group::state::Answer;

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
