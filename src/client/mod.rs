//! The public client API: the options builder and the cheap, cloneable [`Client`] handle
//! whose async methods send the request messages to the supervisor actor.

mod options;

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::actors::{
    ClientActor, Disconnect, Event, GetStats, Message, Publish, SetDefaultRecipient, Stats, Submit,
    Subscribe, SubscribeEvents, Unsubscribe,
};
use crate::error::ClientError;
use crate::session::{PublishOutcome, SubscribeOutcome, UnsubscribeOutcome};

pub use options::{ClientOptions, QueueFullPolicy};

/// A handle to a running client; clones share the client, and dropping every clone (and
/// every [`Client::addr`]) stops it.
///
/// ```no_run
/// # #[actix_rt::main]
/// # async fn main() -> Result<(), mqttlink::ClientError> {
/// use mqttlink::{ClientOptions, Disconnect, Publish};
///
/// let client = ClientOptions::from_url("mqtt://127.0.0.1:1883")?.client_id("demo").start()?;
/// let topic = "demo/hello".parse().expect("valid topic name");
/// client.publish(Publish::new(topic, "hi")).await?;
/// client.disconnect(Disconnect::new()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    addr: Addr<ClientActor>,
    permits: Arc<Semaphore>,
    policy: QueueFullPolicy,
}

impl Client {
    pub(crate) fn new(
        addr: Addr<ClientActor>,
        permits: Arc<Semaphore>,
        policy: QueueFullPolicy,
    ) -> Self {
        Self {
            addr,
            permits,
            policy,
        }
    }

    /// Publishes a message, first waiting for room in the request queue under
    /// [`QueueFullPolicy::RefuseNew`]. See [`Publish`] for when it resolves and which
    /// errors it returns.
    pub async fn publish(&self, mut publish: Publish) -> Result<PublishOutcome, ClientError> {
        publish.permit = self.wait_for_room().await?;
        self.addr
            .send(publish)
            .await
            .map_err(|_| ClientError::Stopped)?
    }

    /// Queues a message without waiting: fails at once with [`ClientError::QueueFull`]
    /// when the request queue or the supervisor's mailbox is full, and with
    /// [`ClientError::Stopped`] once the client stopped. Under
    /// [`QueueFullPolicy::DropOldest`] a full queue drops its oldest waiting request
    /// instead, when it has one. The returned future resolves like [`Client::publish`].
    pub fn try_publish(
        &self,
        mut publish: Publish,
    ) -> Result<impl Future<Output = Result<PublishOutcome, ClientError>>, ClientError> {
        // `ClientActor::stopped` closes the semaphore, so a closed one means the client
        // stopped; a caller that retries on QueueFull would otherwise retry forever.
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::NoPermits) if self.policy == QueueFullPolicy::DropOldest => None,
            Err(TryAcquireError::NoPermits) => return Err(ClientError::QueueFull),
            Err(TryAcquireError::Closed) => return Err(ClientError::Stopped),
        };
        publish.permit = permit;
        let (reply, response) = oneshot::channel();
        self.addr
            .try_send(Submit::Publish(publish, reply))
            .map_err(|error| match error {
                SendError::Full(_) => ClientError::QueueFull,
                SendError::Closed(_) => ClientError::Stopped,
            })?;
        Ok(async move { response.await.unwrap_or(Err(ClientError::Stopped)) })
    }

    /// Subscribes a recipient, first waiting for room in the request queue under
    /// [`QueueFullPolicy::RefuseNew`]. See [`Subscribe`] for when it resolves and which
    /// errors it returns.
    pub async fn subscribe(
        &self,
        mut subscribe: Subscribe,
    ) -> Result<SubscribeOutcome, ClientError> {
        subscribe.permit = self.wait_for_room().await?;
        self.addr
            .send(subscribe)
            .await
            .map_err(|_| ClientError::Stopped)?
    }

    /// Removes subscriptions, first waiting for room in the request queue under
    /// [`QueueFullPolicy::RefuseNew`]. See [`Unsubscribe`] for when it resolves and
    /// which errors it returns.
    pub async fn unsubscribe(
        &self,
        mut unsubscribe: Unsubscribe,
    ) -> Result<UnsubscribeOutcome, ClientError> {
        unsubscribe.permit = self.wait_for_room().await?;
        self.addr
            .send(unsubscribe)
            .await
            .map_err(|_| ClientError::Stopped)?
    }

    /// Disconnects and stops the client; see [`Disconnect`]. Returns `Ok` also when the
    /// client had stopped already.
    pub async fn disconnect(&self, disconnect: Disconnect) -> Result<(), ClientError> {
        match self.addr.send(disconnect).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Sets the recipient of messages that match no subscription; without one they are
    /// counted and logged at debug level.
    pub fn set_default_recipient(&self, recipient: Recipient<Message>) {
        self.addr.do_send(SetDefaultRecipient(recipient));
    }

    /// Registers a recipient of connection [`Event`]s.
    pub fn subscribe_events(&self, recipient: Recipient<Event>) {
        self.addr.do_send(SubscribeEvents(recipient));
    }

    /// Returns the client's counters; fails with [`ClientError::Stopped`] once it stopped.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.addr
            .send(GetStats)
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Takes a place in the request queue's count limit. Under
    /// [`QueueFullPolicy::RefuseNew`] it waits for one. Under
    /// [`QueueFullPolicy::DropOldest`] it never waits: with no free place it returns
    /// `None`, and the supervisor drops the oldest waiting request to make one.
    async fn wait_for_room(&self) -> Result<Option<OwnedSemaphorePermit>, ClientError> {
        let permits = Arc::clone(&self.permits);
        match self.policy {
            QueueFullPolicy::DropOldest => match permits.try_acquire_owned() {
                Ok(permit) => Ok(Some(permit)),
                Err(TryAcquireError::NoPermits) => Ok(None),
                Err(TryAcquireError::Closed) => Err(ClientError::Stopped),
            },
            QueueFullPolicy::RefuseNew => permits
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| ClientError::Stopped),
        }
    }

    /// Returns the supervisor's address, for sending the request messages directly:
    /// `addr.send(publish).await` gives the same results as [`Client::publish`], except
    /// that a full request queue fails with [`ClientError::QueueFull`] instead of waiting.
    #[must_use]
    pub fn addr(&self) -> Addr<ClientActor> {
        self.addr.clone()
    }
}
