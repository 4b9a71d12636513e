//! The sans-IO MQTT session: the handshake, packet identifiers, QoS 1 and 2 flows in
//! both directions, flow control, topic aliases and keep-alive deadlines.
//!
//! [`Session`] never touches a socket, a timer, a clock, tokio or actix. Time arrives as
//! `now: Instant`; packets arrive already decoded. Work leaves through queues:
//!
//! 1. Feed one input:
//!    - [`Session::handle_transport_connected`] once the byte stream is open;
//!    - [`Session::handle_packet`] for each decoded packet;
//!    - [`Session::handle_decode_error`] when the decoder rejects the stream;
//!    - [`Session::handle_timeout`] when the deadline from [`Session::poll_timeout`] passes;
//!    - [`Session::handle_requests_queued`] after pushing requests into the store;
//!    - [`Session::handle_delivered`] once an inbound message reached the application;
//!    - [`Session::handle_disconnect`] when the application wants to leave.
//! 2. After every input, drain [`Session::poll_transmit`] (packets to write, in order),
//!    [`Session::poll_event`] (what the application must learn) and read
//!    [`Session::poll_timeout`] again.
//!
//! State that must survive the connection lives in the [`Store`] given to
//! [`Session::new`], which is updated as each packet is sent or received.

mod config;
mod error;
mod flows;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{
    BoxedProperties, ConnAck, DecodeError, Disconnect, DisconnectReason, Packet, PacketId,
    PacketType, Properties, PubAckReason, QoS, SubAckReason, TopicName, UnsubAckReason,
};
use crate::id_hash::IdMap;
use crate::store::{OutboundFlow, RequestToken, Store};

pub use config::{EffectiveLimits, SessionConfig};
pub use error::{CloseReason, ProtocolViolation, RejectReason, RequestError};

/// A packet to write, in order, with the caller to tell once it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The packet.
    pub packet: Packet,
    /// For a QoS 0 PUBLISH, the caller whose request completes once the packet is written.
    pub written: Option<RequestToken>,
}

/// A message received from the broker, with its topic alias resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// Topic the message was published to.
    pub topic: TopicName,
    /// Application payload.
    pub payload: bytes::Bytes,
    /// QoS the broker delivered the message with.
    pub qos: QoS,
    /// Whether this is a retained message.
    pub retain: bool,
    /// Whether the broker marked this as a possible redelivery.
    pub dup: bool,
    /// PUBLISH properties (v5), with the topic alias removed.
    pub properties: BoxedProperties,
}

/// Acknowledgement owed for an inbound QoS 1 or 2 message; hand it back through
/// [`Session::handle_delivered`] once the message reached the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundAck {
    packet_id: PacketId,
    qos: QoS,
}

impl InboundAck {
    /// Returns `true` for the acknowledgement of a QoS 2 message (PUBREC).
    pub(crate) fn is_exactly_once(self) -> bool {
        self.qos == QoS::ExactlyOnce
    }
}

/// Result of a completed publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    /// PUBACK (QoS 1) or PUBREC (QoS 2) reason code; `None` for QoS 0.
    pub reason: Option<PubAckReason>,
    /// Reason string of that acknowledgement (v5), if any.
    pub reason_string: Option<String>,
    /// Properties of the acknowledgement that completed the flow (v5).
    pub properties: BoxedProperties,
}

/// Result of a completed subscribe: one reason code per filter, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// SUBACK reason codes, one per filter.
    pub reasons: Vec<SubAckReason>,
    /// SUBACK properties (v5).
    pub properties: BoxedProperties,
}

/// Result of a completed unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeOutcome {
    /// UNSUBACK reason codes, one per filter (v5); empty for 3.1.1, which has none.
    pub reasons: Vec<UnsubAckReason>,
    /// UNSUBACK properties (v5).
    pub properties: BoxedProperties,
}

/// Outcome of a request, by request kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A publish completed.
    Publish(PublishOutcome),
    /// A subscribe completed.
    Subscribe(SubscribeOutcome),
    /// An unsubscribe completed.
    Unsubscribe(UnsubscribeOutcome),
}

/// Something the application must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The broker accepted the connection.
    Connected {
        /// Whether the broker resumed a stored session.
        session_present: bool,
        /// CONNACK properties (v5).
        properties: BoxedProperties,
    },
    /// A message arrived. When `ack` is set, pass it to [`Session::handle_delivered`]
    /// after handing the message to the application; only then is it acknowledged.
    Message {
        /// The message.
        message: InboundMessage,
        /// Acknowledgement owed once the message is delivered (QoS 1 and 2).
        ack: Option<InboundAck>,
    },
    /// A request left the queue for good: acknowledged, rejected, or refused before
    /// sending. QoS 0 publishes complete through [`Transmit::written`] instead.
    Completed {
        /// The caller that queued the request.
        token: RequestToken,
        /// What happened.
        outcome: Result<Outcome, RequestError>,
    },
    /// The session ended; it accepts no more input. Requests still in the store were not
    /// completed and stay there.
    Closed(CloseReason),
}

/// Broker limits from CONNACK, with the protocol defaults for absent properties.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::struct_excessive_bools)] // Each flag is one CONNACK property.
struct BrokerLimits {
    receive_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
    maximum_packet_size: Option<u32>,
    topic_alias_maximum: u16,
    wildcard_subscriptions: bool,
    shared_subscriptions: bool,
    subscription_identifiers: bool,
}

impl BrokerLimits {
    fn from_connack(properties: &Properties) -> Self {
        Self {
            receive_maximum: properties
                .receive_maximum
                .map_or(u16::MAX, std::num::NonZero::get),
            maximum_qos: properties.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: properties.retain_available.unwrap_or(true),
            maximum_packet_size: properties.maximum_packet_size.map(std::num::NonZero::get),
            topic_alias_maximum: properties.topic_alias_maximum.unwrap_or(0),
            wildcard_subscriptions: properties.wildcard_subscription_available.unwrap_or(true),
            shared_subscriptions: properties.shared_subscription_available.unwrap_or(true),
            subscription_identifiers: properties.subscription_identifier_available.unwrap_or(true),
        }
    }
}

/// State of the keep-alive exchange.
#[derive(Debug, Clone, Copy)]
enum Ping {
    /// No PINGREQ outstanding; one is due when nothing was sent for the interval.
    Idle,
    /// PINGREQ sent; the connection is dead if no PINGRESP arrives by `deadline`.
    AwaitingPingResp { deadline: Instant },
}

/// An inbound message handed out for delivery and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Delivering {
    qos: QoS,
    /// `true` once the message waits in a full mailbox and its QoS 2 identifier is
    /// recorded in the store as delivered.
    handed_over: bool,
}

/// Per-connection state after CONNACK.
#[derive(Debug)]
struct Connection {
    limits: BrokerLimits,
    /// Effective keep-alive: the broker's Server Keep Alive if given, else ours.
    keep_alive: Option<Duration>,
    ping: Ping,
    /// Topic aliases the broker defined on this connection.
    aliases: HashMap<u16, TopicName>,
    /// Inbound QoS 1 and 2 messages handed out for delivery and not yet acknowledged.
    delivering: IdMap<PacketId, Delivering>,
    /// Entries of `delivering` that are handed over, whose QoS 2 identifier the store
    /// records too. `inflight_in` counts each of them once.
    handed_over: usize,
    /// Whether the request at the head of the queue waits for room in the in-flight
    /// window or for a free packet identifier. Only a completed outbound flow can
    /// change that, so requests queued meanwhile do not try the queue again.
    head_blocked: bool,
    /// Publishes of an earlier connection not sent again yet, because this connection's
    /// in-flight window has no room for them, in the order they were first sent.
    resend_waiting: VecDeque<PacketId>,
}

/// The session's state, named for what it waits on.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One value per session; boxing buys nothing.
enum State {
    /// The byte stream is being opened; CONNECT is not sent yet.
    AwaitingTransport { deadline: Instant },
    /// CONNECT is sent.
    AwaitingConnAck { deadline: Instant },
    /// The broker accepted the connection.
    Connected(Connection),
    /// The application asked to disconnect; outbound flows may still complete until
    /// `deadline`, then DISCONNECT is sent.
    AwaitingInflightAcks {
        connection: Connection,
        disconnect: Disconnect,
        deadline: Instant,
    },
    /// The session ended.
    Closed,
}

/// One MQTT session over one connection, as a pure state machine; see the module docs
/// for the calling order.
#[derive(Debug)]
pub struct Session<S> {
    config: SessionConfig,
    /// The limits CONNECT announces, computed once from `config`.
    limits: EffectiveLimits,
    store: S,
    state: State,
    /// When the last packet other than PUBACK, PUBREC or PUBCOMP was handed out for
    /// writing, for keep-alive. Those three acknowledge the broker's messages, so a
    /// broker that keeps publishing but reads nothing would otherwise keep PINGREQ
    /// from ever being sent and the dead connection from being detected.
    last_sent: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent>,
    /// Inbound QoS 2 identifiers whose message an earlier connection still waits to put
    /// into a full mailbox. On a resumed session they start as being delivered.
    delivery_pending: Vec<PacketId>,
}

impl<S: Store> Session<S> {
    /// Creates a session that waits for its byte stream; the connect timeout runs from
    /// `now`.
    pub fn new(config: SessionConfig, store: S, now: Instant) -> Self {
        let deadline = deadline_after(now, config.connect_timeout);
        Self {
            limits: config.effective_limits(),
            config,
            store,
            state: State::AwaitingTransport { deadline },
            last_sent: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            delivery_pending: Vec::new(),
        }
    }

    /// Records that the inbound QoS 2 message of `ack`, from an earlier connection,
    /// still waits to be delivered. On a resumed session a copy the broker sends again
    /// then waits for [`Session::handle_delivered`] before it gets PUBREC, instead of
    /// getting it at once. Call before CONNACK arrives; other QoS levels are ignored.
    pub fn handle_delivery_pending(&mut self, ack: InboundAck) {
        let packet_id = ack.packet_id;
        if ack.is_exactly_once()
            && self.store.contains_inbound(packet_id)
            && !self.delivery_pending.contains(&packet_id)
        {
            self.delivery_pending.push(packet_id);
        }
    }

    /// Returns the configuration the session was created with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Returns the name of the current state, for logs.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitingTransport { .. } => "awaiting_transport",
            State::AwaitingConnAck { .. } => "awaiting_connack",
            State::Connected(_) => "connected",
            State::AwaitingInflightAcks { .. } => "awaiting_inflight_acks",
            State::Closed => "closed",
        }
    }

    /// Returns `true` once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Returns the number of inbound QoS 1 and 2 messages not yet fully acknowledged.
    pub fn inflight_in(&self) -> usize {
        let delivering = self
            .connection()
            .map_or(0, |c| c.delivering.len().saturating_sub(c.handed_over));
        delivering + self.store.inbound_len()
    }

    /// Returns the next packet to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Returns the next event for the application.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Returns when [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingTransport { deadline } | State::AwaitingConnAck { deadline } => {
                Some(*deadline)
            }
            State::Connected(connection) => self.keep_alive_deadline(connection),
            State::AwaitingInflightAcks {
                connection,
                deadline,
                ..
            } => Some(
                self.keep_alive_deadline(connection)
                    .map_or(*deadline, |keep_alive| keep_alive.min(*deadline)),
            ),
            State::Closed => None,
        }
    }

    /// Sends CONNECT once the byte stream to the broker is open.
    pub fn handle_transport_connected(&mut self, now: Instant) {
        let State::AwaitingTransport { deadline } = self.state else {
            return;
        };
        let connect = self.config.connect_packet();
        self.transmit(Packet::Connect(Box::new(connect)), now);
        self.state = State::AwaitingConnAck { deadline };
        tracing::debug!(client_id = %self.config.client_id, "connect sent, awaiting connack");
    }

    /// Processes one packet from the broker.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if matches!(self.state, State::AwaitingTransport { .. } | State::Closed) {
            return;
        }
        if let Err(violation) = self.check_inbound_size(&packet) {
            return self.violate(violation, now);
        }
        match &self.state {
            State::AwaitingTransport { .. } | State::Closed => {}
            State::AwaitingConnAck { .. } => match packet {
                Packet::ConnAck(connack) => self.on_connack(connack, now),
                other => {
                    let violation = ProtocolViolation::PacketBeforeConnAck(other.packet_type());
                    self.violate(violation, now);
                }
            },
            State::Connected(_) | State::AwaitingInflightAcks { .. } => {
                self.on_connected_packet(packet, now);
            }
        }
    }

    /// Ends the session because the decoder rejected the bytes from the broker.
    pub fn handle_decode_error(&mut self, error: DecodeError, now: Instant) {
        if !matches!(self.state, State::AwaitingTransport { .. } | State::Closed) {
            self.violate(ProtocolViolation::Decode(error), now);
        }
    }

    /// Acts on deadlines that have passed: connect timeout, keep-alive, and the end of
    /// the wait for in-flight acknowledgements before DISCONNECT.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::AwaitingTransport { deadline } | State::AwaitingConnAck { deadline } => {
                if now >= *deadline {
                    self.close(CloseReason::ConnectTimeout);
                }
            }
            State::Connected(_) => self.check_keep_alive(now),
            State::AwaitingInflightAcks { deadline, .. } => {
                if now >= *deadline {
                    self.send_disconnect_and_close(now);
                } else {
                    self.check_keep_alive(now);
                }
            }
            State::Closed => {}
        }
    }

    /// Sends as many queued requests as the flow-control window and the free packet
    /// identifiers allow; requests that cannot be sent stay queued in order.
    pub fn handle_requests_queued(&mut self, now: Instant) {
        self.drain_queue(now);
    }

    /// Records that an inbound QoS 2 message is in every recipient's mailbox before its
    /// PUBREC is sent. A copy the broker sends again, also after a reconnect, then gets
    /// PUBREC and is not delivered twice. Other QoS levels are ignored.
    pub fn handle_handed_over(&mut self, ack: InboundAck) {
        if ack.qos != QoS::ExactlyOnce {
            return;
        }
        self.store.insert_inbound(ack.packet_id);
        if let Some(connection) = self.connection_mut() {
            if let Some(entry) = connection.delivering.get_mut(&ack.packet_id) {
                if !entry.handed_over {
                    entry.handed_over = true;
                    connection.handed_over += 1;
                }
            }
        }
    }

    /// Acknowledges an inbound message now that it reached the application.
    pub fn handle_delivered(&mut self, ack: InboundAck, now: Instant) {
        self.delivery_pending.retain(|&id| id != ack.packet_id);
        let Some(connection) = self.connection_mut() else {
            // The connection closed after the message arrived, for example on a
            // DISCONNECT read with it. The broker sends the message again on a resumed
            // session, and a QoS 2 copy must then get PUBREC, not a second delivery.
            self.handle_handed_over(ack);
            return;
        };
        // A message this connection did not hand out owes it nothing: one an earlier
        // connection left in a mailbox after the broker started a new session.
        let Some(entry) = connection.delivering.remove(&ack.packet_id) else {
            return;
        };
        if entry.handed_over {
            connection.handed_over = connection.handed_over.saturating_sub(1);
        }
        self.send_inbound_ack(ack, now);
    }

    /// Starts a disconnect requested by the application. Before CONNACK the session
    /// closes at once. After CONNACK it sends no new requests and waits for outbound flows
    /// to complete, at most the disconnect timeout, then sends `disconnect` and closes.
    ///
    /// A `disconnect` that fails [`SessionConfig::check_disconnect`] is corrected before
    /// it is sent, because the caller has no way to get an error from here: a
    /// server-only reason code becomes Unspecified error (0x80), which still makes the
    /// broker publish the will, and a forbidden Session Expiry Interval is removed.
    /// Callers should run that check first and reject the request instead.
    pub fn handle_disconnect(&mut self, disconnect: Disconnect, now: Instant) {
        let disconnect = self.correct_disconnect(disconnect);
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitingTransport { .. } | State::AwaitingConnAck { .. } => {
                self.close(CloseReason::Requested);
            }
            State::Connected(connection) => {
                let deadline = deadline_after(now, self.config.disconnect_timeout);
                tracing::debug!(
                    client_id = %self.config.client_id,
                    inflight = self.store.outbound_len(),
                    "disconnect requested, awaiting in-flight acks"
                );
                self.state = State::AwaitingInflightAcks {
                    connection,
                    disconnect,
                    deadline,
                };
                self.finish_disconnect_when_idle(now);
            }
            other => self.state = other,
        }
    }

    /// Returns `disconnect` changed as [`Session::handle_disconnect`] describes when it
    /// breaks a rule for a client's DISCONNECT.
    fn correct_disconnect(&self, mut disconnect: Disconnect) -> Disconnect {
        let Err(error) = self.config.check_disconnect(&disconnect) else {
            return disconnect;
        };
        tracing::warn!(
            client_id = %self.config.client_id,
            %error,
            "invalid disconnect corrected before sending"
        );
        if self.limits.session_expiry == 0 {
            disconnect.properties.session_expiry_interval = None;
        }
        if self.config.check_disconnect(&disconnect).is_err() {
            disconnect.reason = DisconnectReason::UnspecifiedError;
        }
        disconnect
    }

    /// Rejects a packet larger than the Maximum Packet Size this client announced
    /// (MQTT 5.0 section 3.1.2.11.4). The decoder checks the size on the wire against
    /// the limit the client options give it, which can be larger than the one announced.
    ///
    /// NOTE: the session sees decoded packets, so it measures the packet encoded
    /// again. That equals the wire size of a PUBLISH. An acknowledgement that the broker
    /// sent in a longer form than the shortest can exceed the limit by a few bytes
    /// unnoticed.
    fn check_inbound_size(&self, packet: &Packet) -> Result<(), ProtocolViolation> {
        let Some(maximum) = self.limits.maximum_packet_size else {
            return Ok(());
        };
        // A packet the codec cannot measure was still decoded within the decoder's own
        // limit, so there is nothing to compare.
        let Ok(size) = crate::codec::encoded_len(packet, self.config.protocol) else {
            return Ok(());
        };
        if size > maximum.get() as usize {
            return Err(ProtocolViolation::PacketTooLarge {
                size,
                maximum: maximum.get(),
            });
        }
        Ok(())
    }

    fn on_connack(&mut self, connack: ConnAck, now: Instant) {
        if !connack.reason.is_success() {
            self.close(CloseReason::ConnectRefused {
                reason: connack.reason,
                reason_string: reason_string(&connack.properties),
                server_reference: server_reference(&connack.properties),
            });
            return;
        }
        if connack.session_present && self.config.clean_start {
            self.violate(ProtocolViolation::SessionPresentOnCleanStart, now);
            return;
        }
        if connack.session_present && !self.config.has_session_state {
            self.violate(ProtocolViolation::SessionPresentWithoutSessionState, now);
            return;
        }
        if connack.properties.assigned_client_identifier.is_some()
            && !self.config.client_id.is_empty()
        {
            self.violate(ProtocolViolation::UnrequestedClientIdentifier, now);
            return;
        }

        let keep_alive = match connack.properties.server_keep_alive {
            Some(seconds) => Duration::from_secs(u64::from(seconds)),
            None => self.config.keep_alive,
        };
        self.state = State::Connected(Connection {
            limits: BrokerLimits::from_connack(&connack.properties),
            keep_alive: Some(keep_alive).filter(|interval| !interval.is_zero()),
            ping: Ping::Idle,
            aliases: HashMap::new(),
            delivering: IdMap::default(),
            handed_over: 0,
            head_blocked: false,
            resend_waiting: VecDeque::new(),
        });
        let pending = std::mem::take(&mut self.delivery_pending);
        if connack.session_present {
            if let Some(connection) = self.connection_mut() {
                for packet_id in pending {
                    let entry = Delivering {
                        qos: QoS::ExactlyOnce,
                        handed_over: true,
                    };
                    connection.delivering.insert(packet_id, entry);
                    connection.handed_over += 1;
                }
            }
        }
        tracing::debug!(
            client_id = %self.config.client_id,
            session_present = connack.session_present,
            "connack accepted"
        );
        self.events.push_back(SessionEvent::Connected {
            session_present: connack.session_present,
            properties: connack.properties,
        });

        self.resume_flows(connack.session_present, now);
        self.drain_queue(now);
    }

    fn on_connected_packet(&mut self, packet: Packet, now: Instant) {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now),
            Packet::PubAck(ack) => self.on_puback(ack, now),
            Packet::PubRec(rec) => self.on_pubrec(rec, now),
            Packet::PubRel(rel) => self.on_pubrel(rel.packet_id, now),
            Packet::PubComp(comp) => self.on_pubcomp(comp, now),
            Packet::SubAck(ack) => self.on_suback(ack, now),
            Packet::UnsubAck(ack) => self.on_unsuback(ack, now),
            Packet::PingResp => self.on_pingresp(),
            Packet::Disconnect(disconnect) => self.close(CloseReason::DisconnectedByBroker {
                reason: disconnect.reason,
                reason_string: reason_string(&disconnect.properties),
                server_reference: server_reference(&disconnect.properties),
            }),
            Packet::ConnAck(_) => self.violate(ProtocolViolation::SecondConnAck, now),
            // Enhanced authentication is not offered, so AUTH is never expected.
            other @ (Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => {
                let violation = ProtocolViolation::UnexpectedPacket(other.packet_type());
                self.violate(violation, now);
            }
        }
    }

    fn on_pingresp(&mut self) {
        // An unsolicited PINGRESP is harmless, so it is accepted as proof of life too.
        if let Some(connection) = self.connection_mut() {
            connection.ping = Ping::Idle;
        }
    }

    fn check_keep_alive(&mut self, now: Instant) {
        let Some(connection) = self.connection() else {
            return;
        };
        let Some(interval) = connection.keep_alive else {
            return;
        };
        match connection.ping {
            Ping::AwaitingPingResp { deadline } if now >= deadline => {
                self.close(CloseReason::KeepAliveTimeout);
            }
            Ping::Idle if now >= self.last_sent + interval => {
                self.transmit(Packet::PingReq, now);
                // NOTE: the PINGRESP deadline is one keep-alive interval. The
                // specification only requires "a reasonable amount of time".
                if let Some(connection) = self.connection_mut() {
                    connection.ping = Ping::AwaitingPingResp {
                        deadline: deadline_after(now, interval),
                    };
                }
            }
            _ => {}
        }
    }

    fn keep_alive_deadline(&self, connection: &Connection) -> Option<Instant> {
        let interval = connection.keep_alive?;
        Some(match connection.ping {
            Ping::Idle => self.last_sent + interval,
            Ping::AwaitingPingResp { deadline } => deadline,
        })
    }

    /// Sends DISCONNECT with the violation's reason code where the version has one, then
    /// closes.
    fn violate(&mut self, violation: ProtocolViolation, now: Instant) {
        tracing::warn!(
            client_id = %self.config.client_id,
            error = %violation,
            reason_code = violation.reason_code().code(),
            "protocol violation by broker"
        );
        if self.config.protocol.is_v5() {
            let disconnect = Disconnect {
                reason: violation.reason_code(),
                properties: BoxedProperties::default(),
            };
            self.transmit(Packet::Disconnect(disconnect), now);
        }
        self.close(CloseReason::ProtocolViolation(violation));
    }

    fn finish_disconnect_when_idle(&mut self, now: Instant) {
        let State::AwaitingInflightAcks { .. } = self.state else {
            return;
        };
        // A release of an unknown identifier has no caller to wait for, and a resumed
        // session sends its PUBREL again.
        let idle = self.store.outbound_len() == 0
            || self
                .store
                .outbound_ids()
                .into_iter()
                .all(|id| matches!(self.store.outbound(id), Some(OutboundFlow::Release)));
        if idle {
            self.send_disconnect_and_close(now);
        }
    }

    fn send_disconnect_and_close(&mut self, now: Instant) {
        let State::AwaitingInflightAcks { disconnect, .. } =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        self.transmit(Packet::Disconnect(disconnect), now);
        self.close(CloseReason::Requested);
    }

    fn close(&mut self, reason: CloseReason) {
        tracing::debug!(
            client_id = %self.config.client_id,
            from = self.state_name(),
            reason = %reason,
            "session closed"
        );
        self.state = State::Closed;
        self.events.push_back(SessionEvent::Closed(reason));
    }

    fn transmit(&mut self, packet: Packet, now: Instant) {
        self.transmit_with(packet, None, now);
    }

    fn transmit_with(&mut self, packet: Packet, written: Option<RequestToken>, now: Instant) {
        tracing::trace!(
            client_id = %self.config.client_id,
            packet_type = ?packet.packet_type(),
            "packet queued"
        );
        if !matches!(
            packet,
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
        ) {
            self.last_sent = now;
        }
        self.transmits.push_back(Transmit { packet, written });
    }

    fn connection(&self) -> Option<&Connection> {
        match &self.state {
            State::Connected(connection) | State::AwaitingInflightAcks { connection, .. } => {
                Some(connection)
            }
            _ => None,
        }
    }

    fn connection_mut(&mut self) -> Option<&mut Connection> {
        match &mut self.state {
            State::Connected(connection) | State::AwaitingInflightAcks { connection, .. } => {
                Some(connection)
            }
            _ => None,
        }
    }
}

/// Returns `now + timeout`, or `now` when that instant cannot be represented; the options
/// builder rejects timeouts that long, so the fallback only guards against a panic.
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or(now)
}

/// Returns the Reason String property as an owned string.
fn reason_string(properties: &Properties) -> Option<String> {
    properties.reason_string.as_ref().map(ToString::to_string)
}

/// Returns the Server Reference property (v5) as an owned string.
fn server_reference(properties: &Properties) -> Option<String> {
    properties
        .server_reference
        .as_ref()
        .map(ToString::to_string)
}

/// Returns the packet type named in a violation about an acknowledgement.
fn unknown_id(packet_type: PacketType, packet_id: PacketId) -> ProtocolViolation {
    ProtocolViolation::UnknownPacketId {
        packet_type,
        packet_id,
    }
}

/// Returns the DISCONNECT reason for a normal, application-requested close.
#[must_use]
pub fn normal_disconnect() -> Disconnect {
    Disconnect {
        reason: DisconnectReason::NormalDisconnection,
        properties: BoxedProperties::default(),
    }
}

#[cfg(test)]
mod tests;
