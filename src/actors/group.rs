//! What the actors of a client share: the messages between them, the traffic counters,
//! and the process-wide count of live actors.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use actix::dev::RecipientRequest;
use actix::prelude::*;

use crate::codec::Properties;
use crate::session::{InboundAck, Outcome, RequestError};
use crate::store::RequestToken;
use crate::Message as InboundMessage;

use super::client::PendingRequests;
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
#[derive(Debug)]
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
    /// The supervisor's waiting callers. The group completes a QoS 0 publish once it is
    /// written and a QoS 1 or 2 publish once it is acknowledged.
    pub pending: PendingRequests,
}

impl Wire {
    pub fn new(pending: PendingRequests) -> Self {
        Self {
            reader: RefCell::new(None),
            writer: RefCell::new(None),
            pending,
        }
    }
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

/// A send of an inbound message into the full mailbox of `recipient`, resolving once
/// the recipient has handled the message.
pub(crate) struct RoomRequest {
    pub recipient: Rc<Recipient<InboundMessage>>,
    pub request: Pin<Box<RecipientRequest<InboundMessage>>>,
    /// The acknowledgement the message owes the broker once delivered.
    pub ack: Option<InboundAck>,
}

/// Sends into full mailboxes. actix skips a queued message whose send is dropped, and
/// such a message may already count as delivered, so the sends must stay held until
/// their recipients have the message.
#[derive(Default)]
pub(crate) struct RoomRequests(pub Vec<RoomRequest>);

impl RoomRequests {
    /// Polls every send once and keeps those still pending. An error means the
    /// recipient stopped, which ends its send too.
    pub fn retain_pending(&mut self, task: &mut std::task::Context<'_>) {
        self.0
            .retain_mut(|room| Future::poll(room.request.as_mut(), task).is_pending());
    }

    /// Drops the sends that have resolved, without registering for a wake-up.
    pub fn prune(&mut self) {
        let waker = std::task::Waker::from(std::sync::Arc::new(NoWake));
        self.retain_pending(&mut std::task::Context::from_waker(&waker));
    }

    /// Drops the sends that have resolved, then removes and returns those for which
    /// `selected` is `true`.
    pub fn take_pending_where(
        &mut self,
        selected: impl FnMut(&RoomRequest) -> bool,
    ) -> Vec<RoomRequest> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.prune();
        let (taken, kept) = std::mem::take(&mut self.0).into_iter().partition(selected);
        self.0 = kept;
        taken
    }
}

impl std::fmt::Debug for RoomRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sends waiting for room", self.0.len())
    }
}

/// Waker for polls whose result is read at once: nothing waits to be woken.
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: std::sync::Arc<Self>) {}
}
