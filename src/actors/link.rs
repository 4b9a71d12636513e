//! The link that gives the three actors of a connection one fate.
//!
//! Every member holds a clone of the [`Link`]. The first [`Link::take_down`] marks the
//! link down, wakes every member's [`Link::down`] future (each member stops its own
//! context when it resolves), and sends the supervisor exactly one [`GroupDown`]. Later
//! calls do nothing. All members and the supervisor run on one thread, so the check and
//! the change of state happen in one step with nothing in between.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix::prelude::*;
use actix::WeakRecipient;

use crate::error::DisconnectCause;

/// Sent to the supervisor once per group, when the group goes down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct GroupDown {
    /// Which connection attempt of the supervisor this group was.
    pub generation: u64,
    /// Why the group went down.
    pub cause: DisconnectCause,
}

#[derive(Debug)]
enum LinkState {
    /// Every member runs; the wakers belong to members waiting in [`Link::down`].
    Up { wakers: Vec<Waker> },
    /// The group is down, or going down in this step.
    Down,
}

#[derive(Debug)]
struct Shared {
    state: RefCell<LinkState>,
    generation: u64,
    supervisor: WeakRecipient<GroupDown>,
}

/// A shared handle that takes the whole group down at once; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Link(Rc<Shared>);

impl Link {
    /// Creates the link of one group; `supervisor` learns of its end.
    pub fn new(generation: u64, supervisor: WeakRecipient<GroupDown>) -> Self {
        Self(Rc::new(Shared {
            state: RefCell::new(LinkState::Up { wakers: Vec::new() }),
            generation,
            supervisor,
        }))
    }

    /// Returns `true` once the group is down; members ignore input from then on.
    pub fn is_down(&self) -> bool {
        matches!(*self.0.state.borrow(), LinkState::Down)
    }

    /// Takes the group down with `cause` and returns `true`, unless it is down already,
    /// in which case nothing happens and it returns `false`.
    pub fn take_down(&self, cause: DisconnectCause) -> bool {
        let wakers = match std::mem::replace(&mut *self.0.state.borrow_mut(), LinkState::Down) {
            LinkState::Up { wakers } => wakers,
            LinkState::Down => return false,
        };
        for waker in wakers {
            waker.wake();
        }
        if let Some(supervisor) = self.0.supervisor.upgrade() {
            supervisor.do_send(GroupDown {
                generation: self.0.generation,
                cause,
            });
        }
        true
    }

    /// Returns a future that resolves once the group is down.
    pub fn down(&self) -> LinkDown {
        LinkDown(self.clone())
    }
}

/// Resolves once its [`Link`] is down.
#[derive(Debug)]
pub(crate) struct LinkDown(Link);

impl Future for LinkDown {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self.0 .0.state.borrow_mut() {
            LinkState::Down => Poll::Ready(()),
            LinkState::Up { wakers } => {
                if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Stops `actor`'s context as soon as `link` goes down; call from `started`.
pub(crate) fn stop_with_link<A>(link: &Link, actor: &A, ctx: &mut A::Context)
where
    A: Actor,
    A::Context: AsyncContext<A>,
{
    ctx.spawn(
        link.down()
            .into_actor(actor)
            .map(|(), _, ctx: &mut A::Context| ctx.stop()),
    );
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collector(Vec<u64>);

    impl Actor for Collector {
        type Context = actix::Context<Self>;
    }

    impl Handler<GroupDown> for Collector {
        type Result = ();
        fn handle(&mut self, down: GroupDown, _: &mut Self::Context) {
            self.0.push(down.generation);
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<u64>")]
    struct Collected;

    impl Handler<Collected> for Collector {
        type Result = Vec<u64>;
        fn handle(&mut self, _: Collected, _: &mut Self::Context) -> Vec<u64> {
            self.0.clone()
        }
    }

    #[actix_rt::test]
    async fn take_down_reports_once_and_wakes_waiters() {
        let collector = Collector::default().start();
        let link = Link::new(7, collector.downgrade().recipient());
        let waiter = actix_rt::spawn(link.down());

        assert!(!link.is_down());
        assert!(link.take_down(DisconnectCause::Requested));
        assert!(!link.clone().take_down(DisconnectCause::Requested));
        assert!(link.is_down());

        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken")
            .unwrap();
        let reports = collector.send(Collected).await.unwrap();
        assert_eq!(reports, [7]);
    }
}
