//! The in-memory store, and a shared handle to it for the session and its supervisor,
//! which run on the same thread.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use crate::codec::PacketId;

use super::{OutboundFlow, QueuedRequest, Store};

/// Session state kept in memory; it lasts as long as the client, not the process.
#[derive(Debug)]
pub struct MemoryStore {
    queue: VecDeque<QueuedRequest>,
    queue_capacity: usize,
    /// Sum of [`Request::queued_size`](super::Request::queued_size) over `queue`.
    queued_bytes: usize,
    max_queued_bytes: Option<usize>,
    cursor: PacketId,
    /// Outbound flows with the sequence number of their first insertion.
    outbound: BTreeMap<PacketId, (u64, OutboundFlow)>,
    /// Sequence number of the last flow inserted under a free identifier.
    next_sequence: u64,
    /// Number of `OutboundFlow::Publish` entries in `outbound`, kept so that the session
    /// can check its in-flight window for each request without a scan of every flow.
    outbound_publishes: usize,
    inbound: BTreeSet<PacketId>,
}

impl MemoryStore {
    /// Creates an empty store whose request queue holds at most `queue_capacity` requests.
    #[must_use]
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            queue_capacity,
            queued_bytes: 0,
            max_queued_bytes: None,
            cursor: PacketId::MIN,
            outbound: BTreeMap::new(),
            next_sequence: 0,
            outbound_publishes: 0,
            inbound: BTreeSet::new(),
        }
    }

    /// Limits the queued requests to `max` bytes as [`Store::queued_bytes`] counts them;
    /// `None`, the default, sets no byte limit.
    #[must_use]
    pub fn with_max_queued_bytes(mut self, max: Option<usize>) -> Self {
        self.max_queued_bytes = max;
        self
    }

    fn count_out(&mut self, request: &QueuedRequest) {
        self.queued_bytes = self
            .queued_bytes
            .saturating_sub(request.request.queued_size());
    }
}

impl Store for MemoryStore {
    fn push_request(&mut self, request: QueuedRequest) -> Result<(), QueuedRequest> {
        if self.queue.len() >= self.queue_capacity {
            return Err(request);
        }
        let bytes = self
            .queued_bytes
            .saturating_add(request.request.queued_size());
        if self.max_queued_bytes.is_some_and(|max| bytes > max) {
            return Err(request);
        }
        self.queued_bytes = bytes;
        self.queue.push_back(request);
        Ok(())
    }

    fn push_front_request(&mut self, request: QueuedRequest) {
        self.queued_bytes = self
            .queued_bytes
            .saturating_add(request.request.queued_size());
        self.queue.push_front(request);
    }

    fn pop_request(&mut self) -> Option<QueuedRequest> {
        let request = self.queue.pop_front()?;
        self.count_out(&request);
        Some(request)
    }

    fn remove_first_request(
        &mut self,
        select: &mut dyn FnMut(&QueuedRequest) -> bool,
    ) -> Option<QueuedRequest> {
        let index = self.queue.iter().position(select)?;
        let request = self.queue.remove(index)?;
        self.count_out(&request);
        Some(request)
    }

    fn queued_len(&self) -> usize {
        self.queue.len()
    }

    fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn packet_id_cursor(&self) -> PacketId {
        self.cursor
    }

    fn set_packet_id_cursor(&mut self, id: PacketId) {
        self.cursor = id;
    }

    fn insert_outbound(&mut self, id: PacketId, flow: OutboundFlow) {
        let is_publish = matches!(flow, OutboundFlow::Publish { .. });
        // A flow that moves on (PUBREC to PUBCOMP) keeps its place in the sending order.
        let sequence = if let Some((sequence, _)) = self.outbound.get(&id) {
            *sequence
        } else {
            self.next_sequence += 1;
            self.next_sequence
        };
        let replaced = self.outbound.insert(id, (sequence, flow));
        if matches!(replaced, Some((_, OutboundFlow::Publish { .. }))) {
            self.outbound_publishes = self.outbound_publishes.saturating_sub(1);
        }
        if is_publish {
            self.outbound_publishes += 1;
        }
    }

    fn outbound(&self, id: PacketId) -> Option<OutboundFlow> {
        self.outbound.get(&id).map(|(_, flow)| flow.clone())
    }

    fn contains_outbound(&self, id: PacketId) -> bool {
        self.outbound.contains_key(&id)
    }

    fn outbound_ids(&self) -> Vec<PacketId> {
        let mut ids: Vec<(u64, PacketId)> = self
            .outbound
            .iter()
            .map(|(id, (sequence, _))| (*sequence, *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    fn remove_outbound(&mut self, id: PacketId) -> Option<OutboundFlow> {
        let (_, removed) = self.outbound.remove(&id)?;
        if matches!(removed, OutboundFlow::Publish { .. }) {
            self.outbound_publishes = self.outbound_publishes.saturating_sub(1);
        }
        Some(removed)
    }

    fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    fn outbound_publish_len(&self) -> usize {
        self.outbound_publishes
    }

    fn insert_inbound(&mut self, id: PacketId) -> bool {
        self.inbound.insert(id)
    }

    fn remove_inbound(&mut self, id: PacketId) -> bool {
        self.inbound.remove(&id)
    }

    fn contains_inbound(&self, id: PacketId) -> bool {
        self.inbound.contains(&id)
    }

    fn clear_inbound(&mut self) {
        self.inbound.clear();
    }

    fn inbound_len(&self) -> usize {
        self.inbound.len()
    }

    fn take_all_requests(&mut self) -> (Vec<QueuedRequest>, Vec<OutboundFlow>) {
        self.queued_bytes = 0;
        let queued = self.queue.drain(..).collect();
        let outbound = std::mem::take(&mut self.outbound)
            .into_values()
            .map(|(_, flow)| flow)
            .collect();
        self.outbound_publishes = 0;
        (queued, outbound)
    }
}

/// A [`MemoryStore`] shared by the supervisor, which owns it for the client's lifetime,
/// and the session of the current connection, which updates it as packets flow.
///
/// Each call borrows the store only for its own duration, so the two sides never hold
/// a borrow across a suspension point.
#[derive(Debug, Clone)]
pub struct SharedStore(Rc<RefCell<MemoryStore>>);

impl SharedStore {
    /// Wraps a store for sharing.
    #[must_use]
    pub fn new(store: MemoryStore) -> Self {
        Self(Rc::new(RefCell::new(store)))
    }
}

impl Store for SharedStore {
    fn push_request(&mut self, request: QueuedRequest) -> Result<(), QueuedRequest> {
        self.0.borrow_mut().push_request(request)
    }

    fn push_front_request(&mut self, request: QueuedRequest) {
        self.0.borrow_mut().push_front_request(request);
    }

    fn pop_request(&mut self) -> Option<QueuedRequest> {
        self.0.borrow_mut().pop_request()
    }

    fn remove_first_request(
        &mut self,
        select: &mut dyn FnMut(&QueuedRequest) -> bool,
    ) -> Option<QueuedRequest> {
        self.0.borrow_mut().remove_first_request(select)
    }

    fn queued_len(&self) -> usize {
        self.0.borrow().queued_len()
    }

    fn queued_bytes(&self) -> usize {
        self.0.borrow().queued_bytes()
    }

    fn packet_id_cursor(&self) -> PacketId {
        self.0.borrow().packet_id_cursor()
    }

    fn set_packet_id_cursor(&mut self, id: PacketId) {
        self.0.borrow_mut().set_packet_id_cursor(id);
    }

    fn insert_outbound(&mut self, id: PacketId, flow: OutboundFlow) {
        self.0.borrow_mut().insert_outbound(id, flow);
    }

    fn outbound(&self, id: PacketId) -> Option<OutboundFlow> {
        self.0.borrow().outbound(id)
    }

    fn contains_outbound(&self, id: PacketId) -> bool {
        self.0.borrow().contains_outbound(id)
    }

    fn outbound_ids(&self) -> Vec<PacketId> {
        self.0.borrow().outbound_ids()
    }

    fn remove_outbound(&mut self, id: PacketId) -> Option<OutboundFlow> {
        self.0.borrow_mut().remove_outbound(id)
    }

    fn outbound_len(&self) -> usize {
        self.0.borrow().outbound_len()
    }

    fn outbound_publish_len(&self) -> usize {
        self.0.borrow().outbound_publish_len()
    }

    fn insert_inbound(&mut self, id: PacketId) -> bool {
        self.0.borrow_mut().insert_inbound(id)
    }

    fn remove_inbound(&mut self, id: PacketId) -> bool {
        self.0.borrow_mut().remove_inbound(id)
    }

    fn contains_inbound(&self, id: PacketId) -> bool {
        self.0.borrow().contains_inbound(id)
    }

    fn clear_inbound(&mut self) {
        self.0.borrow_mut().clear_inbound();
    }

    fn inbound_len(&self) -> usize {
        self.0.borrow().inbound_len()
    }

    fn take_all_requests(&mut self) -> (Vec<QueuedRequest>, Vec<OutboundFlow>) {
        self.0.borrow_mut().take_all_requests()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn queued_requests_stay_small() {
        // Every publish moves several times between the caller and the session: into
        // the supervisor's mailbox, the queue and the packet.
        let request = std::mem::size_of::<QueuedRequest>();
        let publish = std::mem::size_of::<crate::Publish>();
        assert!(request <= 128, "QueuedRequest is {request} bytes");
        assert!(publish <= 128, "Publish is {publish} bytes");
    }
    use crate::store::{Request, RequestToken};

    fn unsubscribe(token: u64) -> QueuedRequest {
        QueuedRequest {
            token: RequestToken(token),
            request: Request::Unsubscribe {
                filters: vec!["a/b".parse().unwrap()],
                properties: crate::codec::BoxedProperties::default(),
            },
            queued_at: std::time::Instant::now(),
        }
    }

    fn publish(token: u64, payload: &'static [u8]) -> QueuedRequest {
        QueuedRequest {
            token: RequestToken(token),
            request: Request::Publish(crate::store::OutgoingPublish {
                topic: "a/b".parse().unwrap(),
                payload: bytes::Bytes::from_static(payload),
                qos: crate::codec::QoS::AtLeastOnce,
                retain: false,
                properties: crate::codec::BoxedProperties::default(),
            }),
            queued_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn queued_size_counts_topic_payload_and_properties() {
        let mut request = publish(1, b"12345");
        assert_eq!(request.request.queued_size(), 2 + 3 + 5);
        if let Request::Publish(publish) = &mut request.request {
            publish.properties.content_type = Some("text".into());
            publish.properties.user_properties = vec![("k".into(), "vv".into())];
        }
        assert_eq!(request.request.queued_size(), 10 + 6 + 3 + 4);
        assert_eq!(unsubscribe(2).request.queued_size(), 2 + 3);
    }

    #[test]
    fn queue_rejects_request_beyond_byte_limit() {
        // Each publish counts 2 + 3 bytes of topic and 5 of payload.
        let mut store = MemoryStore::new(8).with_max_queued_bytes(Some(25));
        store.push_request(publish(1, b"aaaaa")).unwrap();
        store.push_request(publish(2, b"bbbbb")).unwrap();
        assert_eq!(store.queued_bytes(), 20);
        let rejected = store.push_request(publish(3, b"ccccc")).unwrap_err();
        assert_eq!(rejected.token, RequestToken(3));
        assert_eq!(store.queued_len(), 2);

        store.pop_request().unwrap();
        assert_eq!(store.queued_bytes(), 10);
        store.push_request(publish(3, b"ccccc")).unwrap();
        assert_eq!(store.queued_bytes(), 20);
    }

    #[test]
    fn remove_first_request_keeps_order_and_bytes() {
        let mut store = MemoryStore::new(8);
        for token in 1..=3 {
            store.push_request(publish(token, b"x")).unwrap();
        }
        let removed = store
            .remove_first_request(&mut |queued| queued.token.0 >= 2)
            .unwrap();
        assert_eq!(removed.token, RequestToken(2));
        assert_eq!(store.queued_bytes(), 12);
        assert!(store.remove_first_request(&mut |_| false).is_none());
        assert_eq!(store.pop_request().unwrap().token, RequestToken(1));
        assert_eq!(store.pop_request().unwrap().token, RequestToken(3));
        assert_eq!(store.queued_bytes(), 0);
    }

    #[test]
    fn queue_rejects_request_beyond_capacity() {
        let mut store = MemoryStore::new(1);
        store.push_request(unsubscribe(1)).unwrap();
        let rejected = store.push_request(unsubscribe(2)).unwrap_err();
        assert_eq!(rejected.token, RequestToken(2));
        assert_eq!(store.queued_len(), 1);
    }

    #[test]
    fn shared_handles_see_same_state() {
        let mut first = SharedStore::new(MemoryStore::new(4));
        let second = first.clone();
        let id = PacketId::try_from(7).unwrap();
        first.insert_outbound(
            id,
            OutboundFlow::Subscribe {
                token: RequestToken(1),
                filter_count: 1,
            },
        );
        assert_eq!(second.outbound_len(), 1);
        assert_eq!(second.outbound(id).unwrap().token(), Some(RequestToken(1)));
    }

    #[test]
    fn take_all_requests_empties_queue_and_flows() {
        let mut store = MemoryStore::new(4);
        store.push_request(unsubscribe(1)).unwrap();
        store.insert_outbound(
            PacketId::MIN,
            OutboundFlow::Unsubscribe {
                token: RequestToken(2),
                filter_count: 1,
            },
        );
        let (queued, outbound) = store.take_all_requests();
        assert_eq!(queued.len(), 1);
        assert_eq!(outbound.len(), 1);
        assert_eq!(store.queued_len(), 0);
        assert_eq!(store.outbound_len(), 0);
    }
    #[test]
    fn publish_count_follows_inserts_and_removals() {
        let mut store = MemoryStore::new(4);
        let publish = |token| OutboundFlow::Publish {
            token: RequestToken(token),
            packet: crate::codec::Publish {
                dup: false,
                delivery: crate::codec::Delivery::AtLeastOnce(PacketId::MIN),
                retain: false,
                topic: Some("a/b".parse().unwrap()),
                properties: crate::codec::Properties::default().into(),
                payload: bytes::Bytes::new(),
            },
            awaiting: crate::store::AwaitedAck::PubAck,
        };
        let first = PacketId::MIN;
        let second = first.next_wrapping();
        store.insert_outbound(first, publish(1));
        store.insert_outbound(second, publish(2));
        assert_eq!(store.outbound_publish_len(), 2);

        // Replacing a publish with a publish, as PUBREC does, keeps the count.
        store.insert_outbound(first, publish(1));
        assert_eq!(store.outbound_publish_len(), 2);

        let subscribe = OutboundFlow::Subscribe {
            token: RequestToken(3),
            filter_count: 1,
        };
        store.insert_outbound(second, subscribe);
        assert_eq!(store.outbound_publish_len(), 1, "replaced by a subscribe");
        store.remove_outbound(second);
        assert_eq!(store.outbound_publish_len(), 1, "a subscribe removed");
        store.remove_outbound(first);
        assert_eq!(store.outbound_publish_len(), 0);
        assert!(store.remove_outbound(first).is_none());
        assert_eq!(store.outbound_publish_len(), 0, "a missing flow removed");

        store.insert_outbound(first, publish(4));
        store.take_all_requests();
        assert_eq!(store.outbound_publish_len(), 0, "every flow taken");
    }
    #[test]
    fn outbound_ids_keep_first_insertion_order() {
        let mut store = MemoryStore::new(4);
        let flow = |token| OutboundFlow::Unsubscribe {
            token: RequestToken(token),
            filter_count: 1,
        };
        let last = PacketId::MAX;
        let first = PacketId::MIN;
        let second = first.next_wrapping();
        store.insert_outbound(last, flow(1));
        store.insert_outbound(second, flow(2));
        store.insert_outbound(first, flow(3));
        assert_eq!(store.outbound_ids(), [last, second, first]);

        // A flow replaced under its identifier keeps its place.
        store.insert_outbound(last, flow(1));
        assert_eq!(store.outbound_ids(), [last, second, first]);

        // An identifier freed and used again goes to the end.
        store.remove_outbound(second);
        store.insert_outbound(second, flow(4));
        assert_eq!(store.outbound_ids(), [last, first, second]);
    }
}
