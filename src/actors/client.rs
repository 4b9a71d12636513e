//! The client supervisor: lives as long as the application wants the client. It owns the
//! durable session state, the subscription routes, the pending requests and the event
//! listeners, and starts one linked group of actors per connection attempt.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::{ClientId, TopicFilter};
use crate::error::{ClientError, DisconnectCause};
use crate::session::{
    Outcome, PublishOutcome, RequestError, Session, SubscribeOutcome, UnsubscribeOutcome,
};
use crate::store::{
    MemoryStore, OutgoingPublish, QueuedRequest, Request, RequestToken, SharedStore, Store,
};

use super::group::{
    actor_started, actor_stopped, now, Counters, RequestsQueued, SessionUpdate, StartDisconnect,
    Written,
};
use super::keep_alive::KeepAliveActor;
use super::link::{GroupDown, Link};
use super::messages::{
    Disconnect, Event, GetStats, Publish, SetDefaultRecipient, Stats, Submit, Subscribe,
    SubscribeEvents, Unsubscribe,
};
use super::router::{RouteId, Router};
use super::session::{SessionActor, SessionParts};
use super::socket::{SocketActor, SocketSettings};
use super::ClientConfig;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// The largest subscription identifier MQTT 5.0 allows (section 3.8.2.1.2).
const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

/// A caller waiting for its request, with the room it holds in the request queue.
#[derive(Debug)]
enum Pending {
    Publish {
        reply: Reply<PublishOutcome>,
        _permit: OwnedSemaphorePermit,
    },
    Subscribe {
        reply: Reply<SubscribeOutcome>,
        routes: Vec<RouteId>,
        _permit: OwnedSemaphorePermit,
    },
    Unsubscribe {
        reply: Reply<UnsubscribeOutcome>,
        filters: Vec<TopicFilter>,
        _permit: OwnedSemaphorePermit,
    },
}

/// The running connection group, if any.
#[derive(Debug)]
enum Group {
    /// A group is connecting or connected.
    Up {
        generation: u64,
        link: Link,
        session: Addr<SessionActor>,
    },
    /// No group runs; the client is stopping.
    Down,
}

/// The supervisor actor of one client; see the module docs. Applications reach it through
/// [`Client`](crate::Client) or its address, [`Client::addr`](crate::Client::addr).
#[derive(Debug)]
pub struct ClientActor {
    config: ClientConfig,
    store: SharedStore,
    router: Rc<RefCell<Router>>,
    counters: Rc<Counters>,
    permits: Arc<Semaphore>,
    pending: HashMap<RequestToken, Pending>,
    next_token: u64,
    listeners: Vec<Recipient<Event>>,
    disconnect_waiters: Vec<Reply<()>>,
    group: Group,
    generation: u64,
    /// The next subscription identifier to add to a v5 subscribe that has none.
    next_subscription_identifier: NonZeroU32,
}

impl ClientActor {
    pub(crate) fn new(config: ClientConfig) -> Self {
        let capacity = config.max_pending_requests;
        Self {
            config,
            store: SharedStore::new(MemoryStore::new(capacity)),
            router: Rc::default(),
            counters: Rc::default(),
            permits: Arc::new(Semaphore::new(capacity)),
            pending: HashMap::new(),
            next_token: 0,
            listeners: Vec::new(),
            disconnect_waiters: Vec::new(),
            group: Group::Down,
            generation: 0,
            next_subscription_identifier: NonZeroU32::MIN,
        }
    }

    /// Returns the semaphore whose permits are the free places in the request queue.
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    fn client_id(&self) -> &ClientId {
        &self.config.session.client_id
    }

    /// Starts the three linked actors of one connection attempt, seeded from the store.
    fn start_group(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let link = Link::new(generation, ctx.address().downgrade().recipient());
        let session = Session::new(self.config.session.clone(), self.store.clone(), now());

        let session_context = Context::<SessionActor>::new();
        let session_addr = session_context.address();
        let keep_alive = KeepAliveActor::new(link.clone(), session_addr.clone()).start();
        let socket = SocketActor::new(
            self.socket_settings(),
            link.clone(),
            session_addr.clone(),
            ctx.address().downgrade(),
            Rc::clone(&self.counters),
        )
        .start();
        session_context.run(SessionActor::new(SessionParts {
            session,
            link: link.clone(),
            client: ctx.address().downgrade(),
            socket,
            keep_alive,
            router: Rc::clone(&self.router),
            counters: Rc::clone(&self.counters),
        }));

        tracing::debug!(client_id = %self.client_id(), generation, "connection group started");
        self.group = Group::Up {
            generation,
            link,
            session: session_addr,
        };
    }

    fn socket_settings(&self) -> SocketSettings {
        SocketSettings {
            endpoint: self.config.endpoint.clone(),
            protocol: self.config.session.protocol,
            client_id: self.client_id().clone(),
            max_packet_size: self.config.max_packet_size_in,
        }
    }

    /// Takes room in the request queue: the permit the caller brought, else a free one.
    fn take_permit(
        &self,
        brought: Option<OwnedSemaphorePermit>,
    ) -> Result<OwnedSemaphorePermit, ClientError> {
        if matches!(self.group, Group::Down) {
            return Err(ClientError::Stopped);
        }
        match brought {
            Some(permit) => Ok(permit),
            None => Arc::clone(&self.permits)
                .try_acquire_owned()
                .map_err(|_| ClientError::QueueFull),
        }
    }

    /// Queues a request for the session and returns its token.
    fn enqueue(&mut self, request: Request) -> Result<RequestToken, ClientError> {
        let token = RequestToken(self.next_token);
        self.next_token += 1;
        self.store
            .push_request(QueuedRequest { token, request })
            .map_err(|_| ClientError::QueueFull)?;
        if let Group::Up { session, .. } = &self.group {
            // One wake-up per request, so the number in the mailbox is bounded by
            // `max_pending_requests`; a dropped wake-up could leave a request unsent.
            session.do_send(RequestsQueued);
        }
        Ok(token)
    }

    fn submit_publish(&mut self, mut publish: Publish, reply: Reply<PublishOutcome>) {
        let permit = match self.take_permit(publish.permit.take()) {
            Ok(permit) => permit,
            Err(error) => return drop(reply.send(Err(error))),
        };
        let request = Request::Publish(OutgoingPublish {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
        });
        match self.enqueue(request) {
            Ok(token) => {
                self.pending.insert(
                    token,
                    Pending::Publish {
                        reply,
                        _permit: permit,
                    },
                );
            }
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    fn on_completed(&mut self, token: RequestToken, outcome: Result<Outcome, RequestError>) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let outcome = outcome.map_err(ClientError::from);
        match (pending, outcome) {
            (Pending::Publish { reply, .. }, Ok(Outcome::Publish(outcome))) => {
                let _ = reply.send(Ok(outcome));
            }
            (Pending::Subscribe { reply, routes, .. }, Ok(Outcome::Subscribe(outcome))) => {
                let refused: Vec<RouteId> = routes
                    .iter()
                    .zip(&outcome.reasons)
                    .filter(|(_, reason)| !reason.is_success())
                    .map(|(route, _)| *route)
                    .collect();
                self.router.borrow_mut().remove_ids(&refused);
                let _ = reply.send(Ok(outcome));
            }
            (Pending::Unsubscribe { reply, filters, .. }, Ok(Outcome::Unsubscribe(outcome))) => {
                let mut router = self.router.borrow_mut();
                for (index, filter) in filters.iter().enumerate() {
                    let removed = outcome
                        .reasons
                        .get(index)
                        .map_or(true, |reason| reason.is_success());
                    if removed {
                        router.remove_filter(filter);
                    }
                }
                let _ = reply.send(Ok(outcome));
            }
            (pending, Err(error)) => self.fail_pending(pending, error),
            (pending, Ok(_)) => {
                tracing::warn!(client_id = %self.client_id(), "outcome of another request kind ignored");
                self.fail_pending(pending, ClientError::Stopped);
            }
        }
    }

    fn fail_pending(&self, pending: Pending, error: ClientError) {
        match pending {
            Pending::Publish { reply, .. } => drop(reply.send(Err(error))),
            Pending::Subscribe { reply, routes, .. } => {
                self.router.borrow_mut().remove_ids(&routes);
                drop(reply.send(Err(error)));
            }
            Pending::Unsubscribe { reply, .. } => drop(reply.send(Err(error))),
        }
    }

    fn emit(&self, event: &Event) {
        for listener in &self.listeners {
            listener.do_send(event.clone());
        }
    }
}

impl Actor for ClientActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        actor_started();
        ctx.set_mailbox_capacity(self.config.max_pending_requests.clamp(16, 4096));
        tracing::info!(
            client_id = %self.client_id(),
            host = %self.config.endpoint.host,
            port = self.config.endpoint.port,
            protocol = ?self.config.session.protocol,
            "client started"
        );
        self.start_group(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Closing the permits wakes callers waiting for room; dropping the pending
        // replies answers their callers. Both see `Stopped`.
        self.permits.close();
        // Stopped with a group still up means every handle was dropped. The group's own
        // report cannot arrive any more, so the listeners hear of the end from here.
        if let Group::Up { link, .. } = std::mem::replace(&mut self.group, Group::Down) {
            link.take_down(DisconnectCause::Requested);
            self.emit(&Event::Disconnected {
                reason: DisconnectCause::Requested,
            });
        }
        tracing::info!(client_id = %self.client_id(), "client stopped");
        actor_stopped();
    }
}

impl Handler<Publish> for ClientActor {
    type Result = ResponseFuture<Result<PublishOutcome, ClientError>>;

    fn handle(&mut self, publish: Publish, _: &mut Self::Context) -> Self::Result {
        let (reply, response) = oneshot::channel();
        self.submit_publish(publish, reply);
        Box::pin(async move { response.await.unwrap_or(Err(ClientError::Stopped)) })
    }
}

impl Handler<Submit> for ClientActor {
    type Result = ();

    fn handle(&mut self, submit: Submit, _: &mut Self::Context) {
        match submit {
            Submit::Publish(publish, reply) => self.submit_publish(publish, reply),
        }
    }
}

impl Handler<Subscribe> for ClientActor {
    type Result = ResponseFuture<Result<SubscribeOutcome, ClientError>>;

    fn handle(&mut self, mut subscribe: Subscribe, _: &mut Self::Context) -> Self::Result {
        let result = self.submit_subscribe(&mut subscribe);
        Box::pin(async move {
            match result {
                Ok(response) => response.await.unwrap_or(Err(ClientError::Stopped)),
                Err(error) => Err(error),
            }
        })
    }
}

impl ClientActor {
    fn submit_subscribe(
        &mut self,
        subscribe: &mut Subscribe,
    ) -> Result<oneshot::Receiver<Result<SubscribeOutcome, ClientError>>, ClientError> {
        if subscribe.filters.is_empty() {
            return Err(ClientError::InvalidRequest(
                "subscribe needs at least one filter".to_owned(),
            ));
        }
        let permit = self.take_permit(subscribe.permit.take())?;
        let automatic_identifier = self.add_automatic_identifier(subscribe);
        let identifier = subscribe.subscription_identifier();
        let routes = {
            let mut router = self.router.borrow_mut();
            subscribe
                .filters
                .iter()
                .map(|(filter, _)| {
                    router.add(filter.clone(), subscribe.recipient.clone(), identifier)
                })
                .collect::<Vec<_>>()
        };
        let request = Request::Subscribe {
            filters: std::mem::take(&mut subscribe.filters),
            properties: std::mem::take(&mut subscribe.properties),
            automatic_identifier,
        };
        match self.enqueue(request) {
            Ok(token) => {
                let (reply, response) = oneshot::channel();
                let pending = Pending::Subscribe {
                    reply,
                    routes,
                    _permit: permit,
                };
                self.pending.insert(token, pending);
                Ok(response)
            }
            Err(error) => {
                self.router.borrow_mut().remove_ids(&routes);
                Err(error)
            }
        }
    }

    /// Gives a v5 subscribe without a subscription identifier one of its own. A broker may
    /// send one copy of a message per matching subscription (MQTT 5.0 section 3.3.4), and
    /// only the identifier tells the copies apart, so each reaches only its own route.
    fn add_automatic_identifier(&mut self, subscribe: &mut Subscribe) -> Option<NonZeroU32> {
        if !self.config.session.protocol.is_v5()
            || !subscribe.properties.subscription_identifiers.is_empty()
        {
            return None;
        }
        // NOTE: automatic identifiers count up from 1, so an application that sets
        // identifiers on some subscriptions should set them on all, or they may collide.
        let identifier = self.next_subscription_identifier;
        self.next_subscription_identifier =
            NonZeroU32::new(identifier.get() % MAX_SUBSCRIPTION_IDENTIFIER + 1)
                .unwrap_or(NonZeroU32::MIN);
        subscribe
            .properties
            .subscription_identifiers
            .push(identifier);
        Some(identifier)
    }

    fn submit_unsubscribe(
        &mut self,
        unsubscribe: &mut Unsubscribe,
    ) -> Result<oneshot::Receiver<Result<UnsubscribeOutcome, ClientError>>, ClientError> {
        if unsubscribe.filters.is_empty() {
            return Err(ClientError::InvalidRequest(
                "unsubscribe needs at least one filter".to_owned(),
            ));
        }
        let permit = self.take_permit(unsubscribe.permit.take())?;
        let filters = unsubscribe.filters.clone();
        let request = Request::Unsubscribe {
            filters: std::mem::take(&mut unsubscribe.filters),
            properties: std::mem::take(&mut unsubscribe.properties),
        };
        let token = self.enqueue(request)?;
        let (reply, response) = oneshot::channel();
        let pending = Pending::Unsubscribe {
            reply,
            filters,
            _permit: permit,
        };
        self.pending.insert(token, pending);
        Ok(response)
    }
}

impl Handler<Unsubscribe> for ClientActor {
    type Result = ResponseFuture<Result<UnsubscribeOutcome, ClientError>>;

    fn handle(&mut self, mut unsubscribe: Unsubscribe, _: &mut Self::Context) -> Self::Result {
        let result = self.submit_unsubscribe(&mut unsubscribe);
        Box::pin(async move {
            match result {
                Ok(response) => response.await.unwrap_or(Err(ClientError::Stopped)),
                Err(error) => Err(error),
            }
        })
    }
}

impl Handler<Disconnect> for ClientActor {
    type Result = ResponseFuture<Result<(), ClientError>>;

    fn handle(&mut self, disconnect: Disconnect, _: &mut Self::Context) -> Self::Result {
        let Group::Up { session, .. } = &self.group else {
            return Box::pin(async { Ok(()) });
        };
        tracing::info!(client_id = %self.client_id(), "disconnect requested");
        let packet = disconnect.packet(self.config.session.protocol);
        session.do_send(StartDisconnect(packet));
        let (reply, response) = oneshot::channel();
        self.disconnect_waiters.push(reply);
        // A dropped reply means the client stopped, which is what was asked for.
        Box::pin(async move { response.await.unwrap_or(Ok(())) })
    }
}

impl Handler<GetStats> for ClientActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(Stats {
            live_actors: super::live_actor_count(),
            inflight_out: self.store.outbound_len(),
            inflight_in: self.counters.inflight_in.get(),
            queued_requests: self.store.queued_len(),
            bytes_in: self.counters.bytes_in.get(),
            bytes_out: self.counters.bytes_out.get(),
            packets_in: self.counters.packets_in.get(),
            packets_out: self.counters.packets_out.get(),
            unmatched_messages: self.router.borrow().unmatched(),
            dropped_messages: self.counters.dropped_messages.get(),
        })
    }
}

impl Handler<SetDefaultRecipient> for ClientActor {
    type Result = ();

    fn handle(
        &mut self,
        SetDefaultRecipient(recipient): SetDefaultRecipient,
        _: &mut Self::Context,
    ) {
        self.router.borrow_mut().set_default(recipient);
    }
}

impl Handler<SubscribeEvents> for ClientActor {
    type Result = ();

    fn handle(&mut self, SubscribeEvents(recipient): SubscribeEvents, _: &mut Self::Context) {
        self.listeners.push(recipient);
    }
}

impl Handler<SessionUpdate> for ClientActor {
    type Result = ();

    fn handle(&mut self, update: SessionUpdate, _: &mut Self::Context) {
        match update {
            SessionUpdate::Connected {
                session_present,
                properties,
            } => self.emit(&Event::Connected {
                session_present,
                properties,
            }),
            SessionUpdate::Completed { token, outcome } => self.on_completed(token, outcome),
        }
    }
}

impl Handler<Written> for ClientActor {
    type Result = ();

    fn handle(&mut self, Written(tokens): Written, _: &mut Self::Context) {
        for token in tokens {
            if let Some(pending) = self.pending.remove(&token) {
                match pending {
                    Pending::Publish { reply, .. } => {
                        drop(reply.send(Ok(PublishOutcome::default())));
                    }
                    other => self.fail_pending(other, ClientError::Stopped),
                }
            }
        }
    }
}

impl Handler<GroupDown> for ClientActor {
    type Result = ();

    /// Answers every waiting caller, reports the end and stops. This is where automatic
    /// reconnect will start the next group instead, keeping the store for resending.
    fn handle(&mut self, down: GroupDown, ctx: &mut Self::Context) {
        let Group::Up { generation, .. } = &self.group else {
            return;
        };
        if *generation != down.generation {
            return;
        }
        self.group = Group::Down;
        match &down.cause {
            DisconnectCause::Requested => {
                tracing::info!(client_id = %self.client_id(), "disconnected");
            }
            DisconnectCause::Failed(error) => {
                tracing::info!(client_id = %self.client_id(), %error, "connection lost");
            }
        }

        let error = match &down.cause {
            DisconnectCause::Requested => ClientError::Stopped,
            DisconnectCause::Failed(error) => error.clone(),
        };
        self.store.take_all_requests();
        for (_, pending) in std::mem::take(&mut self.pending) {
            self.fail_pending(pending, error.clone());
        }
        for waiter in self.disconnect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        self.emit(&Event::Disconnected { reason: down.cause });
        ctx.stop();
    }
}
