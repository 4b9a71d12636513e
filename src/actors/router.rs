//! Subscription routes: which recipients get an incoming message.
//!
//! The supervisor owns the routes for the client's lifetime; the session actor of each
//! connection reads them to deliver. Matching follows the topic filter rules, including
//! shared subscriptions; a v5 subscription identifier on a message routes it exactly.

use std::num::NonZeroU32;
use std::rc::Rc;

use actix::Recipient;

use crate::codec::TopicFilter;
use crate::Message;

/// Identifies one route, so that a refused filter removes only its own route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteId(u64);

#[derive(Debug)]
struct Route {
    id: RouteId,
    filter: TopicFilter,
    recipient: Rc<Recipient<Message>>,
    subscription_identifier: Option<NonZeroU32>,
}

/// The routes of one client, plus the recipient of messages no route matches.
#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Vec<Route>,
    next_id: u64,
    default: Option<Rc<Recipient<Message>>>,
    unmatched: u64,
}

impl Router {
    /// Adds a route and returns its identifier.
    pub fn add(
        &mut self,
        filter: TopicFilter,
        recipient: Recipient<Message>,
        subscription_identifier: Option<NonZeroU32>,
    ) -> RouteId {
        let id = RouteId(self.next_id);
        self.next_id += 1;
        self.routes.push(Route {
            id,
            filter,
            recipient: Rc::new(recipient),
            subscription_identifier,
        });
        id
    }

    /// Removes the routes with the given identifiers.
    pub fn remove_ids(&mut self, ids: &[RouteId]) {
        self.routes.retain(|route| !ids.contains(&route.id));
    }

    /// Removes every route with this filter, whatever its recipient.
    pub fn remove_filter(&mut self, filter: &TopicFilter) {
        self.routes.retain(|route| route.filter != *filter);
    }

    /// Removes every route to `recipient`, and clears it as the default recipient, once
    /// its actor has stopped.
    pub fn remove_recipient(&mut self, recipient: &Recipient<Message>) {
        self.routes.retain(|route| *route.recipient != *recipient);
        if self.default.as_deref() == Some(recipient) {
            self.default = None;
        }
    }

    /// Sets the recipient of messages that match no route.
    pub fn set_default(&mut self, recipient: Recipient<Message>) {
        self.default = Some(Rc::new(recipient));
    }

    /// Returns the number of messages that matched no route and had no default recipient.
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }

    /// Replaces the contents of `recipients` with each recipient that gets `message`,
    /// once each, in route order. The caller reuses the vector, so routing a message
    /// allocates nothing once it has grown to the number of recipients.
    ///
    /// The recipients are shared, not cloned: actix bounds a mailbox per sender, so
    /// sending every message through the same sender is what makes `try_send` report a
    /// full mailbox.
    ///
    /// A message carrying subscription identifiers goes to the routes subscribed with one
    /// of them; otherwise, or when none of them is known, to every route whose filter
    /// matches the topic. With no match it goes to the default recipient, if any.
    pub fn collect_recipients(
        &mut self,
        message: &Message,
        recipients: &mut Vec<Rc<Recipient<Message>>>,
    ) {
        recipients.clear();
        let identifiers = &message.properties.subscription_identifiers;
        if !identifiers.is_empty() {
            let by_identifier = self.routes.iter().filter(|route| {
                route
                    .subscription_identifier
                    .is_some_and(|id| identifiers.contains(&id))
            });
            push_unique(recipients, by_identifier);
        }
        if recipients.is_empty() {
            let by_filter = self
                .routes
                .iter()
                .filter(|route| route.filter.matches(&message.topic));
            push_unique(recipients, by_filter);
        }
        if recipients.is_empty() {
            match &self.default {
                Some(default) => recipients.push(Rc::clone(default)),
                None => self.unmatched += 1,
            }
        }
    }
}

/// Appends the recipient of each route in `routes` that `recipients` does not contain yet.
fn push_unique<'a>(
    recipients: &mut Vec<Rc<Recipient<Message>>>,
    routes: impl Iterator<Item = &'a Route>,
) {
    for route in routes {
        if !recipients.iter().any(|known| **known == *route.recipient) {
            recipients.push(Rc::clone(&route.recipient));
        }
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
    use actix::{Actor, Context, Handler, Recipient};
    use bytes::Bytes;

    use super::*;
    use crate::codec::{Properties, QoS};

    struct Sink;

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Message> for Sink {
        type Result = ();
        fn handle(&mut self, _: Message, _: &mut Context<Self>) {}
    }

    /// Returns the recipients of `message` as plain values, for comparing.
    fn routed(router: &mut Router, message: &Message) -> Vec<Recipient<Message>> {
        let mut recipients = Vec::new();
        router.collect_recipients(message, &mut recipients);
        recipients.iter().map(|r| (**r).clone()).collect()
    }

    fn message(topic: &str, identifiers: &[u32]) -> Message {
        Message {
            topic: topic.parse().unwrap(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            dup: false,
            properties: Properties {
                subscription_identifiers: identifiers
                    .iter()
                    .map(|id| NonZeroU32::new(*id).unwrap())
                    .collect(),
                ..Properties::default()
            }
            .into(),
        }
    }

    #[actix_rt::test]
    async fn routes_by_filter_once_per_recipient() {
        let first = Sink.start().recipient();
        let second = Sink.start().recipient();
        let mut router = Router::default();
        router.add("a/+".parse().unwrap(), first.clone(), None);
        router.add("a/#".parse().unwrap(), first.clone(), None);
        router.add("$share/g/a/b".parse().unwrap(), second.clone(), None);

        assert_eq!(
            routed(&mut router, &message("a/b", &[])),
            [first.clone(), second]
        );
        assert_eq!(routed(&mut router, &message("a/c/d", &[])), [first]);
        assert!(routed(&mut router, &message("b", &[])).is_empty());
        assert_eq!(router.unmatched(), 1);
    }

    #[actix_rt::test]
    async fn collect_recipients_replaces_previous_contents() {
        let first = Sink.start().recipient();
        let second = Sink.start().recipient();
        let mut router = Router::default();
        router.add("a".parse().unwrap(), first.clone(), None);
        router.add("b".parse().unwrap(), second.clone(), None);

        let mut recipients = Vec::new();
        router.collect_recipients(&message("a", &[]), &mut recipients);
        router.collect_recipients(&message("b", &[]), &mut recipients);
        assert_eq!(recipients.len(), 1);
        assert!(*recipients[0] == second);
        router.collect_recipients(&message("c", &[]), &mut recipients);
        assert!(recipients.is_empty());
    }

    #[actix_rt::test]
    async fn subscription_identifier_routes_exactly() {
        let first = Sink.start().recipient();
        let second = Sink.start().recipient();
        let mut router = Router::default();
        router.add("a/#".parse().unwrap(), first.clone(), NonZeroU32::new(1));
        router.add("a/+".parse().unwrap(), second.clone(), NonZeroU32::new(2));

        assert_eq!(routed(&mut router, &message("a/b", &[2])), [second]);
        assert_eq!(
            routed(&mut router, &message("a/b", &[9])).len(),
            2,
            "unknown id falls back to filters"
        );
    }

    #[actix_rt::test]
    async fn default_recipient_and_removal() {
        let target = Sink.start().recipient();
        let fallback = Sink.start().recipient();
        let mut router = Router::default();
        let id = router.add("x".parse().unwrap(), target.clone(), None);
        router.add("y".parse().unwrap(), target, None);
        router.set_default(fallback.clone());

        router.remove_ids(&[id]);
        assert_eq!(
            routed(&mut router, &message("x", &[])),
            std::slice::from_ref(&fallback)
        );
        router.remove_filter(&"y".parse().unwrap());
        assert_eq!(
            routed(&mut router, &message("y", &[])),
            std::slice::from_ref(&fallback)
        );
        assert_eq!(router.unmatched(), 0);

        router.remove_recipient(&fallback);
        assert!(routed(&mut router, &message("y", &[])).is_empty());
        assert_eq!(router.unmatched(), 1);
    }
}
