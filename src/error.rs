//! The public error of every client operation, and what ended a connection.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::codec::{ConnectReason, DisconnectReason};
use crate::session::{CloseReason, ProtocolViolation, RejectReason, RequestError};
use crate::transport::Endpoint;

/// Error of a client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The options cannot describe a valid connection; the message names the option.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The TCP connection to the broker could not be opened.
    #[error("failed to connect to the broker at {endpoint}")]
    ConnectFailed {
        /// Host and port the client tried.
        endpoint: Endpoint,
        /// The I/O error of the failed connect.
        #[source]
        source: Arc<io::Error>,
    },
    /// The broker rejected CONNECT with a failure reason code in CONNACK.
    #[error("connection refused by broker: {reason:?}")]
    ConnectRefused {
        /// The CONNACK reason code (3.1.1 return codes are mapped onto these names).
        reason: ConnectReason,
        /// The CONNACK reason string (v5), if any.
        reason_string: Option<String>,
        /// The CONNACK Server Reference (v5): the server the client should use instead,
        /// sent with Use Another Server or Server Moved.
        server_reference: Option<String>,
    },
    /// No CONNACK arrived within the connect timeout.
    #[error("no CONNACK within the connect timeout")]
    ConnectTimeout,
    /// No PINGRESP arrived within the keep-alive interval after a PINGREQ.
    #[error("no PINGRESP within the keep-alive interval")]
    KeepAliveTimeout,
    /// The broker broke a rule of MQTT; the connection was closed (after a v5 DISCONNECT
    /// with the matching reason code).
    #[error("protocol violation by broker")]
    ProtocolViolation(#[source] ProtocolViolation),
    /// The connection ended without a protocol error: the broker closed it or sent
    /// DISCONNECT, or reading or writing failed.
    #[error("connection closed: {0}")]
    ConnectionClosed(ClosedBy),
    /// The request needs a connection and the client has none. Returned for a QoS 0
    /// publish made before CONNACK or while automatic reconnect waits, when
    /// [`ClientOptions::queue_qos0_offline`](crate::ClientOptions::queue_qos0_offline) is
    /// off, and for a QoS 0 publish still queued when the connection ends then. Other
    /// requests made without a connection wait in the queue.
    #[error("not connected")]
    NotConnected,
    /// The client's queue of pending requests is full; try again after some complete.
    #[error("request queue is full")]
    QueueFull,
    /// The request alone is larger than
    /// [`ClientOptions::max_queued_bytes`](crate::ClientOptions::max_queued_bytes), so it
    /// can never be queued; nothing was sent.
    #[error("request of {size} bytes exceeds the queue limit of {max} bytes")]
    TooLargeForQueue {
        /// Size of the request as the queue counts it, in bytes.
        size: usize,
        /// The queue's byte limit.
        max: usize,
    },
    /// The request waited in the full queue and a newer one replaced it, under
    /// [`QueueFullPolicy::DropOldest`](crate::QueueFullPolicy::DropOldest); nothing was
    /// sent. [`Event::RequestDropped`](crate::Event::RequestDropped) reports it too.
    #[error("request dropped from the full queue for a newer one")]
    DroppedFromQueue,
    /// The publish waited in the queue for its whole Message Expiry Interval (v5), so it
    /// was dropped unsent. [`Event::RequestDropped`](crate::Event::RequestDropped)
    /// reports it too.
    #[error("message expired after waiting {interval} s in the queue")]
    Expired {
        /// The Message Expiry Interval of the publish, in seconds.
        interval: u32,
    },
    /// The packet exceeds the broker's Maximum Packet Size; nothing was sent.
    #[error("packet of {size} bytes exceeds the broker's maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The broker's Maximum Packet Size in bytes.
        max: u32,
    },
    /// The broker rejected the publish, subscribe or unsubscribe with a failure reason code.
    #[error("rejected by broker with reason code {:#04x}", reason.code())]
    Rejected {
        /// The failure reason code and the packet that carried it.
        reason: RejectReason,
        /// The reason string (v5), if any.
        reason_string: Option<String>,
    },
    /// The request cannot be sent with this protocol version or to this broker; the message
    /// gives the reason. Nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The client stopped, by a disconnect or because every handle was dropped, before the
    /// request completed.
    #[error("client stopped")]
    Stopped,
}

/// Cause of a connection end in which no protocol rule was broken.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClosedBy {
    /// The broker closed the TCP connection.
    EndOfStream,
    /// Reading from or writing to the connection failed.
    Io(Arc<io::Error>),
    /// The broker sent DISCONNECT (v5).
    Broker {
        /// The DISCONNECT reason code.
        reason: DisconnectReason,
        /// The DISCONNECT reason string, if any.
        reason_string: Option<String>,
        /// The DISCONNECT Server Reference: the server the client should use instead,
        /// sent with Use Another Server or Server Moved.
        server_reference: Option<String>,
    },
    /// A packet this client built could not be encoded; this is a bug in mqttlink.
    EncodeFailed(String),
}

impl fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndOfStream => f.write_str("broker closed the connection"),
            Self::Io(error) => write!(f, "I/O error: {error}"),
            Self::Broker { reason, .. } => write!(f, "broker sent DISCONNECT with {reason:?}"),
            Self::EncodeFailed(error) => write!(f, "failed to encode a packet: {error}"),
        }
    }
}

/// Why the client disconnected, as reported by [`Event::Disconnected`](crate::Event).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The application asked to disconnect, or dropped every handle of the client.
    Requested,
    /// The connection failed or was lost.
    Failed(ClientError),
}

impl DisconnectCause {
    /// Returns the Server Reference (v5) of the CONNACK or DISCONNECT that ended the
    /// connection, if the broker sent one.
    #[must_use]
    pub fn server_reference(&self) -> Option<&str> {
        match self {
            Self::Failed(
                ClientError::ConnectRefused {
                    server_reference, ..
                }
                | ClientError::ConnectionClosed(ClosedBy::Broker {
                    server_reference, ..
                }),
            ) => server_reference.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("disconnect requested"),
            Self::Failed(error) => write!(f, "{error}"),
        }
    }
}

impl From<RequestError> for ClientError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::PacketTooLarge { size, max } => Self::PacketTooLarge { size, max },
            RequestError::Invalid(message) => Self::InvalidRequest(message),
            RequestError::Expired { interval } => Self::Expired { interval },
            RequestError::Rejected {
                reason,
                reason_string,
            } => Self::Rejected {
                reason,
                reason_string,
            },
        }
    }
}

impl From<CloseReason> for DisconnectCause {
    fn from(reason: CloseReason) -> Self {
        let error = match reason {
            CloseReason::Requested => return Self::Requested,
            CloseReason::ConnectTimeout => ClientError::ConnectTimeout,
            CloseReason::KeepAliveTimeout => ClientError::KeepAliveTimeout,
            CloseReason::ConnectRefused {
                reason,
                reason_string,
                server_reference,
            } => ClientError::ConnectRefused {
                reason,
                reason_string,
                server_reference,
            },
            CloseReason::ProtocolViolation(violation) => ClientError::ProtocolViolation(violation),
            CloseReason::DisconnectedByBroker {
                reason,
                reason_string,
                server_reference,
            } => ClientError::ConnectionClosed(ClosedBy::Broker {
                reason,
                reason_string,
                server_reference,
            }),
        };
        Self::Failed(error)
    }
}
