//! Session state that must outlive a connection: requests waiting to be sent, outbound
//! QoS 1 and 2 flows and subscriptions awaiting their acknowledgement, inbound QoS 2
//! packet identifiers awaiting PUBREL, and the packet identifier cursor.
//!
//! The session state machine reads and writes this state as it goes, so a connection
//! that ends at any instant leaves behind exactly what was still unacknowledged. This
//! layer contains data only: it does no I/O, reads no clock and does not use actix.
//! The caller that queues a request gives the instant it was queued.
//! [`MemoryStore`] keeps everything in memory; a durable store would implement [`Store`].

mod memory;

use std::num::NonZeroU32;
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{
    BoxedProperties, PacketId, Properties, PubAckReason, Publish, QoS, SubscriptionOptions,
    TopicFilter, TopicName,
};

pub use memory::{MemoryStore, SharedStore};

/// Identifies one caller's request from the moment it is queued until it is answered.
///
/// Tokens are chosen by whoever queues the request and are never interpreted by the
/// session; the actor layer uses them to find the caller to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(pub u64);

/// A PUBLISH requested by the application, before it has a packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPublish {
    /// Topic the message is published to.
    pub topic: TopicName,
    /// Application payload.
    pub payload: Bytes,
    /// Requested QoS.
    pub qos: QoS,
    /// Whether the broker should retain the message.
    pub retain: bool,
    /// PUBLISH properties (v5), on the heap only when one is set.
    pub properties: BoxedProperties,
}

/// A request waiting in the queue until the session can send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Publish one message.
    Publish(OutgoingPublish),
    /// Subscribe to one or more filters.
    Subscribe {
        /// Filters with their options, in the order of the SUBSCRIBE.
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        /// SUBSCRIBE properties (v5).
        properties: BoxedProperties,
        /// The subscription identifier the client added on its own to route messages
        /// exactly; it is removed again when the broker does not support identifiers.
        automatic_identifier: Option<NonZeroU32>,
    },
    /// Remove one or more subscriptions.
    Unsubscribe {
        /// Filters to remove.
        filters: Vec<TopicFilter>,
        /// UNSUBSCRIBE properties (v5).
        properties: BoxedProperties,
    },
}

impl Request {
    /// Returns an estimate of the bytes the request occupies while it waits in the queue,
    /// which the byte bound of the queue counts.
    ///
    /// The estimate adds the lengths of the topic or filters, the payload and the
    /// variable-length properties (content type, response topic, correlation data, user
    /// properties), plus 2 bytes per string and 1 byte per filter for the options. It
    /// leaves out the fixed header and the fixed-size properties, so it is a few bytes
    /// below the encoded packet.
    #[must_use]
    pub fn queued_size(&self) -> usize {
        match self {
            Self::Publish(publish) => {
                string_size(publish.topic.as_str().len())
                    + publish.payload.len()
                    + properties_size(&publish.properties)
            }
            Self::Subscribe {
                filters,
                properties,
                ..
            } => {
                let filters: usize = filters
                    .iter()
                    .map(|(filter, _)| string_size(filter.as_str().len()) + 1)
                    .sum();
                filters + properties_size(properties)
            }
            Self::Unsubscribe {
                filters,
                properties,
            } => {
                let filters: usize = filters
                    .iter()
                    .map(|filter| string_size(filter.as_str().len()))
                    .sum();
                filters + properties_size(properties)
            }
        }
    }
}

/// Returns the size of a length-prefixed string or binary value.
fn string_size(length: usize) -> usize {
    length.saturating_add(2)
}

/// Returns the size of the variable-length properties a request can carry; see
/// [`Request::queued_size`].
fn properties_size(properties: &Properties) -> usize {
    let strings = [
        properties.content_type.as_ref().map(|value| value.len()),
        properties
            .response_topic
            .as_ref()
            .map(|value| value.as_str().len()),
        properties.correlation_data.as_ref().map(Bytes::len),
    ];
    let strings: usize = strings.into_iter().flatten().map(string_size).sum();
    let user: usize = properties
        .user_properties
        .iter()
        .map(|(key, value)| string_size(key.len()) + string_size(value.len()))
        .sum();
    strings + user
}

/// A queued request together with the token of the caller waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    /// Caller waiting for the result.
    pub token: RequestToken,
    /// The requested operation.
    pub request: Request,
    /// When the request entered the queue. The session counts a publish's Message Expiry
    /// Interval (v5) down from here.
    pub queued_at: Instant,
}

/// The acknowledgement an outbound QoS 1 or 2 PUBLISH is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwaitedAck {
    /// QoS 1: waiting for PUBACK.
    PubAck,
    /// QoS 2: waiting for PUBREC.
    PubRec,
    /// QoS 2 after PUBREC: PUBREL was sent, waiting for PUBCOMP.
    PubComp {
        /// The PUBREC reason code, reported to the caller when the flow completes.
        pubrec_reason: PubAckReason,
    },
}

/// A packet identifier in use by this client, and what it is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // Most flows are publishes; boxing them would add an allocation each.
pub enum OutboundFlow {
    /// A QoS 1 or 2 PUBLISH that has been sent and is not yet complete.
    Publish {
        /// Caller waiting for the outcome.
        token: RequestToken,
        /// The packet as sent, kept for resending with DUP set on session resume.
        packet: Publish,
        /// The acknowledgement expected next.
        awaiting: AwaitedAck,
    },
    /// A SUBSCRIBE waiting for its SUBACK.
    Subscribe {
        /// Caller waiting for the outcome.
        token: RequestToken,
        /// Number of filters, which must equal the number of SUBACK reason codes.
        filter_count: usize,
    },
    /// An UNSUBSCRIBE waiting for its UNSUBACK.
    Unsubscribe {
        /// Caller waiting for the outcome.
        token: RequestToken,
        /// Number of filters, which must equal the number of UNSUBACK reason codes (v5).
        filter_count: usize,
    },
    /// A PUBREL sent for a PUBREC this client had no flow for, waiting for the broker's
    /// PUBCOMP. It keeps the identifier out of use until then, across reconnects too,
    /// because the broker's session still uses it. No caller waits for it.
    Release,
}

impl OutboundFlow {
    /// Returns the token of the caller waiting for this flow, if one waits.
    #[must_use]
    pub fn token(&self) -> Option<RequestToken> {
        match self {
            Self::Publish { token, .. }
            | Self::Subscribe { token, .. }
            | Self::Unsubscribe { token, .. } => Some(*token),
            Self::Release => None,
        }
    }
}

/// Storage for the state a session must keep across connections.
///
/// Every method takes or returns values, not references, so that an implementation may
/// sit behind a `RefCell` shared by the session and its supervisor.
#[allow(clippy::result_large_err)] // A rejected request is handed back unchanged, without boxing.
pub trait Store {
    /// Appends a request to the queue, or returns it when the queue is full: when it
    /// holds its maximum number of requests, or when the request's
    /// [`Request::queued_size`] would take the queued bytes above their maximum.
    fn push_request(&mut self, request: QueuedRequest) -> Result<(), QueuedRequest>;
    /// Puts a request back at the head of the queue, where it was taken from, whether or
    /// not the queue is full.
    fn push_front_request(&mut self, request: QueuedRequest);
    /// Removes the request at the head of the queue.
    fn pop_request(&mut self) -> Option<QueuedRequest>;
    /// Removes the first request, from the head, for which `select` returns `true`.
    fn remove_first_request(
        &mut self,
        select: &mut dyn FnMut(&QueuedRequest) -> bool,
    ) -> Option<QueuedRequest>;
    /// Returns the number of queued requests.
    fn queued_len(&self) -> usize;
    /// Returns the sum of [`Request::queued_size`] over the queued requests.
    fn queued_bytes(&self) -> usize;

    /// Returns the identifier the next allocation starts searching from.
    fn packet_id_cursor(&self) -> PacketId;
    /// Sets the identifier the next allocation starts searching from.
    fn set_packet_id_cursor(&mut self, id: PacketId);

    /// Records an outbound flow under its packet identifier, replacing any previous one.
    fn insert_outbound(&mut self, id: PacketId, flow: OutboundFlow);
    /// Returns a copy of the outbound flow using `id`.
    fn outbound(&self, id: PacketId) -> Option<OutboundFlow>;
    /// Returns `true` when an outbound flow uses `id`.
    fn contains_outbound(&self, id: PacketId) -> bool;
    /// Returns the packet identifiers in use by outbound flows, in the order the flows
    /// were first inserted, which is the order their packets were first sent. Resending
    /// in this order keeps messages in order after the identifiers wrap [MQTT-4.6.0-1].
    fn outbound_ids(&self) -> Vec<PacketId>;
    /// Removes and returns the outbound flow using `id`.
    fn remove_outbound(&mut self, id: PacketId) -> Option<OutboundFlow>;
    /// Returns the number of packet identifiers in use by outbound flows.
    fn outbound_len(&self) -> usize;
    /// Returns the number of outbound QoS 1 and 2 PUBLISH flows, which the broker's
    /// Receive Maximum limits. The session asks before every QoS 1 or 2 publish it
    /// sends, so an implementation keeps a count rather than walking the flows.
    fn outbound_publish_len(&self) -> usize;

    /// Records an inbound QoS 2 packet identifier awaiting PUBREL; returns `false` when
    /// it was recorded already.
    fn insert_inbound(&mut self, id: PacketId) -> bool;
    /// Forgets an inbound QoS 2 packet identifier; returns `false` when it was unknown.
    fn remove_inbound(&mut self, id: PacketId) -> bool;
    /// Returns `true` when an inbound QoS 2 packet identifier awaits PUBREL.
    fn contains_inbound(&self, id: PacketId) -> bool;
    /// Forgets every inbound QoS 2 packet identifier, when the broker starts a new session.
    fn clear_inbound(&mut self);
    /// Returns the number of inbound QoS 2 identifiers awaiting PUBREL.
    fn inbound_len(&self) -> usize;

    /// Removes every queued request and every outbound flow, in that order, so that their
    /// callers can be answered when the session ends for good.
    fn take_all_requests(&mut self) -> (Vec<QueuedRequest>, Vec<OutboundFlow>);
}
