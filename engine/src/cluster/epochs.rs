//! The ownership epoch of every slot as this broker knows it: its partitions' leader epoch,
//! which Metadata names and requests' `current_leader_epoch` is checked against. A slot's
//! epoch is raised when this broker opens it (the epoch its take-over committed) and when a
//! peer's lease lists it open at a higher one; it never goes back (a client ignores a leader
//! whose epoch went back, as librdkafka does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct SlotEpochs {
    epochs: Box<[AtomicU64]>,
}

impl SlotEpochs {
    pub fn new(slots: usize) -> SlotEpochs {
        SlotEpochs {
            epochs: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The slot's epoch is at least `epoch` (a slot out of range is ignored: a lease of a
    /// bucket with more slots cannot name one this broker serves).
    pub fn raise(&self, slot: u32, epoch: u64) {
        if let Some(e) = self.epochs.get(slot as usize) {
            e.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    pub fn get(&self, slot: u32) -> u64 {
        self.epochs
            .get(slot as usize)
            .map_or(0, |e| e.load(Ordering::Relaxed))
    }

    /// The slot's epoch as a Kafka leader epoch.
    pub fn leader_epoch(&self, slot: u32) -> i32 {
        leader_epoch(self.get(slot))
    }

    /// Raises every slot a lease lists.
    pub fn raise_all(&self, listed: &BTreeMap<u32, u64>) {
        for (&slot, &epoch) in listed {
            self.raise(slot, epoch);
        }
    }
}

/// An ownership epoch as a Kafka leader epoch (i32; an epoch beyond it stays at the largest).
pub fn leader_epoch(epoch: u64) -> i32 {
    i32::try_from(epoch).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_rise() {
        let e = SlotEpochs::new(3);
        e.raise(1, 5);
        e.raise(1, 3);
        e.raise(7, 9);
        e.raise_all(&BTreeMap::from([(0, 2), (1, 4)]));
        assert_eq!((e.get(0), e.get(1), e.get(2), e.get(7)), (2, 5, 0, 0));
        assert_eq!(e.leader_epoch(1), 5);
        assert_eq!(leader_epoch(u64::MAX), i32::MAX);
    }
}
