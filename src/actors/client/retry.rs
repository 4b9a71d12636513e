//! The supervisor's handling of a connection's end. It either stops for good, or keeps
//! the store and the pending callers and arms the backoff timer of the next group. When
//! a reconnect finds no session on the broker, it restores the subscriptions.

use std::collections::HashSet;

use actix::prelude::*;

use crate::codec::QoS;
use crate::error::{ClientError, DisconnectCause};
use crate::store::{OutboundFlow, QueuedRequest, Request, RequestToken, Store};
use crate::transport::Endpoint;

use super::super::group::{now, RequestsQueued};
use super::super::messages::Event;
use super::{ClientActor, Group, Pending, HANDLE_CHECK_INTERVAL};

impl ClientActor {
    /// Fails every pending caller with the cause, reports the end and stops.
    pub(super) fn finish(&mut self, cause: DisconnectCause, ctx: &mut Context<Self>) {
        if let Group::AwaitingRetry {
            timer,
            handle_check,
        } = std::mem::replace(&mut self.group, Group::Down)
        {
            ctx.cancel_future(timer);
            ctx.cancel_future(handle_check);
        }
        let error = match &cause {
            DisconnectCause::Requested => ClientError::Stopped,
            DisconnectCause::Failed(error) => error.clone(),
        };
        self.store.take_all_requests();
        for (_, pending) in self.pending.with(std::mem::take) {
            self.fail_pending(pending, error.clone());
        }
        for waiter in self.disconnect_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        self.emit(&Event::Disconnected { reason: cause });
        ctx.stop();
    }

    /// Keeps what the next connection needs, reports the loss and arms the timer of the
    /// next attempt.
    pub(super) fn schedule_retry(
        &mut self,
        error: &ClientError,
        delay: std::time::Duration,
        server: &Endpoint,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        self.keep_for_retry(error);
        tracing::info!(
            client_id = %self.client_id(),
            host = %server.host,
            port = server.port,
            attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "reconnect scheduled"
        );
        self.emit(&Event::Disconnected {
            reason: DisconnectCause::Failed(error.clone()),
        });
        self.emit(&Event::Reconnecting {
            delay,
            host: server.host.clone(),
            port: server.port,
            attempt,
        });

        let timer = ctx.run_later(delay, |actor, ctx| {
            if let Group::AwaitingRetry { handle_check, .. } =
                std::mem::replace(&mut actor.group, Group::Down)
            {
                ctx.cancel_future(handle_check);
                actor.start_group(ctx);
            }
        });
        let handle_check = ctx.run_interval(HANDLE_CHECK_INTERVAL, |_, ctx| {
            if !ctx.connected() {
                ctx.stop();
            }
        });
        self.group = Group::AwaitingRetry {
            timer,
            handle_check,
        };
    }

    /// Prepares the store and the pending callers for the next connection.
    ///
    /// Outbound PUBLISH flows stay: the session resends them on a resumed session.
    /// SUBSCRIBE and UNSUBSCRIBE are not resent by MQTT, so those still awaiting their
    /// acknowledgement go back to the head of the queue as new requests. A caller whose
    /// request is neither queued nor in flight, a QoS 0 publish handed to the socket,
    /// fails with `error`, because the client cannot tell whether it reached the broker.
    /// When QoS 0 publishes are not queued offline, those still queued fail with
    /// [`ClientError::NotConnected`].
    fn keep_for_retry(&mut self, error: &ClientError) {
        let mut requeued = Vec::new();
        let mut live = HashSet::new();
        for id in self.store.outbound_ids() {
            match self.store.outbound(id) {
                Some(OutboundFlow::Publish { token, .. }) => {
                    live.insert(token);
                }
                Some(
                    flow @ (OutboundFlow::Subscribe { .. } | OutboundFlow::Unsubscribe { .. }),
                ) => {
                    self.store.remove_outbound(id);
                    requeued.extend(flow.token());
                }
                // A release stays, because the broker's session may still hold its
                // identifier.
                Some(OutboundFlow::Release) | None => {}
            }
        }
        requeued.sort_unstable();

        let mut queue: Vec<QueuedRequest> = requeued
            .into_iter()
            .filter_map(|token| {
                self.pending.with(|map| match map.get(&token) {
                    Some(
                        Pending::Subscribe { request, .. } | Pending::Unsubscribe { request, .. },
                    ) => Some(QueuedRequest {
                        token,
                        request: request.clone(),
                        queued_at: now(),
                    }),
                    _ => None,
                })
            })
            .collect();
        // Subscriptions restored by the client are built afresh after the next CONNACK.
        let qos0_offline = self.config.queue.qos0_offline;
        let mut offline_qos0 = Vec::new();
        while let Some(queued) = self.store.pop_request() {
            let resubscribe = self
                .pending
                .with(|map| matches!(map.get(&queued.token), Some(Pending::Resubscribe)));
            match (&queued.request, resubscribe) {
                (_, true) => {}
                (Request::Publish(publish), _)
                    if publish.qos == QoS::AtMostOnce && !qos0_offline =>
                {
                    offline_qos0.push(queued.token);
                }
                _ => queue.push(queued),
            }
        }
        for token in offline_qos0 {
            if let Some(pending) = self.pending.remove(token) {
                self.fail_pending(pending, ClientError::NotConnected);
            }
        }
        for queued in queue.into_iter().rev() {
            live.insert(queued.token);
            self.store.push_front_request(queued);
        }

        let lost: Vec<RequestToken> = self.pending.with(|map| {
            map.keys()
                .filter(|token| !live.contains(token))
                .copied()
                .collect()
        });
        for token in lost {
            if let Some(pending) = self.pending.remove(token) {
                self.fail_pending(pending, error.clone());
            }
        }
    }

    /// Records an accepted connection, and subscribes again when a reconnect finds no
    /// session on the broker.
    pub(super) fn on_connected(&mut self, session_present: bool) {
        let reconnected = std::mem::replace(&mut self.connected_before, true);
        let Some(reconnect) = &mut self.reconnect else {
            return;
        };
        reconnect.policy.handle_connected(now());
        if session_present || !reconnected || !reconnect.resubscribe {
            return;
        }
        let requests = self.granted.requests();
        if requests.is_empty() {
            return;
        }

        let queued: Vec<QueuedRequest> = requests
            .into_iter()
            .map(|request| QueuedRequest {
                token: self.next_token(),
                request,
                queued_at: now(),
            })
            .collect();
        for queued in queued.into_iter().rev() {
            self.pending.insert(queued.token, Pending::Resubscribe);
            self.store.push_front_request(queued);
        }
        if let Group::Up { session, .. } = &self.group {
            session.do_send(RequestsQueued);
        }
        let filters = self.granted.len();
        tracing::info!(client_id = %self.client_id(), filters, "no session on broker, subscribing again");
        self.emit(&Event::Resubscribed { filters });
    }
}
