//! Waiting for a condition another task of the same shard changes, without polling.
//!
//! A [`WaitList`] is the meeting point: a task waits with [`WaitList::wait_until`], re-checking
//! its condition each time the list is notified; whoever changes the state the condition reads
//! calls [`WaitList::notify_all`] after the change. Shard-local (`!Send`), like the state it
//! guards.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

/// Tasks of one shard waiting for a change; see the module docs.
#[derive(Default)]
pub struct WaitList {
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl WaitList {
    pub fn new() -> WaitList {
        WaitList::default()
    }

    /// Wakes every task waiting now (a task that starts waiting later waits for the next call).
    pub fn notify_all(&self) {
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Resolves at the next [`WaitList::notify_all`] (or when the list is dropped).
    pub fn wait(&self) -> impl Future<Output = ()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.borrow_mut();
        // Waits given up (a deadline passed, the task was dropped) leave nothing behind.
        waiters.retain(|w| !w.is_canceled());
        waiters.push(tx);
        async move {
            let _ = rx.await;
        }
    }

    /// Resolves once `ready()` holds: checked now, then after every notification.
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        while !ready() {
            self.wait().await;
        }
    }

    /// As [`WaitList::wait_until`], giving up at `deadline`; true if `ready()` held.
    pub async fn wait_until_deadline(&self, deadline: Instant, ready: impl Fn() -> bool) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        crate::timeout(left, self.wait_until(&ready))
            .await
            .is_some()
            || ready()
    }

    /// Number of tasks waiting (tests, metrics).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// Calls `tick` every `period` for as long as `owner` lives (the task holds only a weak
/// reference: dropping the last strong one ends it at its next tick). `tick` runs first at once.
pub fn every<T: 'static>(
    owner: &std::rc::Rc<T>,
    period: Duration,
    tick: impl Fn(&std::rc::Rc<T>) + 'static,
) {
    let weak = std::rc::Rc::downgrade(owner);
    crate::spawn_detached(async move {
        while let Some(owner) = weak.upgrade() {
            tick(&owner);
            drop(owner);
            crate::sleep(period).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn waiters_wake_when_the_condition_holds_after_a_notification() {
        let woke = crate::block_on(1 << 20, || async {
            let list = Rc::new(WaitList::new());
            let count = Rc::new(Cell::new(0));
            let (l, c) = (list.clone(), count.clone());
            let waiter = crate::spawn(async move {
                l.wait_until(|| c.get() >= 2).await;
                c.get()
            });
            crate::sleep(Duration::from_millis(5)).await;
            assert_eq!(list.waiting(), 1);
            count.set(1);
            list.notify_all(); // not yet: the waiter checks and waits again
            crate::sleep(Duration::from_millis(5)).await;
            assert_eq!(list.waiting(), 1);
            count.set(2);
            list.notify_all();
            waiter.await
        })
        .unwrap();
        assert_eq!(woke, 2);
    }

    #[test]
    fn a_deadline_ends_the_wait_and_says_whether_the_condition_held() {
        let (late, met) = crate::block_on(1 << 20, || async {
            let list = WaitList::new();
            let deadline = Instant::now() + Duration::from_millis(20);
            let late = list.wait_until_deadline(deadline, || false).await;
            let met = list.wait_until_deadline(Instant::now(), || true).await;
            (late, met)
        })
        .unwrap();
        assert_eq!((late, met), (false, true));
    }

    #[test]
    fn every_stops_once_its_owner_is_dropped() {
        let ticks = crate::block_on(1 << 20, || async {
            let owner = Rc::new(Cell::new(0u32));
            every(&owner, Duration::from_millis(2), |o| o.set(o.get() + 1));
            crate::sleep(Duration::from_millis(20)).await;
            let seen = owner.get();
            let weak = Rc::downgrade(&owner);
            drop(owner);
            crate::sleep(Duration::from_millis(10)).await;
            (seen, weak.upgrade().is_none())
        })
        .unwrap();
        assert!(ticks.0 >= 2, "ticked {} times", ticks.0);
        assert!(ticks.1, "the task let its owner go");
    }
}
