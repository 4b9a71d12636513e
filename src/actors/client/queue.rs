//! The supervisor's admission of requests into the request queue: the count limit held
//! as semaphore permits, the byte limit, the policy when either is reached, and dropping
//! a queued request with one result for its caller and one event.

use tokio::sync::OwnedSemaphorePermit;

use crate::codec::QoS;
use crate::error::ClientError;
use crate::store::{QueuedRequest, Request, Store};
use crate::QueueFullPolicy;

use super::super::messages::{DropReason, Event};
use super::{ClientActor, Group, Pending};

/// The byte limit and the policies of the request queue, from
/// [`ClientOptions`](crate::ClientOptions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueConfig {
    /// Largest sum of [`Request::queued_size`] over the requests waiting to be sent.
    pub max_bytes: Option<usize>,
    /// Policy for a new request when the queue is full.
    pub full_policy: QueueFullPolicy,
    /// Whether a QoS 0 publish made while no connection is up is queued.
    pub qos0_offline: bool,
}

impl ClientActor {
    /// Takes room in the request queue for `request` and returns the permit that holds
    /// its place in the count limit: the one the caller brought, else a free one.
    ///
    /// When the count or the byte limit is reached, [`QueueFullPolicy::DropOldest`]
    /// drops the oldest requests waiting to be sent until the new one fits, and
    /// [`QueueFullPolicy::RefuseNew`] fails with [`ClientError::QueueFull`].
    pub(super) fn admit(
        &mut self,
        brought: Option<OwnedSemaphorePermit>,
        request: &Request,
    ) -> Result<OwnedSemaphorePermit, ClientError> {
        if matches!(self.group, Group::Down) {
            return Err(ClientError::Stopped);
        }
        let size = request.queued_size();
        if let Some(max) = self.config.queue.max_bytes {
            if size > max {
                return Err(ClientError::TooLargeForQueue { size, max });
            }
        }

        // Each round drops one queued request or returns, so the loop ends.
        // NOTE: subscriptions the client restores after a reconnect are never dropped
        // but count in the queued bytes. When they alone leave too little room, the
        // application requests are dropped before the new one fails with QueueFull.
        let mut permit = brought.or_else(|| self.free_permit());
        while permit.is_none() || !self.bytes_fit(size) {
            if self.config.queue.full_policy != QueueFullPolicy::DropOldest || !self.drop_oldest() {
                return Err(ClientError::QueueFull);
            }
            if permit.is_none() {
                permit = self.free_permit();
            }
        }
        permit.ok_or(ClientError::QueueFull)
    }

    /// Refuses a QoS 0 publish made while no connection is up, when such publishes are
    /// not queued. A stopped client is left to [`ClientActor::admit`].
    pub(super) fn check_qos0_offline(&self, qos: QoS) -> Result<(), ClientError> {
        let connected = match &self.group {
            Group::Up { accepted, .. } => *accepted,
            Group::AwaitingRetry { .. } => false,
            Group::Down => return Ok(()),
        };
        if qos == QoS::AtMostOnce && !self.config.queue.qos0_offline && !connected {
            return Err(ClientError::NotConnected);
        }
        Ok(())
    }

    /// Fails the caller of a request that left the queue unsent with the error matching
    /// `reason`, and reports it to the listeners.
    pub(super) fn report_dropped(&self, pending: Pending, reason: DropReason, error: ClientError) {
        let topic = match &pending {
            Pending::Publish { topic, .. } => Some(topic.clone()),
            _ => None,
        };
        tracing::debug!(
            client_id = %self.client_id(),
            ?reason,
            topic = topic.as_ref().map(crate::codec::TopicName::as_str),
            "queued request dropped"
        );
        self.fail_pending(pending, error);
        self.emit(&Event::RequestDropped { topic, reason });
    }

    fn free_permit(&self) -> Option<OwnedSemaphorePermit> {
        std::sync::Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
    }

    fn bytes_fit(&self, size: usize) -> bool {
        self.config.queue.max_bytes.map_or(true, |max| {
            self.store.queued_bytes().saturating_add(size) <= max
        })
    }

    /// Drops the oldest request of the application that waits to be sent, and returns
    /// `false` when there is none. Subscriptions the client restores on its own after a
    /// reconnect are kept, because they hold no place in the count limit.
    fn drop_oldest(&mut self) -> bool {
        let pending = &self.pending;
        let mut dropped_by_policy = |queued: &QueuedRequest| {
            pending.with(|map| {
                matches!(
                    map.get(&queued.token),
                    Some(
                        Pending::Publish { .. }
                            | Pending::Subscribe { .. }
                            | Pending::Unsubscribe { .. }
                    )
                )
            })
        };
        let Some(queued) = self.store.remove_first_request(&mut dropped_by_policy) else {
            return false;
        };
        if let Some(pending) = self.pending.remove(queued.token) {
            self.report_dropped(
                pending,
                DropReason::QueueFull,
                ClientError::DroppedFromQueue,
            );
        }
        true
    }
}
