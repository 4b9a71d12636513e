//! Encoding and decoding of MQTT 5.0 property lists (section 2.2.2), for every packet.
//!
//! One table lists the properties each packet may carry (section 2.2.2.2) and one
//! walk over [`Properties`] drives both the size calculation and the writing, so the
//! encoder cannot write a property it did not check. Packet layouts live elsewhere.

use std::num::{NonZeroU16, NonZeroU32};

use super::error::{EncodeError, Violation};
use super::packet::PacketType;
use super::properties::{PayloadFormat, Properties, PropertyId};
use super::topic::TopicName;
use super::types::{disallowed_character, ProtocolVersion, QoS};
use super::wire::{
    put_variable_byte_integer, value_violation, variable_byte_integer_len, Reader, Sink,
    MAX_VARIABLE_BYTE_INTEGER,
};

/// The place a property list appears, which decides the properties allowed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Acknowledgement,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Returns a bit set with one bit per property identifier in `ids`.
const fn id_set(ids: &[PropertyId]) -> u64 {
    match ids {
        [first, rest @ ..] => 1 << *first as u8 | id_set(rest),
        [] => 0,
    }
}

impl PropertyContext {
    /// Returns the set of properties allowed here, after the table in MQTT 5.0
    /// section 2.2.2.2. User Property is allowed everywhere.
    fn allowed(self) -> u64 {
        use PropertyId as P;
        const MESSAGE: &[PropertyId] = &[
            P::PayloadFormatIndicator,
            P::MessageExpiryInterval,
            P::ContentType,
            P::ResponseTopic,
            P::CorrelationData,
            P::UserProperty,
        ];
        const CONNECT: u64 = id_set(&[
            P::SessionExpiryInterval,
            P::AuthenticationMethod,
            P::AuthenticationData,
            P::RequestProblemInformation,
            P::RequestResponseInformation,
            P::ReceiveMaximum,
            P::TopicAliasMaximum,
            P::UserProperty,
            P::MaximumPacketSize,
        ]);
        const CONNACK: u64 = id_set(&[
            P::SessionExpiryInterval,
            P::AssignedClientIdentifier,
            P::ServerKeepAlive,
            P::AuthenticationMethod,
            P::AuthenticationData,
            P::ResponseInformation,
            P::ServerReference,
            P::ReasonString,
            P::ReceiveMaximum,
            P::TopicAliasMaximum,
            P::MaximumQoS,
            P::RetainAvailable,
            P::UserProperty,
            P::MaximumPacketSize,
            P::WildcardSubscriptionAvailable,
            P::SubscriptionIdentifierAvailable,
            P::SharedSubscriptionAvailable,
        ]);
        const REPORT: u64 = id_set(&[P::ReasonString, P::UserProperty]);
        // Every set is a constant: `id_set` is recursive, and calling it at run time
        // on each property cost more than the rest of the encoding.
        const WILL: u64 = id_set(MESSAGE) | id_set(&[P::WillDelayInterval]);
        const PUBLISH: u64 = id_set(MESSAGE) | id_set(&[P::SubscriptionIdentifier, P::TopicAlias]);
        const SUBSCRIBE: u64 = id_set(&[P::SubscriptionIdentifier, P::UserProperty]);
        const UNSUBSCRIBE: u64 = id_set(&[P::UserProperty]);
        const DISCONNECT: u64 = REPORT | id_set(&[P::SessionExpiryInterval, P::ServerReference]);
        const AUTH: u64 = REPORT | id_set(&[P::AuthenticationMethod, P::AuthenticationData]);
        match self {
            Self::Connect => CONNECT,
            Self::Will => WILL,
            Self::ConnAck => CONNACK,
            Self::Publish => PUBLISH,
            Self::Acknowledgement | Self::SubAck | Self::UnsubAck => REPORT,
            Self::Subscribe => SUBSCRIBE,
            Self::Unsubscribe => UNSUBSCRIBE,
            Self::Disconnect => DISCONNECT,
            Self::Auth => AUTH,
        }
    }

    fn allows(self, id: PropertyId) -> bool {
        self.allowed() & (1 << id as u8) != 0
    }

    /// Returns `true` when `id` may appear more than once: User Property anywhere,
    /// Subscription Identifier on PUBLISH (MQTT 5.0 section 3.3.2.3.8).
    fn allows_repeat(self, id: PropertyId) -> bool {
        id == PropertyId::UserProperty
            || (id == PropertyId::SubscriptionIdentifier && self == Self::Publish)
    }
}

/// Reads a property length and the property list after it.
pub(crate) fn read_properties(
    reader: &mut Reader,
    context: PropertyContext,
) -> Result<Properties, Violation> {
    let mut properties = Properties::default();
    read_properties_into(reader, context, &mut properties)?;
    Ok(properties)
}

/// Reads a property length and the property list after it into `properties`, which
/// starts empty. Filling a field in place spares the hot path a copy of the large
/// struct.
pub(crate) fn read_properties_into(
    reader: &mut Reader,
    context: PropertyContext,
    properties: &mut Properties,
) -> Result<(), Violation> {
    let len = reader.variable_byte_integer()? as usize;
    if len == 0 {
        return Ok(());
    }
    let mut list = reader.sub_reader(len)?;
    let mut seen: u64 = 0;
    while !list.is_empty() {
        let raw_id = list.variable_byte_integer()?;
        let id = u8::try_from(raw_id)
            .ok()
            .and_then(|byte| PropertyId::try_from(byte).ok())
            .ok_or(Violation::UnknownProperty(raw_id))?;
        if !context.allows(id) {
            return Err(Violation::PropertyNotAllowed {
                packet_type: list.packet_type(),
                property: id,
            });
        }
        let bit = 1 << id as u8;
        if seen & bit != 0 && !context.allows_repeat(id) {
            return Err(Violation::DuplicateProperty(id));
        }
        seen |= bit;
        read_value(&mut list, id, properties)?;
    }
    Ok(())
}

/// Reads the value of property `id` into its field of `properties`.
fn read_value(
    reader: &mut Reader,
    id: PropertyId,
    properties: &mut Properties,
) -> Result<(), Violation> {
    use PropertyId as P;
    let p = properties;
    match id {
        P::PayloadFormatIndicator => {
            p.payload_format_indicator = Some(match reader.u8()? {
                0 => PayloadFormat::Bytes,
                1 => PayloadFormat::Utf8,
                other => return Err(invalid_value(id, u32::from(other))),
            });
        }
        P::MessageExpiryInterval => p.message_expiry_interval = Some(reader.u32()?),
        P::ContentType => p.content_type = Some(reader.string()?),
        P::ResponseTopic => p.response_topic = Some(read_response_topic(reader)?),
        P::CorrelationData => p.correlation_data = Some(reader.binary()?),
        P::SubscriptionIdentifier => {
            let value = reader.variable_byte_integer()?;
            let value = NonZeroU32::new(value).ok_or(invalid_value(id, 0))?;
            p.subscription_identifiers.push(value);
        }
        P::SessionExpiryInterval => p.session_expiry_interval = Some(reader.u32()?),
        P::AssignedClientIdentifier => p.assigned_client_identifier = Some(reader.string()?),
        P::ServerKeepAlive => p.server_keep_alive = Some(reader.u16()?),
        P::AuthenticationMethod => p.authentication_method = Some(reader.string()?),
        P::AuthenticationData => p.authentication_data = Some(reader.binary()?),
        P::RequestProblemInformation => {
            p.request_problem_information = Some(read_bool(reader, id)?);
        }
        P::WillDelayInterval => p.will_delay_interval = Some(reader.u32()?),
        P::RequestResponseInformation => {
            p.request_response_information = Some(read_bool(reader, id)?);
        }
        P::ResponseInformation => p.response_information = Some(reader.string()?),
        P::ServerReference => p.server_reference = Some(reader.string()?),
        P::ReasonString => p.reason_string = Some(reader.string()?),
        P::ReceiveMaximum => {
            // Receive Maximum 0 is a Protocol Error (MQTT 5.0 section 3.1.2.11.3).
            p.receive_maximum = Some(NonZeroU16::new(reader.u16()?).ok_or(invalid_value(id, 0))?);
        }
        P::TopicAliasMaximum => p.topic_alias_maximum = Some(reader.u16()?),
        P::TopicAlias => {
            p.topic_alias = Some(NonZeroU16::new(reader.u16()?).ok_or(Violation::ZeroTopicAlias)?);
        }
        P::MaximumQoS => {
            // Maximum QoS is 0 or 1 when present (MQTT 5.0 section 3.2.2.3.4).
            p.maximum_qos = Some(match reader.u8()? {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                other => return Err(invalid_value(id, u32::from(other))),
            });
        }
        P::RetainAvailable => p.retain_available = Some(read_bool(reader, id)?),
        P::UserProperty => {
            let name = reader.string()?;
            let value = reader.string()?;
            p.user_properties.push((name, value));
        }
        P::MaximumPacketSize => {
            // Maximum Packet Size 0 is a Protocol Error (MQTT 5.0 section 3.1.2.11.4).
            p.maximum_packet_size =
                Some(NonZeroU32::new(reader.u32()?).ok_or(invalid_value(id, 0))?);
        }
        P::WildcardSubscriptionAvailable => {
            p.wildcard_subscription_available = Some(read_bool(reader, id)?);
        }
        P::SubscriptionIdentifierAvailable => {
            p.subscription_identifier_available = Some(read_bool(reader, id)?);
        }
        P::SharedSubscriptionAvailable => {
            p.shared_subscription_available = Some(read_bool(reader, id)?);
        }
    }
    Ok(())
}

fn invalid_value(property: PropertyId, value: u32) -> Violation {
    Violation::InvalidPropertyValue { property, value }
}

/// Reads a byte that must be 0 or 1; other values are a Protocol Error.
fn read_bool(reader: &mut Reader, id: PropertyId) -> Result<bool, Violation> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(invalid_value(id, u32::from(other))),
    }
}

/// Reads a Response Topic, which follows the topic name rules [MQTT-3.3.2-14].
fn read_response_topic(reader: &mut Reader) -> Result<TopicName, Violation> {
    let string = reader.utf8()?;
    TopicName::try_from(string)
        .map_err(|error| value_violation(error, Violation::InvalidResponseTopic))
}

/// One property value as it goes on the wire.
enum Value<'a> {
    Byte(u8),
    TwoBytes(u16),
    FourBytes(u32),
    VariableByteInteger(u32),
    String(&'a str),
    Binary(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl Value<'_> {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Self::Byte(_) => 1,
            Self::TwoBytes(_) => 2,
            Self::FourBytes(_) => 4,
            Self::VariableByteInteger(value) => variable_byte_integer_len(*value),
            Self::String(value) => 2 + value.len(),
            Self::Binary(value) => 2 + value.len(),
            Self::Pair(name, value) => 4 + name.len() + value.len(),
        }
    }

    /// Appends the property: its identifier, which is below 128 and so takes one
    /// byte, then the value.
    #[allow(clippy::inline_always)] // Called from `WriteVisitor`, see there.
    #[inline(always)]
    fn put(&self, id: PropertyId, dst: &mut impl Sink) {
        let id = id as u8;
        match self {
            Self::Byte(value) => dst.write_array([id, *value]),
            Self::TwoBytes(value) => {
                let [high, low] = value.to_be_bytes();
                dst.write_array([id, high, low]);
            }
            Self::FourBytes(value) => {
                let [a, b, c, d] = value.to_be_bytes();
                dst.write_array([id, a, b, c, d]);
            }
            Self::VariableByteInteger(value) => {
                dst.write_array([id]);
                put_variable_byte_integer(dst, *value);
            }
            Self::String(value) => dst.write_string(Some(id), value),
            Self::Binary(value) => {
                let [high, low] = (value.len() as u16).to_be_bytes();
                dst.write_array([id, high, low]);
                dst.write_slice(value);
            }
            Self::Pair(name, value) => {
                dst.write_string(Some(id), name);
                dst.write_string(None, value);
            }
        }
    }
}

/// Receives the properties of a list from [`for_each_property`]. A trait in place of
/// a closure lets each implementation force inlining, so that every call site
/// compiles to the code for its one kind of value.
trait PropertyVisitor<'a> {
    fn visit(&mut self, id: PropertyId, value: Value<'a>);
}

/// Sums the encoded length of a property list and notes what it contains. With
/// `CHARACTERS` true it also records the first value the wire cannot carry.
#[derive(Default)]
struct LengthVisitor<const CHARACTERS: bool> {
    /// Bytes of the list, without its length prefix.
    len: usize,
    /// One bit per identifier present.
    present: u64,
    /// The first value the wire cannot carry, with what is wrong with it.
    problem: Option<(PropertyId, &'static str)>,
}

impl<'a, const CHARACTERS: bool> PropertyVisitor<'a> for LengthVisitor<CHARACTERS> {
    #[allow(clippy::inline_always)] // See the trait.
    #[inline(always)]
    fn visit(&mut self, id: PropertyId, value: Value<'a>) {
        // Every identifier is below 128, so it takes one byte.
        self.present |= 1 << id as u8;
        self.len += 1 + value.len();
        if !CHARACTERS {
            return;
        }
        if let Err(text) = check_value(&value) {
            self.problem.get_or_insert((id, text));
        }
    }
}

/// Appends each property, identifier first.
struct WriteVisitor<'d, S>(&'d mut S);

impl<'a, S: Sink> PropertyVisitor<'a> for WriteVisitor<'_, S> {
    #[allow(clippy::inline_always)] // See the trait.
    #[inline(always)]
    fn visit(&mut self, id: PropertyId, value: Value<'a>) {
        value.put(id, self.0);
    }
}

/// Calls `visitor` with every property present in `p`: the message properties in the
/// order Mosquitto writes them, then the others by identifier, then the user
/// properties in their stored order. Any order is valid (MQTT 5.0 section 2.2.2.2),
/// but matching Mosquitto's lets byte-exact conformance tests pass.
#[inline]
fn for_each_property<'a>(p: &'a Properties, visitor: &mut impl PropertyVisitor<'a>) {
    use PropertyId as P;
    use Value as V;
    if let Some(format) = p.payload_format_indicator {
        visitor.visit(P::PayloadFormatIndicator, V::Byte(format as u8));
    }
    if let Some(value) = p.message_expiry_interval {
        visitor.visit(P::MessageExpiryInterval, V::FourBytes(value));
    }
    if let Some(value) = p.topic_alias {
        visitor.visit(P::TopicAlias, V::TwoBytes(value.get()));
    }
    if let Some(value) = &p.response_topic {
        // A topic name had its characters checked when it was built, so it goes out
        // as plain bytes.
        visitor.visit(P::ResponseTopic, V::Binary(value.as_str().as_bytes()));
    }
    if let Some(value) = &p.correlation_data {
        visitor.visit(P::CorrelationData, V::Binary(value));
    }
    if let Some(value) = &p.content_type {
        visitor.visit(P::ContentType, V::String(value));
    }
    for value in &p.subscription_identifiers {
        visitor.visit(
            P::SubscriptionIdentifier,
            V::VariableByteInteger(value.get()),
        );
    }
    if let Some(value) = p.session_expiry_interval {
        visitor.visit(P::SessionExpiryInterval, V::FourBytes(value));
    }
    if let Some(value) = &p.assigned_client_identifier {
        visitor.visit(P::AssignedClientIdentifier, V::String(value));
    }
    if let Some(value) = p.server_keep_alive {
        visitor.visit(P::ServerKeepAlive, V::TwoBytes(value));
    }
    if let Some(value) = &p.authentication_method {
        visitor.visit(P::AuthenticationMethod, V::String(value));
    }
    if let Some(value) = &p.authentication_data {
        visitor.visit(P::AuthenticationData, V::Binary(value));
    }
    if let Some(value) = p.request_problem_information {
        visitor.visit(P::RequestProblemInformation, V::Byte(u8::from(value)));
    }
    if let Some(value) = p.will_delay_interval {
        visitor.visit(P::WillDelayInterval, V::FourBytes(value));
    }
    if let Some(value) = p.request_response_information {
        visitor.visit(P::RequestResponseInformation, V::Byte(u8::from(value)));
    }
    if let Some(value) = &p.response_information {
        visitor.visit(P::ResponseInformation, V::String(value));
    }
    if let Some(value) = &p.server_reference {
        visitor.visit(P::ServerReference, V::String(value));
    }
    if let Some(value) = &p.reason_string {
        visitor.visit(P::ReasonString, V::String(value));
    }
    if let Some(value) = p.receive_maximum {
        visitor.visit(P::ReceiveMaximum, V::TwoBytes(value.get()));
    }
    if let Some(value) = p.topic_alias_maximum {
        visitor.visit(P::TopicAliasMaximum, V::TwoBytes(value));
    }
    if let Some(value) = p.maximum_qos {
        visitor.visit(P::MaximumQoS, V::Byte(value.level()));
    }
    if let Some(value) = p.retain_available {
        visitor.visit(P::RetainAvailable, V::Byte(u8::from(value)));
    }
    if let Some(value) = p.maximum_packet_size {
        visitor.visit(P::MaximumPacketSize, V::FourBytes(value.get()));
    }
    if let Some(value) = p.wildcard_subscription_available {
        visitor.visit(P::WildcardSubscriptionAvailable, V::Byte(u8::from(value)));
    }
    if let Some(value) = p.subscription_identifier_available {
        visitor.visit(P::SubscriptionIdentifierAvailable, V::Byte(u8::from(value)));
    }
    if let Some(value) = p.shared_subscription_available {
        visitor.visit(P::SharedSubscriptionAvailable, V::Byte(u8::from(value)));
    }
    for (name, value) in &p.user_properties {
        visitor.visit(P::UserProperty, V::Pair(name, value));
    }
}

/// Checks that `properties` may be sent in `context` and returns the length of the
/// property list, without its length prefix.
///
/// With `CHARACTERS` false the walk checks no value. A list of at most 65,535 bytes
/// without Subscription Identifier has no value too long for its length prefix and
/// no number out of range, and what remains to check are the characters of strings.
/// For any other list the walk is repeated with `CHARACTERS` true.
pub(crate) fn properties_len<const CHARACTERS: bool>(
    properties: &Properties,
    context: PropertyContext,
    packet_type: PacketType,
) -> Result<usize, EncodeError> {
    // The walk records which identifiers are present and leaves the rules on
    // fixed-size values to the checks after it.
    let mut visitor = LengthVisitor::<CHARACTERS>::default();
    for_each_property(properties, &mut visitor);
    let LengthVisitor {
        len,
        present,
        problem,
    } = visitor;
    if !CHARACTERS
        && (len > usize::from(u16::MAX) || !properties.subscription_identifiers.is_empty())
    {
        return properties_len::<true>(properties, context, packet_type);
    }

    let invalid = |property, problem| EncodeError::InvalidProperty {
        packet_type,
        property,
        problem,
    };
    let not_allowed = present & !context.allowed();
    if let Some(id) = lowest_property(not_allowed) {
        return Err(invalid(id, "not allowed on this packet"));
    }
    if let Some((id, text)) = problem {
        return Err(invalid(id, text));
    }
    if properties.maximum_qos == Some(QoS::ExactlyOnce) {
        return Err(invalid(
            PropertyId::MaximumQoS,
            "maximum QoS must be 0 or 1",
        ));
    }
    let repeat = PropertyId::SubscriptionIdentifier;
    if properties.subscription_identifiers.len() > 1 && !context.allows_repeat(repeat) {
        return Err(invalid(repeat, "only one is allowed on this packet"));
    }
    Ok(len)
}

/// Returns the property with the lowest identifier in the bit set `set`.
fn lowest_property(set: u64) -> Option<PropertyId> {
    if set == 0 {
        return None;
    }
    PropertyId::try_from(set.trailing_zeros() as u8).ok()
}

/// Returns what is wrong with a property value the model allows but the wire does
/// not, apart from Maximum QoS, which `properties_len` checks.
#[allow(clippy::inline_always)] // Called from `LengthVisitor`, see there.
#[inline(always)]
fn check_value(value: &Value<'_>) -> Result<(), &'static str> {
    match *value {
        Value::VariableByteInteger(number) if number > MAX_VARIABLE_BYTE_INTEGER => {
            Err("subscription identifier is above 268435455")
        }
        Value::String(text) => check_string(text),
        Value::Binary(bytes) if bytes.len() > usize::from(u16::MAX) => {
            Err("value is longer than 65535 bytes")
        }
        Value::Pair(name, text) => check_string(name).and_then(|()| check_string(text)),
        _ => Ok(()),
    }
}

#[allow(clippy::inline_always)] // Called from `LengthVisitor`, see there.
#[inline(always)]
fn check_string(text: &str) -> Result<(), &'static str> {
    if text.len() > usize::from(u16::MAX) {
        return Err("value is longer than 65535 bytes");
    }
    if disallowed_character(text).is_some() {
        return Err("value contains U+0000, a control character or a noncharacter");
    }
    Ok(())
}

/// Checks `properties` for a packet of `version` and returns the length of the
/// property list: in MQTT 5.0 as [`properties_len`] does, before 5.0 0, after checking
/// that no property is set because those versions have no way to carry one.
#[inline]
pub(crate) fn measure_properties(
    properties: &Properties,
    version: ProtocolVersion,
    context: PropertyContext,
    packet_type: PacketType,
) -> Result<usize, EncodeError> {
    // Most packets carry no property, and this test inlines where the slow path
    // below would cost a call.
    if !has_properties(properties) {
        return Ok(0);
    }
    measure_present_properties::<true>(properties, version, context, packet_type)
}

/// Checks and measures `properties` as [`measure_properties`] does, except for the
/// characters of strings: the caller writes the list with [`put_properties`] to a
/// [`SizedWriter`](super::wire::SizedWriter) and checks the characters when that
/// finds a string that is not printable ASCII.
pub(crate) fn measure_properties_but_characters(
    properties: &Properties,
    version: ProtocolVersion,
    context: PropertyContext,
    packet_type: PacketType,
) -> Result<usize, EncodeError> {
    // An empty list costs the walk little more than the `has_properties` test, so
    // CONNECT, the only caller, skips that test.
    if version.is_v5() {
        return properties_len::<false>(properties, context, packet_type);
    }
    measure_properties(properties, version, context, packet_type)
}

#[inline(never)]
fn measure_present_properties<const CHARACTERS: bool>(
    properties: &Properties,
    version: ProtocolVersion,
    context: PropertyContext,
    packet_type: PacketType,
) -> Result<usize, EncodeError> {
    if !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            what: "properties",
            version,
        });
    }
    properties_len::<CHARACTERS>(properties, context, packet_type)
}

/// Returns the bytes a property list of `len` bytes takes with its length prefix:
/// nothing before MQTT 5.0.
pub(crate) fn section_len(len: usize, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        variable_byte_integer_len(len as u32) + len
    } else {
        0
    }
}

/// Returns `true` when any property is set. It is faster than comparing with the
/// default, which matters on the PUBLISH hot path. The exhaustive pattern makes a new
/// field a compile error here.
#[allow(clippy::inline_always)] // Out of line it costs a call on every PUBLISH.
#[inline(always)]
pub(crate) fn has_properties(properties: &Properties) -> bool {
    let Properties {
        payload_format_indicator,
        message_expiry_interval,
        content_type,
        response_topic,
        correlation_data,
        subscription_identifiers,
        session_expiry_interval,
        assigned_client_identifier,
        server_keep_alive,
        authentication_method,
        authentication_data,
        request_problem_information,
        will_delay_interval,
        request_response_information,
        response_information,
        server_reference,
        reason_string,
        receive_maximum,
        topic_alias_maximum,
        topic_alias,
        maximum_qos,
        retain_available,
        user_properties,
        maximum_packet_size,
        wildcard_subscription_available,
        subscription_identifier_available,
        shared_subscription_available,
    } = properties;
    let integers = payload_format_indicator.is_some()
        | message_expiry_interval.is_some()
        | session_expiry_interval.is_some()
        | server_keep_alive.is_some()
        | request_problem_information.is_some()
        | will_delay_interval.is_some()
        | request_response_information.is_some()
        | receive_maximum.is_some()
        | topic_alias_maximum.is_some()
        | topic_alias.is_some()
        | maximum_qos.is_some()
        | retain_available.is_some()
        | maximum_packet_size.is_some()
        | wildcard_subscription_available.is_some()
        | subscription_identifier_available.is_some()
        | shared_subscription_available.is_some();
    // Groups of three measured fastest: `|` across all nine makes the compiler build
    // slow vector code, and `||` everywhere branches on every field.
    let data = (content_type.is_some() | response_topic.is_some() | correlation_data.is_some())
        || (assigned_client_identifier.is_some()
            | authentication_method.is_some()
            | authentication_data.is_some())
        || (response_information.is_some() | server_reference.is_some() | reason_string.is_some());
    integers || data || !subscription_identifiers.is_empty() || !user_properties.is_empty()
}

/// Appends the property length `len`, as returned by [`properties_len`], and the
/// property list.
#[inline]
pub(crate) fn put_properties<S: Sink>(dst: &mut S, properties: &Properties, len: usize) {
    if len == 0 {
        dst.write_array([0]);
        return;
    }
    put_property_list(dst, properties, len);
}

#[inline(never)]
fn put_property_list<S: Sink>(dst: &mut S, properties: &Properties, len: usize) {
    dst.write_locally(|dst| {
        put_variable_byte_integer(dst, len as u32);
        for_each_property(properties, &mut WriteVisitor(dst));
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;

    fn decode(context: PropertyContext, bytes: &'static [u8]) -> Result<Properties, Violation> {
        let mut reader = Reader::new(Bytes::from_static(bytes), PacketType::ConnAck);
        let properties = read_properties(&mut reader, context)?;
        reader.finish()?;
        Ok(properties)
    }

    fn encode(properties: &Properties, context: PropertyContext) -> Vec<u8> {
        let len = properties_len::<true>(properties, context, PacketType::ConnAck).unwrap();
        let mut dst = BytesMut::new();
        put_properties(&mut dst, properties, len);
        dst.to_vec()
    }

    #[test]
    fn empty_list_is_one_zero_byte() {
        assert_eq!(
            encode(&Properties::default(), PropertyContext::Publish),
            [0]
        );
        assert_eq!(
            decode(PropertyContext::Publish, &[0]).unwrap(),
            Properties::default()
        );
    }

    #[test]
    fn connack_properties_round_trip() {
        let properties = Properties {
            session_expiry_interval: Some(0x0102_0304),
            receive_maximum: NonZeroU16::new(20),
            maximum_qos: Some(QoS::AtLeastOnce),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Properties::default()
        };
        let bytes = encode(&properties, PropertyContext::ConnAck);
        assert_eq!(
            bytes,
            [
                24, 0x11, 1, 2, 3, 4, 0x21, 0, 20, 0x24, 1, 0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0,
                1, b'k', 0, 1, b'w'
            ]
        );
        let mut reader = Reader::new(Bytes::from(bytes), PacketType::ConnAck);
        let decoded = read_properties(&mut reader, PropertyContext::ConnAck).unwrap();
        assert_eq!(decoded, properties);
    }

    #[test]
    fn publish_may_repeat_subscription_identifier() {
        let decoded = decode(PropertyContext::Publish, &[4, 0x0B, 1, 0x0B, 1]).unwrap();
        let expected: Vec<_> = [1, 1].into_iter().filter_map(NonZeroU32::new).collect();
        assert_eq!(decoded.subscription_identifiers, expected);
    }

    #[test]
    fn subscribe_rejects_second_subscription_identifier() {
        let result = decode(PropertyContext::Subscribe, &[4, 0x0B, 1, 0x0B, 2]);
        assert_eq!(
            result,
            Err(Violation::DuplicateProperty(
                PropertyId::SubscriptionIdentifier
            ))
        );
    }

    #[test]
    fn duplicate_single_property_rejected() {
        let result = decode(
            PropertyContext::Acknowledgement,
            &[6, 0x1F, 0, 1, b'p', 0x1F, 0],
        );
        let result = result.map_err(|violation| violation.reason_code());
        assert_eq!(
            result,
            Err(super::super::reason::DisconnectReason::ProtocolError)
        );
    }

    #[test]
    fn property_not_allowed_rejected() {
        let result = decode(PropertyContext::ConnAck, &[2, 0x01, 0]);
        assert_eq!(
            result,
            Err(Violation::PropertyNotAllowed {
                packet_type: PacketType::ConnAck,
                property: PropertyId::PayloadFormatIndicator
            })
        );
    }

    #[test]
    fn unknown_and_non_minimal_ids_rejected() {
        assert_eq!(
            decode(PropertyContext::ConnAck, &[2, 0x00, 1]),
            Err(Violation::UnknownProperty(0))
        );
        assert_eq!(
            decode(PropertyContext::ConnAck, &[2, 0x04, 1]),
            Err(Violation::UnknownProperty(4))
        );
        assert_eq!(
            decode(PropertyContext::ConnAck, &[3, 0x80, 0x01, 1]),
            Err(Violation::UnknownProperty(128))
        );
        assert_eq!(
            decode(PropertyContext::ConnAck, &[3, 0x80, 0x00, 1]),
            Err(Violation::NonMinimalVariableByteInteger)
        );
    }

    #[test]
    fn out_of_range_values_rejected() {
        let cases: &[(&'static [u8], PropertyContext)] = &[
            (&[3, 0x21, 0, 0], PropertyContext::ConnAck),
            (&[2, 0x24, 2], PropertyContext::ConnAck),
            (&[2, 0x25, 2], PropertyContext::ConnAck),
            (&[2, 0x01, 2], PropertyContext::Publish),
            (&[2, 0x0B, 0], PropertyContext::Publish),
            (&[5, 0x27, 0, 0, 0, 0], PropertyContext::ConnAck),
        ];
        for (bytes, context) in cases {
            let result = decode(*context, bytes);
            assert!(
                matches!(result, Err(Violation::InvalidPropertyValue { .. })),
                "{bytes:02x?}: {result:?}"
            );
        }
        assert_eq!(
            decode(PropertyContext::Publish, &[3, 0x23, 0, 0]),
            Err(Violation::ZeroTopicAlias)
        );
    }

    #[test]
    fn missing_values_reported_as_truncated() {
        let truncated = Err(Violation::Truncated {
            packet_type: PacketType::ConnAck,
        });
        assert_eq!(decode(PropertyContext::ConnAck, &[1, 0x11]), truncated);
        assert_eq!(
            decode(PropertyContext::ConnAck, &[4, 0x26, 0, 1, b'p']),
            truncated
        );
        assert_eq!(
            decode(PropertyContext::ConnAck, &[5, 0x11, 0, 0]),
            truncated
        );
    }

    #[test]
    fn response_topic_with_wildcard_rejected() {
        let result = decode(PropertyContext::Publish, &[4, 0x08, 0, 1, b'#']);
        assert!(
            matches!(result, Err(Violation::InvalidResponseTopic(_))),
            "{result:?}"
        );
    }

    #[test]
    fn encoder_rejects_property_outside_its_packet() {
        let properties = Properties {
            topic_alias: NonZeroU16::new(1),
            ..Properties::default()
        };
        let result =
            properties_len::<true>(&properties, PropertyContext::Connect, PacketType::Connect);
        assert!(
            matches!(result, Err(EncodeError::InvalidProperty { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn encoder_rejects_maximum_qos_two() {
        let properties = Properties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Properties::default()
        };
        let result =
            properties_len::<true>(&properties, PropertyContext::ConnAck, PacketType::ConnAck);
        assert!(
            matches!(result, Err(EncodeError::InvalidProperty { .. })),
            "{result:?}"
        );
    }
}
