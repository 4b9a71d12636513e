//! The keep-alive actor: owns the group's one timer and tells the session when the
//! deadline it asked for has passed. It decides nothing itself.

use actix::prelude::*;

use super::group::{actor_started, actor_stopped, now, ArmTimer, TimerFired};
use super::link::{stop_with_link, Link};
use super::session::SessionActor;

/// Runs the timer of one connection.
#[derive(Debug)]
pub(crate) struct KeepAliveActor {
    link: Link,
    session: Addr<SessionActor>,
    timer: Option<SpawnHandle>,
}

impl KeepAliveActor {
    pub fn new(link: Link, session: Addr<SessionActor>) -> Self {
        Self {
            link,
            session,
            timer: None,
        }
    }
}

impl Actor for KeepAliveActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        actor_started();
        stop_with_link(&self.link, self, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        actor_stopped();
        self.link
            .take_down(crate::DisconnectCause::Failed(crate::ClientError::Stopped));
    }
}

impl Handler<ArmTimer> for KeepAliveActor {
    type Result = ();

    fn handle(&mut self, ArmTimer(deadline): ArmTimer, ctx: &mut Self::Context) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(deadline) = deadline else {
            return;
        };
        let delay = deadline.saturating_duration_since(now());
        self.timer = Some(ctx.run_later(delay, |actor, _| {
            actor.timer = None;
            actor.session.do_send(TimerFired);
        }));
    }
}
