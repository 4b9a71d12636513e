//! Reason codes of MQTT 5.0 (section 2.4), one enum per packet that carries them.
//!
//! Each enum lists only the codes the specification allows on that packet, so an
//! invalid code is rejected when it is parsed. MQTT 3.1.1 return codes map onto
//! these names in the codec. This module does no I/O and knows no version rules.

/// Defines a reason code enum with its byte values and a checked conversion from `u8`.
macro_rules! reason_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Returns the byte that encodes this reason code.
            #[must_use]
            pub fn code(self) -> u8 {
                self as u8
            }

            /// Returns `true` for codes below 0x80, which report success.
            #[must_use]
            pub fn is_success(self) -> bool {
                (self as u8) < 0x80
            }
        }

        impl TryFrom<u8> for $name {
            type Error = u8;

            /// Parses a reason code, returning the byte itself when this packet does not allow it.
            fn try_from(value: u8) -> Result<Self, u8> {
                match value {
                    $($value => Ok(Self::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}

reason_codes! {
    /// CONNACK reason code (MQTT 5.0 section 3.2.2.2). MQTT 3.1.1 return codes 1 to 5
    /// map to `UnsupportedProtocolVersion`, `ClientIdentifierNotValid`,
    /// `ServerUnavailable`, `BadUserNameOrPassword` and `NotAuthorized`.
    ConnectReason {
        /// The connection is accepted.
        Success = 0x00,
        /// The server does not want to say why it refuses.
        UnspecifiedError = 0x80,
        /// The CONNECT packet could not be parsed.
        MalformedPacket = 0x81,
        /// The CONNECT packet broke a protocol rule.
        ProtocolError = 0x82,
        /// The CONNECT is valid but the server does not accept it.
        ImplementationSpecificError = 0x83,
        /// The server does not support the requested protocol version.
        UnsupportedProtocolVersion = 0x84,
        /// The client identifier is valid but the server does not allow it.
        ClientIdentifierNotValid = 0x85,
        /// The user name or password was not accepted.
        BadUserNameOrPassword = 0x86,
        /// The client is not authorized to connect.
        NotAuthorized = 0x87,
        /// The server is not available.
        ServerUnavailable = 0x88,
        /// The server is busy; try again later.
        ServerBusy = 0x89,
        /// The client has been banned.
        Banned = 0x8A,
        /// The authentication method is not supported or does not match the current one.
        BadAuthenticationMethod = 0x8C,
        /// The will topic name is not accepted.
        TopicNameInvalid = 0x90,
        /// The CONNECT packet exceeds the server's maximum packet size.
        PacketTooLarge = 0x95,
        /// An implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// The will payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// The server does not support retained messages and the will asked for retain.
        RetainNotSupported = 0x9A,
        /// The server does not support the QoS of the will.
        QoSNotSupported = 0x9B,
        /// The client should temporarily use another server.
        UseAnotherServer = 0x9C,
        /// The client should permanently use another server.
        ServerMoved = 0x9D,
        /// The connection rate limit has been exceeded.
        ConnectionRateExceeded = 0x9F,
    }
}

reason_codes! {
    /// PUBACK and PUBREC reason code (MQTT 5.0 sections 3.4.2.1 and 3.5.2.1).
    PubAckReason {
        /// The message is accepted.
        Success = 0x00,
        /// The message is accepted but no subscriber matched it.
        NoMatchingSubscribers = 0x10,
        /// The receiver does not accept the message and does not say why.
        UnspecifiedError = 0x80,
        /// The PUBLISH is valid but the receiver does not accept it.
        ImplementationSpecificError = 0x83,
        /// The sender is not authorized to publish.
        NotAuthorized = 0x87,
        /// The topic name is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// An implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// The payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
    }
}

reason_codes! {
    /// PUBREL and PUBCOMP reason code (MQTT 5.0 sections 3.6.2.1 and 3.7.2.1).
    PubCompReason {
        /// The flow continues or completes normally.
        Success = 0x00,
        /// The packet identifier is not known, which is normal on recovery.
        PacketIdentifierNotFound = 0x92,
    }
}

reason_codes! {
    /// SUBACK reason code, one per topic filter (MQTT 5.0 section 3.9.3). The MQTT 3.1.1
    /// failure return code 0x80 is `UnspecifiedError`.
    SubAckReason {
        /// The subscription is accepted with maximum QoS 0.
        GrantedQoS0 = 0x00,
        /// The subscription is accepted with maximum QoS 1.
        GrantedQoS1 = 0x01,
        /// The subscription is accepted with maximum QoS 2.
        GrantedQoS2 = 0x02,
        /// The subscription is not accepted and the server does not say why.
        UnspecifiedError = 0x80,
        /// The SUBSCRIBE is valid but the server does not accept it.
        ImplementationSpecificError = 0x83,
        /// The client is not authorized to make this subscription.
        NotAuthorized = 0x87,
        /// The topic filter is well formed but not allowed for this client.
        TopicFilterInvalid = 0x8F,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// An implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// The server does not support shared subscriptions for this client.
        SharedSubscriptionsNotSupported = 0x9E,
        /// The server does not support subscription identifiers.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// The server does not support wildcard subscriptions.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_codes! {
    /// UNSUBACK reason code, one per topic filter (MQTT 5.0 section 3.11.3).
    UnsubAckReason {
        /// The subscription is deleted.
        Success = 0x00,
        /// No matching topic filter is being used by the client.
        NoSubscriptionExisted = 0x11,
        /// The unsubscribe could not be completed and the server does not say why.
        UnspecifiedError = 0x80,
        /// The UNSUBSCRIBE is valid but the server does not accept it.
        ImplementationSpecificError = 0x83,
        /// The client is not authorized to unsubscribe.
        NotAuthorized = 0x87,
        /// The topic filter is well formed but not allowed for this client.
        TopicFilterInvalid = 0x8F,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
    }
}

reason_codes! {
    /// DISCONNECT reason code (MQTT 5.0 section 3.14.2.1). Some codes may be sent only
    /// by the client or only by the server; the codec checks the direction.
    DisconnectReason {
        /// Close the connection normally and do not send the will message.
        NormalDisconnection = 0x00,
        /// Close the connection but send the will message (client only).
        DisconnectWithWillMessage = 0x04,
        /// The connection is closed and the sender does not say why.
        UnspecifiedError = 0x80,
        /// A received packet could not be parsed.
        MalformedPacket = 0x81,
        /// A received packet broke a protocol rule.
        ProtocolError = 0x82,
        /// A received packet is valid but not accepted by this implementation.
        ImplementationSpecificError = 0x83,
        /// The request is not authorized (server only).
        NotAuthorized = 0x87,
        /// The server is busy (server only).
        ServerBusy = 0x89,
        /// The server is shutting down (server only).
        ServerShuttingDown = 0x8B,
        /// No packet arrived within 1.5 times the keep-alive (server only).
        KeepAliveTimeout = 0x8D,
        /// Another connection with the same client identifier took over (server only).
        SessionTakenOver = 0x8E,
        /// The topic filter is well formed but not accepted (server only).
        TopicFilterInvalid = 0x8F,
        /// The topic name is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// More messages arrived than the Receive Maximum allows.
        ReceiveMaximumExceeded = 0x93,
        /// A topic alias was greater than the maximum announced.
        TopicAliasInvalid = 0x94,
        /// A packet exceeded the maximum packet size.
        PacketTooLarge = 0x95,
        /// The rate of messages is too high.
        MessageRateTooHigh = 0x96,
        /// An implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// The connection is closed because of an administrative action.
        AdministrativeAction = 0x98,
        /// A payload did not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// The server does not support retained messages (server only).
        RetainNotSupported = 0x9A,
        /// A QoS greater than the server supports was used (server only).
        QoSNotSupported = 0x9B,
        /// The client should temporarily use another server (server only).
        UseAnotherServer = 0x9C,
        /// The server has moved; the client should use another one permanently (server only).
        ServerMoved = 0x9D,
        /// The server does not support shared subscriptions (server only).
        SharedSubscriptionsNotSupported = 0x9E,
        /// The connection rate limit has been exceeded (server only).
        ConnectionRateExceeded = 0x9F,
        /// The maximum connection time has been exceeded (server only).
        MaximumConnectTime = 0xA0,
        /// The server does not support subscription identifiers (server only).
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// The server does not support wildcard subscriptions (server only).
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_codes! {
    /// AUTH reason code (MQTT 5.0 section 3.15.2.1).
    AuthReason {
        /// Authentication succeeded.
        Success = 0x00,
        /// Continue the authentication with another step.
        ContinueAuthentication = 0x18,
        /// Start a re-authentication (client only).
        ReAuthenticate = 0x19,
    }
}
