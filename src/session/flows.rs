//! Packet flows once connected: sending queued requests, the acknowledgements for them,
//! and inbound messages with the acknowledgements this client owes.

use std::time::{Duration, Instant};

use crate::codec::{
    self, BoxedProperties, Delivery, Packet, PacketId, PacketType, Properties, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRel, Publish, QoS, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::store::{AwaitedAck, OutboundFlow, OutgoingPublish, QueuedRequest, Request, Store};

use super::{
    reason_string, unknown_id, BrokerLimits, InboundAck, InboundMessage, Outcome,
    ProtocolViolation, PublishOutcome, RejectReason, RequestError, Session, SessionEvent, State,
    SubscribeOutcome, UnsubscribeOutcome,
};

/// Status of the packet identifier of an inbound QoS 1 or 2 PUBLISH.
enum InboundId {
    /// No unacknowledged message of the broker uses the identifier.
    Unused,
    /// A permitted redelivery of a message still being delivered; it is dropped.
    Redelivery,
    /// A reuse of an identifier still in use, which closes the connection.
    InUse,
}

/// Whether the request at the head of the queue was handled or must wait.
#[allow(clippy::large_enum_variant)] // Lives on the stack for one call; boxing would allocate per request.
enum Dispatch {
    /// Sent, or completed with an error; the next request may go.
    Done,
    /// No room in the window or no free packet identifier; the request stays queued.
    Blocked(QueuedRequest),
}

impl<S: Store> Session<S> {
    /// Sends queued requests in order until one must wait.
    pub(super) fn drain_queue(&mut self, now: Instant) {
        self.resend_waiting_flows(now);
        let State::Connected(connection) = &self.state else {
            return;
        };
        if connection.head_blocked || !connection.resend_waiting.is_empty() {
            return;
        }
        let limits = connection.limits;
        while let Some(queued) = self.store.pop_request() {
            let dispatched = self.dispatch(queued, limits, now);
            if let Dispatch::Blocked(queued) = dispatched {
                self.store.push_front_request(queued);
                if let Some(connection) = self.connection_mut() {
                    connection.head_blocked = true;
                }
                break;
            }
        }
    }

    /// Returns the number of QoS 1 and 2 publishes that may be in flight on this
    /// connection: the smaller of our limit and the broker's Receive Maximum.
    fn window(&self) -> usize {
        let receive_maximum = self
            .connection()
            .map_or(u16::MAX, |connection| connection.limits.receive_maximum);
        usize::from(self.config.max_inflight.get().min(receive_maximum))
    }

    /// Sends again the publishes of an earlier connection that wait for room in this
    /// connection's window, as far as the window allows now.
    fn resend_waiting_flows(&mut self, now: Instant) {
        let window = self.window();
        loop {
            let Some(connection) = self.connection() else {
                return;
            };
            let waiting = connection.resend_waiting.len();
            if waiting == 0 || self.store.outbound_publish_len().saturating_sub(waiting) >= window {
                return;
            }
            let Some(id) = self
                .connection_mut()
                .and_then(|connection| connection.resend_waiting.pop_front())
            else {
                return;
            };
            if let Some(OutboundFlow::Publish {
                packet,
                awaiting: AwaitedAck::PubAck | AwaitedAck::PubRec,
                ..
            }) = self.store.outbound(id)
            {
                self.resend_publish(id, packet, now);
            }
        }
    }

    /// Sends the PUBLISH of flow `id` again with DUP set, or fails the flow when this
    /// connection's limits forbid it. A topic alias belongs to the connection that
    /// defined it, so the alias is left out, and the packet carries its topic anyway.
    fn resend_publish(&mut self, id: PacketId, packet: Publish, now: Instant) {
        let mut resent = Publish {
            dup: true,
            ..packet
        };
        if resent.properties.topic_alias.is_some() {
            resent.properties.topic_alias = None;
        }
        let Some(limits) = self.connection().map(|connection| connection.limits) else {
            return;
        };
        let qos = resent.delivery.qos();
        let retain = resent.retain;
        let checked = check_publish_fields(qos, retain, &resent.properties, limits);
        let resent = Packet::Publish(resent);
        match checked.and_then(|()| self.check_size(&resent, limits)) {
            Ok(()) => self.transmit(resent, now),
            Err(error) => {
                if let Some(token) = self.store.remove_outbound(id).and_then(|f| f.token()) {
                    self.complete(token, Err(error));
                }
            }
        }
    }

    /// Sends one request, completes it with an error, or hands it back when it must wait.
    fn dispatch(
        &mut self,
        mut queued: QueuedRequest,
        limits: BrokerLimits,
        now: Instant,
    ) -> Dispatch {
        let token = queued.token;
        if !limits.subscription_identifiers {
            remove_automatic_identifier(&mut queued.request);
        }
        if let Err(error) = check_request(&queued.request, limits) {
            self.complete(token, Err(error));
            return Dispatch::Done;
        }
        let Some(packet_id) = self.reserve_packet_id(&queued.request) else {
            return Dispatch::Blocked(queued);
        };
        if let Err(error) = count_down_expiry(&mut queued, now) {
            self.complete(token, Err(error));
            return Dispatch::Done;
        }

        let (packet, flow) = build_packet(queued, packet_id);
        if let Err(error) = self.check_size(&packet, limits) {
            self.complete(token, Err(error));
            return Dispatch::Done;
        }
        match flow {
            Some(flow) => {
                self.store.insert_outbound(packet_id, flow);
                self.store.set_packet_id_cursor(packet_id.next_wrapping());
                self.transmit(packet, now);
            }
            None => self.transmit_with(packet, Some(token), now),
        }
        Dispatch::Done
    }

    /// Returns the packet identifier for `request`, or `None` when it must wait for room
    /// in the in-flight window or for a free identifier. QoS 0 publishes need neither and
    /// get a placeholder the packet does not carry.
    fn reserve_packet_id(&self, request: &Request) -> Option<PacketId> {
        let qos = match request {
            Request::Publish(publish) => publish.qos,
            Request::Subscribe { .. } | Request::Unsubscribe { .. } => {
                return self.allocate_packet_id();
            }
        };
        if qos == QoS::AtMostOnce {
            return Some(PacketId::MIN);
        }
        if self.store.outbound_publish_len() >= self.window() {
            return None;
        }
        self.allocate_packet_id()
    }

    /// Finds a packet identifier no outbound flow uses, starting at the cursor; PUBLISH,
    /// SUBSCRIBE and UNSUBSCRIBE share one identifier space [MQTT-2.2.1-3].
    fn allocate_packet_id(&self) -> Option<PacketId> {
        let mut candidate = self.store.packet_id_cursor();
        for _ in 0..u16::MAX {
            if !self.store.contains_outbound(candidate) {
                return Some(candidate);
            }
            candidate = candidate.next_wrapping();
        }
        None
    }

    /// Refuses a packet the codec cannot encode for this version, or one larger than
    /// the broker's Maximum Packet Size (MQTT 5.0 section 3.2.2.3.6).
    fn check_size(&self, packet: &Packet, limits: BrokerLimits) -> Result<(), RequestError> {
        let size = codec::encoded_len(packet, self.config.protocol)
            .map_err(|error| RequestError::Invalid(error.to_string()))?;
        match limits.maximum_packet_size {
            Some(max) if size > max as usize => Err(RequestError::PacketTooLarge { size, max }),
            _ => Ok(()),
        }
    }

    /// Resends what the broker still expects after resuming a session: each unacknowledged
    /// PUBLISH with DUP set, and PUBREL for each QoS 2 flow past PUBREC
    /// [MQTT-4.4.0-1]. Without a resumed session the broker forgot the inbound QoS 2
    /// identifiers, so this client forgets them too.
    ///
    /// Outbound publishes of an earlier connection are sent again even when the broker
    /// started a new session, so that no accepted QoS 1 or 2 message is dropped. A new
    /// session has no QoS 2 flow to release, so a flow past PUBREC starts again with its
    /// PUBLISH [MQTT-3.2.2-5]. The message may then arrive twice, and its caller gets Ok
    /// only once the new flow completes.
    ///
    /// The broker's Receive Maximum on this connection may be lower than on the last
    /// one. Publishes beyond the window wait in `resend_waiting` and go as acknowledgements
    /// free room, before any queued request.
    pub(super) fn resume_flows(&mut self, session_present: bool, now: Instant) {
        if !session_present {
            self.store.clear_inbound();
            self.restart_released_flows();
        }
        let window = self.window();
        let ids = self.store.outbound_ids();
        // Flows past PUBREC stay in flight, so they take their place in the window first.
        let mut in_flight = ids
            .iter()
            .filter(|&&id| {
                matches!(
                    self.store.outbound(id),
                    Some(OutboundFlow::Publish {
                        awaiting: AwaitedAck::PubComp { .. },
                        ..
                    })
                )
            })
            .count();
        for id in ids {
            match self.store.outbound(id) {
                Some(OutboundFlow::Publish {
                    packet,
                    awaiting: AwaitedAck::PubAck | AwaitedAck::PubRec,
                    ..
                }) => {
                    if in_flight < window {
                        in_flight += 1;
                        self.resend_publish(id, packet, now);
                    } else if let Some(connection) = self.connection_mut() {
                        connection.resend_waiting.push_back(id);
                    }
                }
                Some(OutboundFlow::Publish {
                    awaiting: AwaitedAck::PubComp { .. },
                    ..
                }) => self.transmit(pubrel(id, PubCompReason::Success), now),
                Some(OutboundFlow::Release) => self.transmit(self.unknown_release(id), now),
                _ => {}
            }
        }
    }

    /// Sets every QoS 2 flow past PUBREC back to awaiting PUBREC, and drops every
    /// release of an unknown identifier, for a broker that started a new session and
    /// has no such flow to release.
    fn restart_released_flows(&mut self) {
        for id in self.store.outbound_ids() {
            match self.store.outbound(id) {
                Some(OutboundFlow::Publish {
                    token,
                    packet,
                    awaiting: AwaitedAck::PubComp { .. },
                }) => {
                    let flow = OutboundFlow::Publish {
                        token,
                        packet,
                        awaiting: AwaitedAck::PubRec,
                    };
                    self.store.insert_outbound(id, flow);
                }
                Some(OutboundFlow::Release) => {
                    self.store.remove_outbound(id);
                }
                _ => {}
            }
        }
    }

    pub(super) fn on_publish(&mut self, mut publish: Publish, now: Instant) {
        let delivery = publish.delivery;
        let dup = publish.dup;
        let topic = publish.topic.take();
        let message = match self.resolve_topic(topic, &publish) {
            Ok(topic) => inbound_message(topic, publish),
            Err(violation) => return self.violate(violation, now),
        };
        let (packet_id, qos) = match delivery {
            Delivery::AtMostOnce => {
                self.events
                    .push_back(SessionEvent::Message { message, ack: None });
                return;
            }
            Delivery::AtLeastOnce(id) => (id, QoS::AtLeastOnce),
            Delivery::ExactlyOnce(id) => (id, QoS::ExactlyOnce),
        };
        let ack = InboundAck { packet_id, qos };

        // A QoS 2 message already delivered is acknowledged again, not delivered again
        // (MQTT 5.0 section 4.3.3). One still being delivered is acknowledged once its
        // delivery ends.
        let delivering = self
            .connection()
            .is_some_and(|connection| connection.delivering.contains_key(&packet_id));
        if qos == QoS::ExactlyOnce && self.store.contains_inbound(packet_id) && !delivering {
            return self.send_inbound_ack(ack, now);
        }
        match self.inbound_id_use(packet_id, qos, dup) {
            InboundId::Unused => {}
            // The acknowledgement follows when the delivery of the first copy ends.
            InboundId::Redelivery => return,
            InboundId::InUse => {
                return self.violate(ProtocolViolation::PacketIdInUse(packet_id), now);
            }
        }

        // The broker must not send more unacknowledged messages than announced
        // [MQTT-3.3.4-9]; 3.1.1 has no such limit.
        let receive_maximum = self.limits.receive_maximum.get();
        if self.inflight_in() >= usize::from(receive_maximum) && self.config.protocol.is_v5() {
            let violation = ProtocolViolation::ReceiveMaximumExceeded(receive_maximum);
            return self.violate(violation, now);
        }
        if let Some(connection) = self.connection_mut() {
            let entry = super::Delivering {
                qos,
                handed_over: false,
            };
            connection.delivering.insert(packet_id, entry);
        }
        self.events.push_back(SessionEvent::Message {
            message,
            ack: Some(ack),
        });
    }

    /// Classifies the packet identifier of an inbound QoS 1 or 2 PUBLISH against the
    /// messages this client has not acknowledged yet. Only these repeats are accepted:
    /// a QoS 2 message being delivered, and under 3.1.1 a QoS 1 message being delivered
    /// and sent again with DUP set, because 3.1.1 does not forbid resending on the same
    /// connection (section 4.4). Any other reuse breaks [MQTT-2.2.1-4].
    fn inbound_id_use(&self, packet_id: PacketId, qos: QoS, dup: bool) -> InboundId {
        let delivering = self
            .connection()
            .and_then(|connection| connection.delivering.get(&packet_id))
            .map(|entry| entry.qos);
        match delivering {
            Some(QoS::ExactlyOnce) if qos == QoS::ExactlyOnce => InboundId::Redelivery,
            Some(QoS::AtLeastOnce)
                if qos == QoS::AtLeastOnce && dup && !self.config.protocol.is_v5() =>
            {
                InboundId::Redelivery
            }
            Some(_) => InboundId::InUse,
            // An identifier awaiting PUBREL is still in use by the broker's QoS 2 flow.
            None if self.store.contains_inbound(packet_id) => InboundId::InUse,
            None => InboundId::Unused,
        }
    }

    /// Returns the topic of an inbound PUBLISH, given its `topic` taken out of
    /// `publish`, defining or applying a topic alias (MQTT 5.0 section 3.3.2.3.4).
    fn resolve_topic(
        &mut self,
        topic: Option<codec::TopicName>,
        publish: &Publish,
    ) -> Result<codec::TopicName, ProtocolViolation> {
        let maximum = self.limits.topic_alias_maximum;
        let Some(alias) = publish
            .properties
            .topic_alias
            .map(std::num::NonZeroU16::get)
        else {
            return topic.ok_or(ProtocolViolation::MissingTopic);
        };
        if alias > maximum {
            return Err(ProtocolViolation::TopicAliasOutOfRange { alias, maximum });
        }
        let connection = self
            .connection_mut()
            .ok_or(ProtocolViolation::UnexpectedPacket(PacketType::Publish))?;
        match topic {
            Some(topic) => {
                connection.aliases.insert(alias, topic.clone());
                Ok(topic)
            }
            None => connection
                .aliases
                .get(&alias)
                .cloned()
                .ok_or(ProtocolViolation::UndefinedTopicAlias(alias)),
        }
    }

    pub(super) fn send_inbound_ack(&mut self, ack: InboundAck, now: Instant) {
        let packet = if ack.qos == QoS::ExactlyOnce {
            self.store.insert_inbound(ack.packet_id);
            Packet::PubRec(PubRec {
                packet_id: ack.packet_id,
                reason: PubAckReason::Success,
                properties: BoxedProperties::default(),
            })
        } else {
            Packet::PubAck(PubAck {
                packet_id: ack.packet_id,
                reason: PubAckReason::Success,
                properties: BoxedProperties::default(),
            })
        };
        self.transmit(packet, now);
    }

    /// Completes an inbound QoS 2 flow. PUBREL for an unknown identifier still gets
    /// PUBCOMP, with reason Packet Identifier Not Found in v5, because the broker may be
    /// repeating a PUBREL whose PUBCOMP was lost (MQTT 5.0 section 4.3.3).
    pub(super) fn on_pubrel(&mut self, packet_id: PacketId, now: Instant) {
        let reason = if self.store.remove_inbound(packet_id) {
            PubCompReason::Success
        } else {
            self.unknown_id_reason()
        };
        let packet = Packet::PubComp(PubComp {
            packet_id,
            reason,
            properties: BoxedProperties::default(),
        });
        self.transmit(packet, now);
    }

    pub(super) fn on_puback(&mut self, ack: PubAck, now: Instant) {
        match self.store.outbound(ack.packet_id) {
            Some(OutboundFlow::Publish {
                token,
                awaiting: AwaitedAck::PubAck,
                ..
            }) => {
                self.store.remove_outbound(ack.packet_id);
                let outcome = publish_outcome(ack.reason, ack.properties);
                self.complete(token, outcome);
                self.after_flow_completed(now);
            }
            Some(_) => self.violate(other_flow(PacketType::PubAck, ack.packet_id), now),
            None => self.ignore_unknown_ack(PacketType::PubAck, ack.packet_id),
        }
    }

    pub(super) fn on_pubrec(&mut self, rec: PubRec, now: Instant) {
        let id = rec.packet_id;
        match self.store.outbound(id) {
            Some(OutboundFlow::Publish {
                token,
                packet,
                awaiting: AwaitedAck::PubRec,
            }) => {
                if !rec.reason.is_success() {
                    // A failed PUBREC ends the flow; no PUBREL follows (MQTT 5.0 section 4.3.3).
                    self.store.remove_outbound(id);
                    self.complete(token, publish_outcome(rec.reason, rec.properties));
                    return self.after_flow_completed(now);
                }
                let awaiting = AwaitedAck::PubComp {
                    pubrec_reason: rec.reason,
                };
                self.store.insert_outbound(
                    id,
                    OutboundFlow::Publish {
                        token,
                        packet,
                        awaiting,
                    },
                );
                self.transmit(pubrel(id, PubCompReason::Success), now);
            }
            // A repeated PUBREC means our PUBREL was lost; send it again.
            Some(OutboundFlow::Publish {
                awaiting: AwaitedAck::PubComp { .. },
                ..
            }) => self.transmit(pubrel(id, PubCompReason::Success), now),
            // A repeated PUBREC for an identifier already released: release it again.
            Some(OutboundFlow::Release) => self.transmit(self.unknown_release(id), now),
            Some(_) => self.violate(other_flow(PacketType::PubRec, id), now),
            None => self.release_unknown(&rec, now),
        }
    }

    /// Sends PUBREL for a successful PUBREC whose identifier has no flow here, with
    /// reason Packet Identifier Not Found in v5. The broker keeps that identifier in
    /// use until a PUBREL arrives, so without one it stays taken while the broker's
    /// session lives. A failed PUBREC has already ended the flow (MQTT 5.0 section
    /// 4.3.3), so it gets no PUBREL.
    fn release_unknown(&mut self, rec: &PubRec, now: Instant) {
        tracing::warn!(
            client_id = %self.config.client_id,
            packet_id = rec.packet_id.get(),
            reason = ?rec.reason,
            "PUBREC for unknown packet id"
        );
        if !rec.reason.is_success() {
            return;
        }
        self.store
            .insert_outbound(rec.packet_id, OutboundFlow::Release);
        self.transmit(self.unknown_release(rec.packet_id), now);
    }

    /// Returns the PUBREL for an identifier this client had no flow for.
    fn unknown_release(&self, packet_id: PacketId) -> Packet {
        pubrel(packet_id, self.unknown_id_reason())
    }

    /// Returns the reason of a PUBREL or PUBCOMP for an identifier with no flow here:
    /// Packet Identifier Not Found in v5, and Success in 3.1.1, which has no reason codes.
    fn unknown_id_reason(&self) -> PubCompReason {
        if self.config.protocol.is_v5() {
            PubCompReason::PacketIdentifierNotFound
        } else {
            PubCompReason::Success
        }
    }

    pub(super) fn on_pubcomp(&mut self, comp: PubComp, now: Instant) {
        match self.store.outbound(comp.packet_id) {
            Some(OutboundFlow::Publish {
                token,
                awaiting: AwaitedAck::PubComp { pubrec_reason },
                ..
            }) => {
                self.store.remove_outbound(comp.packet_id);
                let outcome = PublishOutcome {
                    reason: Some(pubrec_reason),
                    reason_string: reason_string(&comp.properties),
                    properties: comp.properties,
                };
                self.complete(token, Ok(Outcome::Publish(outcome)));
                self.after_flow_completed(now);
            }
            Some(OutboundFlow::Release) => {
                self.store.remove_outbound(comp.packet_id);
                self.after_flow_completed(now);
            }
            Some(_) => self.violate(other_flow(PacketType::PubComp, comp.packet_id), now),
            None => self.ignore_unknown_ack(PacketType::PubComp, comp.packet_id),
        }
    }

    pub(super) fn on_suback(&mut self, ack: SubAck, now: Instant) {
        let id = ack.packet_id;
        let filter_count = match self.store.outbound(id) {
            Some(OutboundFlow::Subscribe { filter_count, .. }) => filter_count,
            Some(_) => return self.violate(other_flow(PacketType::SubAck, id), now),
            None => return self.violate(unknown_id(PacketType::SubAck, id), now),
        };
        if ack.reasons.len() != filter_count {
            return self.violate(
                count_mismatch(PacketType::SubAck, filter_count, ack.reasons.len()),
                now,
            );
        }
        let Some(flow) = self.store.remove_outbound(id) else {
            return;
        };
        let outcome = match ack.reasons.iter().find(|reason| !reason.is_success()) {
            Some(first) if ack.reasons.iter().all(|reason| !reason.is_success()) => {
                Err(RequestError::Rejected {
                    reason: RejectReason::Subscribe(*first),
                    reason_string: reason_string(&ack.properties),
                })
            }
            _ => Ok(Outcome::Subscribe(SubscribeOutcome {
                reasons: ack.reasons,
                properties: ack.properties,
            })),
        };
        if let Some(token) = flow.token() {
            self.complete(token, outcome);
        }
        self.after_flow_completed(now);
    }

    pub(super) fn on_unsuback(&mut self, ack: UnsubAck, now: Instant) {
        let id = ack.packet_id;
        let filter_count = match self.store.outbound(id) {
            Some(OutboundFlow::Unsubscribe { filter_count, .. }) => filter_count,
            Some(_) => return self.violate(other_flow(PacketType::UnsubAck, id), now),
            None => return self.violate(unknown_id(PacketType::UnsubAck, id), now),
        };
        // MQTT 3.1.1 UNSUBACK carries no reason codes.
        if self.config.protocol.is_v5() && ack.reasons.len() != filter_count {
            return self.violate(
                count_mismatch(PacketType::UnsubAck, filter_count, ack.reasons.len()),
                now,
            );
        }
        let Some(flow) = self.store.remove_outbound(id) else {
            return;
        };
        let all_failed = !ack.reasons.is_empty() && ack.reasons.iter().all(|r| !r.is_success());
        let outcome = match ack.reasons.first() {
            Some(first) if all_failed => Err(RequestError::Rejected {
                reason: RejectReason::Unsubscribe(*first),
                reason_string: reason_string(&ack.properties),
            }),
            _ => Ok(Outcome::Unsubscribe(UnsubscribeOutcome {
                reasons: ack.reasons,
                properties: ack.properties,
            })),
        };
        if let Some(token) = flow.token() {
            self.complete(token, outcome);
        }
        self.after_flow_completed(now);
    }

    /// Tolerates an acknowledgement for an identifier with no flow: after a resumed
    /// session the broker may repeat an acknowledgement this client already processed.
    fn ignore_unknown_ack(&self, packet_type: PacketType, packet_id: PacketId) {
        tracing::warn!(
            client_id = %self.config.client_id,
            ?packet_type,
            packet_id = packet_id.get(),
            "acknowledgement for unknown packet id ignored"
        );
    }

    fn after_flow_completed(&mut self, now: Instant) {
        // The completed flow freed a packet identifier and, for a publish, room in the
        // window, so the head of the queue may go now.
        if let Some(connection) = self.connection_mut() {
            connection.head_blocked = false;
        }
        self.drain_queue(now);
        self.finish_disconnect_when_idle(now);
    }

    fn complete(
        &mut self,
        token: crate::store::RequestToken,
        outcome: Result<Outcome, RequestError>,
    ) {
        self.events
            .push_back(SessionEvent::Completed { token, outcome });
    }
}

/// Builds the packet for a request and, for QoS 1 and 2 publishes, subscribes and
/// unsubscribes, the flow recorded under its identifier.
fn build_packet(queued: QueuedRequest, packet_id: PacketId) -> (Packet, Option<OutboundFlow>) {
    let token = queued.token;
    match queued.request {
        Request::Publish(publish) => {
            let (delivery, awaiting) = match publish.qos {
                QoS::AtMostOnce => (Delivery::AtMostOnce, None),
                QoS::AtLeastOnce => (Delivery::AtLeastOnce(packet_id), Some(AwaitedAck::PubAck)),
                QoS::ExactlyOnce => (Delivery::ExactlyOnce(packet_id), Some(AwaitedAck::PubRec)),
            };
            let packet = Publish {
                dup: false,
                delivery,
                retain: publish.retain,
                topic: Some(publish.topic),
                properties: publish.properties,
                payload: publish.payload,
            };
            let flow = awaiting.map(|awaiting| OutboundFlow::Publish {
                token,
                packet: packet.clone(),
                awaiting,
            });
            (Packet::Publish(packet), flow)
        }
        Request::Subscribe {
            filters,
            properties,
            ..
        } => {
            let flow = OutboundFlow::Subscribe {
                token,
                filter_count: filters.len(),
            };
            let packet = Subscribe {
                packet_id,
                filters,
                properties,
            };
            (Packet::Subscribe(packet), Some(flow))
        }
        Request::Unsubscribe {
            filters,
            properties,
        } => {
            let flow = OutboundFlow::Unsubscribe {
                token,
                filter_count: filters.len(),
            };
            let packet = Unsubscribe {
                packet_id,
                filters,
                properties,
            };
            (Packet::Unsubscribe(packet), Some(flow))
        }
    }
}

/// Lowers the Message Expiry Interval (v5) of a queued publish by the whole seconds it
/// waited in the queue, or fails it once the interval has passed. So no message leaves
/// after it expired (MQTT 5.0 section 3.3.2.3.3). An interval of 0 is sent unchanged.
/// Call only when the request is about to be sent, because a request that goes back to
/// the queue would be counted down twice.
fn count_down_expiry(queued: &mut QueuedRequest, now: Instant) -> Result<(), RequestError> {
    let Request::Publish(publish) = &mut queued.request else {
        return Ok(());
    };
    let Some(interval) = publish.properties.message_expiry_interval else {
        return Ok(());
    };
    let waited = now.saturating_duration_since(queued.queued_at);
    if interval > 0 && waited >= Duration::from_secs(u64::from(interval)) {
        return Err(RequestError::Expired { interval });
    }
    let waited_seconds = u32::try_from(waited.as_secs()).unwrap_or(u32::MAX);
    publish.properties.message_expiry_interval = Some(interval.saturating_sub(waited_seconds));
    Ok(())
}

/// Refuses a request the broker's limits forbid, before it takes a packet identifier.
fn check_request(request: &Request, limits: BrokerLimits) -> Result<(), RequestError> {
    match request {
        Request::Publish(publish) => check_publish(publish, limits),
        Request::Subscribe {
            filters,
            properties,
            ..
        } => check_subscribe(filters, properties, limits),
        Request::Unsubscribe { .. } => Ok(()),
    }
}

/// Refuses a publish that uses a feature the broker announced it lacks (MQTT 5.0
/// section 3.2.2.3), before the publish takes a packet identifier.
fn check_publish(publish: &OutgoingPublish, limits: BrokerLimits) -> Result<(), RequestError> {
    check_publish_fields(publish.qos, publish.retain, &publish.properties, limits)
}

/// Refuses a publish with this QoS, retain flag and properties when the broker announced
/// it lacks a feature they use. Also checks a PUBLISH sent again on a new connection.
fn check_publish_fields(
    qos: QoS,
    retain: bool,
    properties: &Properties,
    limits: BrokerLimits,
) -> Result<(), RequestError> {
    if qos > limits.maximum_qos {
        return Err(RequestError::Invalid(format!(
            "QoS {} exceeds the broker's maximum QoS {}",
            qos.level(),
            limits.maximum_qos.level()
        )));
    }
    if retain && !limits.retain_available {
        return Err(RequestError::Invalid(
            "broker does not support retained messages".to_owned(),
        ));
    }
    if let Some(alias) = properties.topic_alias {
        if alias.get() > limits.topic_alias_maximum {
            return Err(RequestError::Invalid(format!(
                "topic alias {alias} exceeds the broker's topic alias maximum {}",
                limits.topic_alias_maximum
            )));
        }
    }
    // A client must not send subscription identifiers in PUBLISH [MQTT-3.3.4-6].
    if !properties.subscription_identifiers.is_empty() {
        return Err(RequestError::Invalid(
            "PUBLISH must not carry subscription identifiers".to_owned(),
        ));
    }
    Ok(())
}

/// Removes the subscription identifier the client added on its own, for a broker without
/// identifier support; routing then falls back to topic filters.
fn remove_automatic_identifier(request: &mut Request) {
    if let Request::Subscribe {
        properties,
        automatic_identifier: Some(automatic),
        ..
    } = request
    {
        properties
            .subscription_identifiers
            .retain(|identifier| identifier != automatic);
    }
}

/// Refuses a subscribe that uses a feature the broker announced it lacks (MQTT 5.0 section
/// 3.2.2.3), or that has no filter [MQTT-3.8.3-3].
fn check_subscribe(
    filters: &[(codec::TopicFilter, codec::SubscriptionOptions)],
    properties: &Properties,
    limits: BrokerLimits,
) -> Result<(), RequestError> {
    let refuse = |what: &str| {
        Err(RequestError::Invalid(format!(
            "broker does not support {what}"
        )))
    };
    if filters.is_empty() {
        return Err(RequestError::Invalid(
            "subscribe needs at least one filter".to_owned(),
        ));
    }
    if !limits.wildcard_subscriptions && filters.iter().any(|(f, _)| f.has_wildcards()) {
        return refuse("wildcard subscriptions");
    }
    if !limits.shared_subscriptions && filters.iter().any(|(f, _)| f.share_name().is_some()) {
        return refuse("shared subscriptions");
    }
    if !limits.subscription_identifiers && !properties.subscription_identifiers.is_empty() {
        return refuse("subscription identifiers");
    }
    Ok(())
}

fn inbound_message(topic: codec::TopicName, publish: Publish) -> InboundMessage {
    let mut properties = publish.properties;
    // Only a message that has properties pays for writing one.
    if properties.topic_alias.is_some() {
        properties.topic_alias = None;
    }
    InboundMessage {
        topic,
        payload: publish.payload,
        qos: publish.delivery.qos(),
        retain: publish.retain,
        dup: publish.dup,
        properties,
    }
}

/// Returns the outcome of a PUBACK or PUBREC: success codes complete the publish, failure
/// codes reject it.
fn publish_outcome(
    reason: PubAckReason,
    properties: BoxedProperties,
) -> Result<Outcome, RequestError> {
    let reason_string = reason_string(&properties);
    if !reason.is_success() {
        return Err(RequestError::Rejected {
            reason: RejectReason::Publish(reason),
            reason_string,
        });
    }
    Ok(Outcome::Publish(PublishOutcome {
        reason: Some(reason),
        reason_string,
        properties,
    }))
}

fn pubrel(packet_id: PacketId, reason: PubCompReason) -> Packet {
    Packet::PubRel(PubRel {
        packet_id,
        reason,
        properties: BoxedProperties::default(),
    })
}

fn other_flow(packet_type: PacketType, packet_id: PacketId) -> ProtocolViolation {
    ProtocolViolation::AckForOtherFlow {
        packet_type,
        packet_id,
    }
}

fn count_mismatch(packet_type: PacketType, expected: usize, received: usize) -> ProtocolViolation {
    ProtocolViolation::ReasonCountMismatch {
        packet_type,
        expected,
        received,
    }
}
