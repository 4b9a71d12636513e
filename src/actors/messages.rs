//! The actix messages an application sends to the client, and the ones it receives.
//!
//! Each request message documents when its response resolves and which errors it
//! returns; [`Client`](crate::Client) wraps them in plain async methods.

use std::fmt;
use std::num::NonZeroU32;

use actix::Recipient;
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::codec::{
    BoxedProperties, DisconnectReason, Properties, QoS, SubscriptionOptions, TopicFilter, TopicName,
};
use crate::error::{ClientError, DisconnectCause};
use crate::session::{PublishOutcome, SubscribeOutcome, UnsubscribeOutcome};

/// Publishes one message.
///
/// The response resolves for QoS 0 once the packet is written to the socket, for QoS 1
/// on PUBACK and for QoS 2 on PUBCOMP. It fails with [`ClientError::Rejected`] on a
/// failure reason code, [`ClientError::PacketTooLarge`] or
/// [`ClientError::InvalidRequest`] when the broker's limits forbid the message (nothing is
/// sent then), [`ClientError::QueueFull`] when too many requests are pending, and with
/// the connection's error if it ends first. While it waits in the request queue, it
/// fails with [`ClientError::DroppedFromQueue`] when a newer request replaced it, and with
/// [`ClientError::Expired`] when its v5 Message Expiry Interval passed. A QoS 0 message
/// fails with [`ClientError::NotConnected`] when offline queueing of QoS 0 is off. A
/// message larger than the queue's byte limit fails with
/// [`ClientError::TooLargeForQueue`]; see
/// [`ClientOptions::max_queued_bytes`](crate::ClientOptions::max_queued_bytes).
///
/// ```no_run
/// # async fn example(client: mqttlink::Client) -> Result<(), mqttlink::ClientError> {
/// use mqttlink::codec::QoS;
/// use mqttlink::Publish;
///
/// let topic = "sensors/kitchen".parse().expect("valid topic name");
/// let outcome = client
///     .publish(Publish::new(topic, "21.5").qos(QoS::AtLeastOnce))
///     .await?;
/// println!("acknowledged with {:?}", outcome.reason);
/// # Ok(())
/// # }
/// ```
pub struct Publish {
    pub(crate) topic: TopicName,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) properties: BoxedProperties,
    /// Room in the client's request queue, taken by [`Client::publish`](crate::Client::publish)
    /// before sending; a message without one takes it on arrival or fails with `QueueFull`.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Publish {
    /// Creates a QoS 0, non-retained message.
    #[must_use]
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: BoxedProperties::default(),
            permit: None,
        }
    }

    /// Sets the QoS.
    #[must_use]
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Sets whether the broker retains the message.
    #[must_use]
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the PUBLISH properties (v5). Before MQTT 5 a publish with any property set
    /// fails with [`ClientError::InvalidRequest`].
    #[must_use]
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties.into();
        self
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

impl actix::Message for Publish {
    type Result = Result<PublishOutcome, ClientError>;
}

/// Subscribes one recipient to one or more topic filters.
///
/// The response resolves on SUBACK with one reason code per filter. It fails with
/// [`ClientError::Rejected`] when the broker refused every filter, and with
/// [`ClientError::InvalidRequest`] when the request is empty or uses a feature the broker
/// lacks. Messages matching a filter go to the recipient from the moment the SUBSCRIBE is
/// sent; filters the broker refused stop routing when the SUBACK arrives.
///
/// ```no_run
/// use actix::prelude::*;
/// use mqttlink::codec::{QoS, SubscriptionOptions};
/// use mqttlink::Subscribe;
///
/// struct Printer;
///
/// impl Actor for Printer {
///     type Context = Context<Self>;
/// }
///
/// impl Handler<mqttlink::Message> for Printer {
///     type Result = ();
///
///     fn handle(&mut self, message: mqttlink::Message, _: &mut Context<Self>) {
///         println!("{}: {} bytes", message.topic, message.payload.len());
///     }
/// }
///
/// # async fn example(client: mqttlink::Client) -> Result<(), mqttlink::ClientError> {
/// let printer = Printer.start();
/// let filter = "sensors/+".parse().expect("valid topic filter");
/// client
///     .subscribe(Subscribe::new(printer.recipient()).filter(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce)))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct Subscribe {
    pub(crate) recipient: Recipient<crate::Message>,
    pub(crate) filters: Vec<(TopicFilter, SubscriptionOptions)>,
    pub(crate) properties: BoxedProperties,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Subscribe {
    /// Creates a subscribe request whose messages go to `recipient`; add filters with
    /// [`Subscribe::filter`].
    #[must_use]
    pub fn new(recipient: Recipient<crate::Message>) -> Self {
        Self {
            recipient,
            filters: Vec::new(),
            properties: BoxedProperties::default(),
            permit: None,
        }
    }

    /// Adds one topic filter with its options; may be called several times.
    #[must_use]
    pub fn filter(mut self, filter: TopicFilter, options: SubscriptionOptions) -> Self {
        self.filters.push((filter, options));
        self
    }

    /// Sets the SUBSCRIBE properties (v5). A subscription identifier set here routes
    /// messages carrying it to this recipient only.
    #[must_use]
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties.into();
        self
    }

    pub(crate) fn subscription_identifier(&self) -> Option<NonZeroU32> {
        self.properties.subscription_identifiers.first().copied()
    }
}

impl fmt::Debug for Subscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribe")
            .field("filters", &self.filters)
            .field("properties", &self.properties)
            .finish_non_exhaustive()
    }
}

impl actix::Message for Subscribe {
    type Result = Result<SubscribeOutcome, ClientError>;
}

/// Removes subscriptions, and the routes to their recipients.
///
/// The response resolves on UNSUBACK; the routes of the filters are removed then. It
/// fails with [`ClientError::Rejected`] when the broker refused every filter (v5).
///
/// ```no_run
/// # async fn example(client: mqttlink::Client) -> Result<(), mqttlink::ClientError> {
/// let filter = "sensors/+".parse().expect("valid topic filter");
/// client.unsubscribe(mqttlink::Unsubscribe::new().filter(filter)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct Unsubscribe {
    pub(crate) filters: Vec<TopicFilter>,
    pub(crate) properties: BoxedProperties,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Unsubscribe {
    /// Creates an empty unsubscribe request; add filters with [`Unsubscribe::filter`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one topic filter to remove; may be called several times.
    #[must_use]
    pub fn filter(mut self, filter: TopicFilter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Sets the UNSUBSCRIBE properties (v5).
    #[must_use]
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties.into();
        self
    }
}

impl fmt::Debug for Unsubscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsubscribe")
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl actix::Message for Unsubscribe {
    type Result = Result<UnsubscribeOutcome, ClientError>;
}

/// Disconnects and stops the client.
///
/// Before CONNACK the attempt is abandoned at once. Once connected, the client sends no
/// new request and waits for outbound QoS 1 and 2 flows to complete, at most the
/// disconnect timeout. Then it sends DISCONNECT and closes. The response resolves when every
/// actor of the client has been told to stop; requests still pending fail with
/// [`ClientError::Stopped`]. It returns `Ok` also when the client had already stopped.
/// It returns [`ClientError::InvalidRequest`], and leaves the client connected, when the
/// DISCONNECT would break a client rule of MQTT 5.0: a reason code only a server may
/// send, or a non-zero Session Expiry Interval after a CONNECT that sent none.
///
/// ```no_run
/// # async fn example(client: mqttlink::Client) -> Result<(), mqttlink::ClientError> {
/// client.disconnect(mqttlink::Disconnect::new()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Disconnect {
    pub(crate) reason: Option<DisconnectReason>,
    pub(crate) session_expiry: Option<u32>,
}

impl Disconnect {
    /// Creates a normal disconnect (reason code 0, no properties).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the DISCONNECT reason code (v5; ignored before), for example
    /// `DisconnectWithWillMessage` to have the broker publish the will. A code only a
    /// server may send makes the disconnect fail with [`ClientError::InvalidRequest`].
    #[must_use]
    pub fn reason(mut self, reason: DisconnectReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Sets the Session Expiry Interval in seconds sent with DISCONNECT (v5; ignored
    /// before). A non-zero value after a CONNECT without a Session Expiry Interval makes
    /// the disconnect fail with [`ClientError::InvalidRequest`].
    #[must_use]
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.session_expiry = Some(seconds);
        self
    }

    /// Builds the DISCONNECT packet. MQTT 3.1.1 has no reason code or properties, so
    /// they are left out before version 5.
    pub(crate) fn packet(
        &self,
        protocol: crate::codec::ProtocolVersion,
    ) -> crate::codec::Disconnect {
        if !protocol.is_v5() {
            return crate::session::normal_disconnect();
        }
        crate::codec::Disconnect {
            reason: self.reason.unwrap_or(DisconnectReason::NormalDisconnection),
            properties: Properties {
                session_expiry_interval: self.session_expiry,
                ..Properties::default()
            }
            .into(),
        }
    }
}

impl actix::Message for Disconnect {
    type Result = Result<(), ClientError>;
}

/// A message from the broker, delivered to each recipient whose filter matches.
///
/// QoS 1 and 2 messages are acknowledged to the broker only after every matching
/// recipient's mailbox accepted them.
#[derive(Clone, actix::Message)]
#[rtype(result = "()")]
pub struct Message {
    /// Topic the message was published to.
    pub topic: TopicName,
    /// Application payload.
    pub payload: Bytes,
    /// QoS the broker delivered it with.
    pub qos: QoS,
    /// Whether it is a retained message.
    pub retain: bool,
    /// Whether the broker marked it as a possible redelivery.
    pub dup: bool,
    /// PUBLISH properties (v5), topic alias removed. They dereference to
    /// [`Properties`] and are allocated only when the broker sent some.
    pub properties: BoxedProperties,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("dup", &self.dup)
            .finish_non_exhaustive()
    }
}

impl From<crate::session::InboundMessage> for Message {
    fn from(message: crate::session::InboundMessage) -> Self {
        Self {
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            dup: message.dup,
            properties: message.properties,
        }
    }
}

/// A change of the connection, sent to every recipient registered with
/// [`Client::subscribe_events`](crate::Client::subscribe_events).
///
/// ```no_run
/// use actix::prelude::*;
/// use mqttlink::Event;
///
/// struct Watcher;
///
/// impl Actor for Watcher {
///     type Context = Context<Self>;
/// }
///
/// impl Handler<Event> for Watcher {
///     type Result = ();
///
///     fn handle(&mut self, event: Event, _: &mut Context<Self>) {
///         match event {
///             Event::Connected { session_present, .. } => println!("connected, session present: {session_present}"),
///             Event::Disconnected { reason } => println!("disconnected: {reason}"),
///             _ => {}
///         }
///     }
/// }
///
/// # fn example(client: &mqttlink::Client) {
/// client.subscribe_events(Watcher.start().recipient());
/// # }
/// ```
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // Sent twice per connection; boxing the properties buys nothing.
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        /// Whether the broker resumed a stored session.
        session_present: bool,
        /// CONNACK properties (v5).
        properties: Properties,
    },
    /// The connection ended. Without automatic reconnect the client has stopped; with
    /// it, [`Event::Reconnecting`] follows unless the client stops for good.
    Disconnected {
        /// Cause of the disconnect.
        reason: DisconnectCause,
    },
    /// Automatic reconnect connects to `host` and `port` after `delay`.
    Reconnecting {
        /// Wait before the attempt.
        delay: std::time::Duration,
        /// Host of the server the attempt connects to.
        host: String,
        /// Port of that server.
        port: u16,
        /// Number of the attempt since the last stable connection, starting at 1.
        attempt: u32,
    },
    /// A reconnect found no session on the broker (Session Present 0), so the client
    /// sent SUBSCRIBE again for every filter the broker had granted. Follows the
    /// [`Event::Connected`] of that connection.
    Resubscribed {
        /// Number of topic filters subscribed again.
        filters: usize,
    },
    /// A request left the request queue unsent, and its caller got the matching error:
    /// [`ClientError::DroppedFromQueue`] or [`ClientError::Expired`].
    RequestDropped {
        /// Topic of the dropped publish; `None` for a subscribe or unsubscribe.
        topic: Option<TopicName>,
        /// Reason the request was dropped.
        reason: DropReason,
    },
}

/// Reason a request left the request queue unsent, as reported by
/// [`Event::RequestDropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue was full and [`QueueFullPolicy::DropOldest`](crate::QueueFullPolicy)
    /// removed the request, the oldest one waiting, to make room for a newer one.
    QueueFull,
    /// The publish waited in the queue for its whole Message Expiry Interval (v5).
    Expired,
}

/// Counters of one client, returned for [`GetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// mqttlink actors alive in this process, all clients together.
    pub live_actors: usize,
    /// Outbound QoS 1 and 2 publishes, subscribes and unsubscribes awaiting acknowledgement.
    pub inflight_out: usize,
    /// Inbound QoS 1 and 2 messages not yet fully acknowledged.
    pub inflight_in: usize,
    /// `true` once the broker has accepted the current connection with CONNACK, `false`
    /// while the client connects, waits to reconnect or has stopped.
    pub connected: bool,
    /// Requests queued and not yet sent.
    pub queued_requests: usize,
    /// Estimated bytes of the queued requests, the sum that
    /// [`ClientOptions::max_queued_bytes`](crate::ClientOptions::max_queued_bytes) limits.
    pub queued_bytes: usize,
    /// Bytes read from the broker.
    pub bytes_in: u64,
    /// Bytes written to the broker.
    pub bytes_out: u64,
    /// Packets decoded from the broker.
    pub packets_in: u64,
    /// Packets encoded for the broker.
    pub packets_out: u64,
    /// Messages that matched no route while no default recipient was set.
    pub unmatched_messages: u64,
    /// QoS 0 messages dropped because recipients were too slow to take them.
    pub dropped_messages: u64,
}

/// Requests the client's [`Stats`]; resolves at once.
///
/// ```no_run
/// # async fn example(client: mqttlink::Client) -> Result<(), actix::MailboxError> {
/// let stats = client.addr().send(mqttlink::GetStats).await?;
/// println!("{} requests queued, {} bytes sent", stats.queued_requests, stats.bytes_out);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, actix::Message)]
#[rtype(result = "Stats")]
pub struct GetStats;

/// Sets the recipient of messages that match no subscription route; resolves at once.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct SetDefaultRecipient(pub Recipient<crate::Message>);

/// Registers a recipient of [`Event`]s; resolves at once.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct SubscribeEvents(pub Recipient<Event>);

/// A request together with the channel its result goes to, for callers that must not
/// wait for room in the mailbox.
pub(crate) enum Submit {
    Publish(
        Publish,
        tokio::sync::oneshot::Sender<Result<PublishOutcome, ClientError>>,
    ),
}

impl actix::Message for Submit {
    type Result = ();
}
