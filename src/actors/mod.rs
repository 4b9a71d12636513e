//! The actor layer, the only one that knows actix: the client supervisor and the linked
//! group of three actors it starts for each connection attempt.
//!
//! ```text
//!              ClientActor (supervisor: store, routes, pending requests, listeners)
//!                   |  starts one group per attempt, gets one GroupDown per group
//!       +-----------+------------+
//!   SessionActor  KeepAliveActor  SocketActor     linked: one fate
//! ```
//!
//! The three group members share a `Link` whose first trigger stops them all and tells
//! the supervisor once. What must outlive a connection is in the supervisor's store,
//! which the session updates as packets flow.

mod client;
mod group;
mod keep_alive;
mod link;
mod messages;
mod router;
mod session;
mod socket;

use crate::session::SessionConfig;
use crate::transport::Endpoint;

pub use client::ClientActor;
pub(crate) use client::QueueConfig;
pub use group::live_actor_count;
pub(crate) use messages::Submit;
pub use messages::{
    Disconnect, DropReason, Event, GetStats, Message, Publish, SetDefaultRecipient, Stats,
    Subscribe, SubscribeEvents, Unsubscribe,
};

/// Everything the supervisor needs, built from [`ClientOptions`](crate::ClientOptions).
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    /// Where the broker listens.
    pub endpoint: Endpoint,
    /// The session settings, CONNECT fields included.
    pub session: SessionConfig,
    /// Most requests queued or in flight at once.
    pub max_pending_requests: usize,
    /// Largest packet accepted from the broker, in bytes.
    pub max_packet_size_in: u32,
    /// The byte limit and the policies of the request queue.
    pub queue: client::QueueConfig,
    /// Whether the first connection may resume a session an earlier process left on
    /// the broker.
    pub adopt_broker_session: bool,
}
