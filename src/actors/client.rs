//! The client supervisor: lives as long as the application wants the client. It owns the
//! durable session state, the subscription routes, the pending requests and the event
//! listeners, and starts one linked group of actors per connection attempt. With
//! automatic reconnect it decides, when a group goes down, whether and when to start the
//! next one. The pending requests and the store outlive the groups.

mod granted;
mod queue;
mod retry;
mod session_state;

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::{ClientId, TopicFilter, TopicName};
use crate::error::{ClientError, DisconnectCause};
use crate::id_hash::IdMap;
use crate::reconnect::{Decision, ReconnectPolicy, ReconnectSettings};
use crate::session::{
    Outcome, PublishOutcome, RequestError, Session, SubscribeOutcome, UnsubscribeOutcome,
};
use crate::store::{
    MemoryStore, OutgoingPublish, QueuedRequest, Request, RequestToken, SharedStore, Store,
};
use crate::transport::Endpoint;

use super::group::{
    actor_started, actor_stopped, now, Counters, RequestsQueued, RoomRequests, SessionUpdate,
    StartDisconnect, Wire,
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

use granted::Granted;
pub(crate) use queue::QueueConfig;
use session_state::LocalSession;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// The largest subscription identifier MQTT 5.0 allows (section 3.8.2.1.2).
const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

/// How often a client waiting to reconnect checks whether every handle was dropped, so
/// that it stops without waiting out a long backoff delay.
const HANDLE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A caller waiting for its request, with the room it holds in the request queue.
#[derive(Debug)]
enum Pending {
    Publish {
        reply: Reply<PublishOutcome>,
        /// The topic, for the event that reports a publish dropped from the queue.
        topic: TopicName,
        _permit: OwnedSemaphorePermit,
    },
    Subscribe {
        reply: Reply<SubscribeOutcome>,
        routes: Vec<RouteId>,
        /// A copy of the request, queued again when the connection ends before SUBACK.
        request: Request,
        _permit: OwnedSemaphorePermit,
    },
    Unsubscribe {
        reply: Reply<UnsubscribeOutcome>,
        filters: Vec<TopicFilter>,
        /// A copy of the request, queued again when the connection ends before UNSUBACK.
        request: Request,
        _permit: OwnedSemaphorePermit,
    },
    /// A SUBSCRIBE the client sent on its own after a reconnect found no session.
    Resubscribe,
}

/// The callers waiting for their requests, by token. The supervisor owns the map and
/// shares it with the group on its thread, so that the group completes a publish that
/// went out without a message to the supervisor.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingRequests(Rc<RefCell<IdMap<RequestToken, Pending>>>);

impl PendingRequests {
    /// Runs `f` on the map. Keep `f` short: it must not reach this map again.
    fn with<R>(&self, f: impl FnOnce(&mut IdMap<RequestToken, Pending>) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    fn insert(&self, token: RequestToken, pending: Pending) {
        self.with(|map| map.insert(token, pending));
    }

    fn remove(&self, token: RequestToken) -> Option<Pending> {
        self.with(|map| map.remove(&token))
    }

    /// Sends `outcome` to the caller of the publish `token` and frees its room in the
    /// queue. Returns `outcome` back when `token` is no waiting publish.
    pub(crate) fn complete_publish(
        &self,
        token: RequestToken,
        outcome: PublishOutcome,
    ) -> Result<(), PublishOutcome> {
        let pending = self.with(|map| match map.get(&token) {
            Some(Pending::Publish { .. }) => map.remove(&token),
            _ => None,
        });
        match pending {
            Some(Pending::Publish { reply, .. }) => {
                let _ = reply.send(Ok(outcome));
                Ok(())
            }
            _ => Err(outcome),
        }
    }
}

/// Automatic reconnect: the policy and the settings that shape each attempt.
#[derive(Debug)]
struct AutoReconnect {
    policy: ReconnectPolicy,
    resume_on_reconnect: bool,
    resubscribe: bool,
}

/// The running connection group, if any.
#[derive(Debug)]
enum Group {
    /// A group is connecting or connected.
    Up {
        generation: u64,
        link: Link,
        session: Addr<SessionActor>,
        /// The clean start flag of this attempt's CONNECT.
        clean_start: bool,
        /// Whether CONNACK accepted the connection.
        accepted: bool,
    },
    /// The last group went down and automatic reconnect waits for `timer` to start the
    /// next; `handle_check` stops the client early when every handle is dropped.
    AwaitingRetry {
        timer: SpawnHandle,
        handle_check: SpawnHandle,
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
    pending: PendingRequests,
    next_token: u64,
    listeners: Vec<Recipient<Event>>,
    disconnect_waiters: Vec<Reply<()>>,
    group: Group,
    generation: u64,
    /// The next subscription identifier to add to a v5 subscribe that has none.
    next_subscription_identifier: NonZeroU32,
    /// Automatic reconnect; `None` when it is off or the application asked to disconnect.
    reconnect: Option<AutoReconnect>,
    /// Whether a connection of this client has reached CONNACK.
    connected_before: bool,
    /// Whether the client has session state, which decides how a CONNACK with Session
    /// Present 1 is treated.
    local_session: LocalSession,
    /// Subscriptions the broker granted, restored after a reconnect without a session.
    granted: Granted,
    /// Sends into full recipient mailboxes that stopped sessions left unresolved. They
    /// are held here, not awaited, so that actix still delivers their messages while
    /// they do not keep the client alive once its handles are gone.
    handed_over: Rc<RefCell<RoomRequests>>,
}

impl ClientActor {
    /// Creates the supervisor; `reconnect` is `None` when automatic reconnect is off.
    pub(crate) fn with_reconnect(
        config: ClientConfig,
        reconnect: Option<ReconnectSettings>,
    ) -> Self {
        let capacity = config.max_pending_requests;
        let store = MemoryStore::new(capacity).with_max_queued_bytes(config.queue.max_bytes);
        let local_session = if config.adopt_broker_session {
            LocalSession::Held
        } else {
            LocalSession::Absent
        };
        let reconnect = reconnect.map(|settings| {
            // The seed only spreads the retries of many clients; it need not be secret.
            let seed = std::collections::hash_map::RandomState::new()
                .hash_one(config.session.client_id.as_str());
            AutoReconnect {
                policy: ReconnectPolicy::new(settings.policy, seed),
                resume_on_reconnect: settings.resume_on_reconnect,
                resubscribe: settings.resubscribe,
            }
        });
        Self {
            config,
            store: SharedStore::new(store),
            router: Rc::default(),
            counters: Rc::default(),
            permits: Arc::new(Semaphore::new(capacity)),
            pending: PendingRequests::default(),
            next_token: 0,
            listeners: Vec::new(),
            disconnect_waiters: Vec::new(),
            group: Group::Down,
            generation: 0,
            next_subscription_identifier: NonZeroU32::MIN,
            reconnect,
            connected_before: false,
            local_session,
            granted: Granted::default(),
            handed_over: Rc::default(),
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
        let endpoint = self
            .reconnect
            .as_ref()
            .and_then(|reconnect| reconnect.policy.server().cloned())
            .unwrap_or_else(|| self.config.endpoint.clone());
        let session_config = self.attempt_session_config();
        let clean_start = session_config.clean_start;
        let session = Session::new(session_config, self.store.clone(), now());

        let session_context = Context::<SessionActor>::new();
        let session_addr = session_context.address();
        let keep_alive = KeepAliveActor::new(link.clone(), session_addr.clone()).start();
        let wire = Rc::new(Wire::new(self.pending.clone()));
        let socket = SocketActor::new(
            self.socket_settings(endpoint),
            link.clone(),
            session_addr.clone(),
            Rc::clone(&self.counters),
            Rc::clone(&wire),
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
            handed_over: Rc::clone(&self.handed_over),
            wire,
        }));

        tracing::debug!(client_id = %self.client_id(), generation, "connection group started");
        self.group = Group::Up {
            generation,
            link,
            session: session_addr,
            clean_start,
            accepted: false,
        };
    }

    fn socket_settings(&self, endpoint: Endpoint) -> SocketSettings {
        SocketSettings {
            endpoint,
            protocol: self.config.session.protocol,
            client_id: self.client_id().clone(),
            max_packet_size: self.config.max_packet_size_in,
        }
    }

    fn next_token(&mut self) -> RequestToken {
        let token = RequestToken(self.next_token);
        self.next_token += 1;
        token
    }

    /// Queues a request for the session and returns its token.
    fn enqueue(&mut self, request: Request) -> Result<RequestToken, ClientError> {
        let token = self.next_token();
        let queued = QueuedRequest {
            token,
            request,
            queued_at: now(),
        };
        self.store
            .push_request(queued)
            .map_err(|_| ClientError::QueueFull)?;
        if let Group::Up { session, .. } = &self.group {
            // One wake-up per request, so the number in the mailbox is bounded by
            // `max_pending_requests`; a dropped wake-up could leave a request unsent.
            session.do_send(RequestsQueued);
        }
        Ok(token)
    }

    fn submit_publish(&mut self, mut publish: Publish, reply: Reply<PublishOutcome>) {
        if let Err(error) = self.check_qos0_offline(publish.qos) {
            return drop(reply.send(Err(error)));
        }
        let topic = publish.topic.clone();
        let brought = publish.permit.take();
        let request = Request::Publish(OutgoingPublish {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
        });
        let permit = match self.admit(brought, &request) {
            Ok(permit) => permit,
            Err(error) => return drop(reply.send(Err(error))),
        };
        match self.enqueue(request) {
            Ok(token) => {
                let pending = Pending::Publish {
                    reply,
                    topic,
                    _permit: permit,
                };
                self.pending.insert(token, pending);
            }
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    fn on_completed(&mut self, token: RequestToken, outcome: Result<Outcome, RequestError>) {
        let Some(pending) = self.pending.remove(token) else {
            return;
        };
        let outcome = outcome.map_err(ClientError::from);
        match (pending, outcome) {
            (Pending::Publish { reply, .. }, Ok(Outcome::Publish(outcome))) => {
                let _ = reply.send(Ok(outcome));
            }
            (
                Pending::Subscribe {
                    reply,
                    routes,
                    request,
                    ..
                },
                Ok(Outcome::Subscribe(outcome)),
            ) => {
                self.granted.record(&request, &outcome.reasons);
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
                self.granted.remove(&filters, &outcome.reasons);
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
            (Pending::Resubscribe, Ok(Outcome::Subscribe(outcome))) => {
                let rejected = outcome
                    .reasons
                    .iter()
                    .filter(|reason| !reason.is_success())
                    .count();
                if rejected > 0 {
                    tracing::warn!(client_id = %self.client_id(), rejected, "broker rejected filters subscribed again after reconnect");
                }
            }
            (pending, Err(error @ ClientError::Expired { .. })) => {
                self.report_dropped(pending, crate::DropReason::Expired, error);
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
            Pending::Resubscribe => {
                tracing::warn!(client_id = %self.client_id(), %error, "subscribe again after reconnect failed");
            }
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
        // Stopped with a group still up, or waiting to reconnect, means every handle was
        // dropped. The group's own report cannot arrive any more, so the listeners hear
        // of the end from here.
        match std::mem::replace(&mut self.group, Group::Down) {
            Group::Up { link, .. } => {
                link.take_down(DisconnectCause::Requested);
                self.emit(&Event::Disconnected {
                    reason: DisconnectCause::Requested,
                });
            }
            Group::AwaitingRetry { .. } => self.emit(&Event::Disconnected {
                reason: DisconnectCause::Requested,
            }),
            Group::Down => {}
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
        let brought = subscribe.permit.take();
        let automatic_identifier = self.add_automatic_identifier(subscribe);
        let identifier = subscribe.subscription_identifier();
        let request = Request::Subscribe {
            filters: subscribe.filters.clone(),
            properties: std::mem::take(&mut subscribe.properties),
            automatic_identifier,
        };
        let permit = self.admit(brought, &request)?;
        let routes = {
            let mut router = self.router.borrow_mut();
            subscribe
                .filters
                .drain(..)
                .map(|(filter, _)| router.add(filter, subscribe.recipient.clone(), identifier))
                .collect::<Vec<_>>()
        };
        match self.enqueue(request.clone()) {
            Ok(token) => {
                let (reply, response) = oneshot::channel();
                let pending = Pending::Subscribe {
                    reply,
                    routes,
                    request,
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
        let brought = unsubscribe.permit.take();
        let filters = unsubscribe.filters.clone();
        let request = Request::Unsubscribe {
            filters: std::mem::take(&mut unsubscribe.filters),
            properties: std::mem::take(&mut unsubscribe.properties),
        };
        let permit = self.admit(brought, &request)?;
        let token = self.enqueue(request.clone())?;
        let (reply, response) = oneshot::channel();
        let pending = Pending::Unsubscribe {
            reply,
            filters,
            request,
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

    fn handle(&mut self, disconnect: Disconnect, ctx: &mut Self::Context) -> Self::Result {
        // A DISCONNECT the client may not send is refused before anything changes, so the
        // client stays connected and the caller learns why.
        let packet = disconnect.packet(self.config.session.protocol);
        if let Err(error) = self.config.session.check_disconnect(&packet) {
            return Box::pin(async move { Err(ClientError::from(error)) });
        }

        // Whatever happens to the connection from here on, the client does not reconnect.
        self.reconnect = None;
        let session = match &self.group {
            Group::Up { session, .. } => session,
            Group::AwaitingRetry { .. } => {
                tracing::info!(client_id = %self.client_id(), "disconnect requested while waiting to reconnect");
                self.finish(DisconnectCause::Requested, ctx);
                return Box::pin(async { Ok(()) });
            }
            Group::Down => return Box::pin(async { Ok(()) }),
        };
        tracing::info!(client_id = %self.client_id(), "disconnect requested");
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
            connected: matches!(self.group, Group::Up { accepted: true, .. }),
            queued_requests: self.store.queued_len(),
            queued_bytes: self.store.queued_bytes(),
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
            } => {
                self.record_accepted_connection(&properties);
                self.emit(&Event::Connected {
                    session_present,
                    properties,
                });
                self.on_connected(session_present);
            }
            SessionUpdate::Completed(completed) => {
                for (token, outcome) in completed {
                    self.on_completed(token, outcome);
                }
            }
        }
    }
}

impl Handler<GroupDown> for ClientActor {
    type Result = ();

    /// Starts the wait for the next attempt when automatic reconnect calls for one.
    /// Otherwise fails every pending caller, reports the end and stops.
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
        self.record_unknown_session(&down.cause);

        let decision = match &mut self.reconnect {
            Some(reconnect) => {
                let reference = down.cause.server_reference();
                reconnect.policy.handle_down(&down.cause, reference, now())
            }
            None => Decision::Stop,
        };
        match (decision, down.cause) {
            (
                Decision::Retry {
                    delay,
                    server,
                    attempt,
                },
                DisconnectCause::Failed(error),
            ) => self.schedule_retry(&error, delay, &server, attempt, ctx),
            (_, cause) => self.finish(cause, ctx),
        }
    }
}
