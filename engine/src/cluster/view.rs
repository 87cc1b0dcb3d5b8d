//! What the shards route by ([`View`]): the live brokers ([`Member`]), the target owner of
//! every slot, the controller, and the followers placement gives a slot's owner.

use crate::cluster::placement;

/// Followers per slot (a topic of replication factor r uses the first r − 1).
pub const FOLLOWERS_MAX: usize = 2;

/// A broker of the cluster as Metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    /// Its replication listener, one address per shard (empty: it holds no replica).
    pub replication: Vec<String>,
    /// Its rack (`--rack`), if it has one.
    pub rack: Option<String>,
}

/// What the shards route by: the target owner of every slot and the live brokers.
#[derive(Debug, Clone)]
pub struct View {
    pub me: i32,
    /// Target owner node of each slot (`-1`: no live broker).
    pub owners: Vec<i32>,
    /// Live brokers, this one included, by node id.
    pub members: Vec<Member>,
    pub controller: i32,
}

impl View {
    /// A single broker owning every slot (no object store, or before the first membership round).
    pub fn alone(me: Member, slots: u32) -> View {
        View {
            me: me.node_id,
            owners: vec![me.node_id; slots as usize],
            controller: me.node_id,
            members: vec![me],
        }
    }

    pub fn owner(&self, slot: u32) -> i32 {
        self.owners.get(slot as usize).copied().unwrap_or(-1)
    }

    pub fn member(&self, node: i32) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node)
    }

    pub fn is_controller(&self) -> bool {
        self.controller == self.me
    }

    /// The followers of `slot` owned by `owner` (the replicated WAL): placement's choice among
    /// the live members that publish a replication listener, at most [`FOLLOWERS_MAX`].
    pub fn followers(&self, slot: u32, owner: i32) -> Vec<i32> {
        let members: Vec<(i32, Option<&str>)> = self
            .members
            .iter()
            .filter(|m| !m.replication.is_empty())
            .map(|m| (m.node_id, m.rack.as_deref()))
            .collect();
        placement::followers(slot, owner, &members, FOLLOWERS_MAX)
    }

    /// Where `node` takes the replication stream of `slot`: its listener for the slot's shard.
    pub fn replication_addr(&self, node: i32, slot: u32) -> Option<&str> {
        let listeners = &self.member(node)?.replication;
        (!listeners.is_empty()).then(|| listeners[slot as usize % listeners.len()].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: i32, rack: Option<&str>) -> Member {
        Member {
            node_id: node,
            host: "h".into(),
            port: 9000 + node,
            replication: vec![format!("h:{}", 9100 + node)],
            rack: rack.map(String::from),
        }
    }

    /// `--rack`: a slot's first follower is on another rack than its owner, whatever the
    /// slot's rendezvous order says.
    #[test]
    fn followers_go_to_other_racks_first() {
        let mut view = View::alone(member(1, Some("a")), 8);
        view.members.push(member(2, Some("a")));
        view.members.push(member(3, Some("b")));
        for slot in 0..8 {
            assert_eq!(view.followers(slot, 1), vec![3, 2], "slot {slot}");
        }
        // Brokers without a replication listener hold no replica.
        view.members[2].replication.clear();
        assert_eq!(view.followers(0, 1), vec![2]);
        assert_eq!(view.replication_addr(2, 5), Some("h:9102"));
        assert_eq!(view.replication_addr(3, 5), None);
    }
}
