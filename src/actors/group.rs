//! What the actors of a client share: the messages between them, the traffic counters,
//! and the process-wide count of live actors.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use actix::dev::RecipientRequest;
use actix::prelude::*;

use crate::codec::Properties;
use crate::session::{Outcome, RequestError};
use crate::store::RequestToken;
use crate::Message as InboundMessage;

use super::socket::{PacketReader, PacketWriter};

static LIVE_ACTORS: AtomicUsize = AtomicUsize::new(0);

/// Returns the number of mqttlink actors alive in this process, over all clients.
///
/// Each client runs one supervisor plus three actors per connection attempt, so a
/// connected client counts 4 and a stopped one 0. Health checks and leak tests compare
/// it with a baseline.
#[must_use]
pub fn live_actor_count() -> usize {
    LIVE_ACTORS.load(Ordering::SeqCst)
}

/// Counts an actor as alive; call from `started`.
pub(crate) fn actor_started() {
    LIVE_ACTORS.fetch_add(1, Ordering::SeqCst);
}

/// Counts an actor as gone; call from `stopped`.
pub(crate) fn actor_stopped() {
    LIVE_ACTORS.fetch_sub(1, Ordering::SeqCst);
}

/// Traffic counters of one client, shared by its actors on one thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub packets_in: Cell<u64>,
    pub packets_out: Cell<u64>,
    pub inflight_in: Cell<usize>,
    pub dropped_messages: Cell<u64>,
}

impl Counters {
    /// Adds `amount` to `counter`.
    pub fn add(counter: &Cell<u64>, amount: u64) {
        counter.set(counter.get().saturating_add(amount));
    }
}

/// Returns the current instant from tokio's clock, which tests can pause and advance.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Socket to session: the byte stream is open and its reader and writer wait in the
/// [`Wire`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TransportConnected;

/// State the socket and session actors of one group share on their one thread. The
/// client creates it with the group and gives it to both.
#[derive(Debug, Default)]
pub(crate) struct Wire {
    /// The read side of the stream. The socket leaves it here before it sends
    /// [`TransportConnected`], and the session takes it: the session actor reads and
    /// decodes, so packets reach the session without a mailbox in between.
    pub reader: RefCell<Option<PacketReader>>,
    /// The write side of the stream, left here by the socket like the reader. The
    /// session encodes its packets into it and writes them at once, so that an
    /// acknowledgement leaves without a mailbox in between. The socket writes what the
    /// stream did not take.
    pub writer: RefCell<Option<PacketWriter>>,
}

/// Session to socket: bytes wait in the writer that the stream did not take; write
/// them once it is writable.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct FlushPending;

/// Session to keep-alive: call back at this instant, replacing any earlier request.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ArmTimer(pub Option<Instant>);

/// Keep-alive to session: the armed instant has passed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TimerFired;

/// Supervisor to session: requests were pushed into the store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RequestsQueued;

/// Supervisor to session: the application asked to disconnect.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StartDisconnect(pub crate::codec::Disconnect);

/// Session to supervisor: what the session learned.
#[derive(Debug, Message)]
#[rtype(result = "()")]
#[allow(clippy::large_enum_variant)] // Connected is sent once per connection.
pub(crate) enum SessionUpdate {
    /// CONNACK accepted the connection.
    Connected {
        session_present: bool,
        properties: Properties,
    },
    /// Queued requests completed, in the order the session completed them.
    Completed(Vec<(RequestToken, Result<Outcome, RequestError>)>),
}

/// Sends of an inbound message into full mailboxes, each resolving once its recipient
/// has handled the message.
#[derive(Default)]
pub(crate) struct RoomRequests(pub Vec<Pin<Box<RecipientRequest<InboundMessage>>>>);

impl std::fmt::Debug for RoomRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sends waiting for room", self.0.len())
    }
}

/// Session to supervisor, as the session stops: keep waiting on these sends. actix
/// skips a queued message whose send is no longer awaited, and the message may already
/// count as delivered, so the wait must outlive the group.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KeepDelivering(pub RoomRequests);

/// Socket to supervisor: the packets of these QoS 0 publishes are written.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Written(pub Vec<RequestToken>);
