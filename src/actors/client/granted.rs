//! The subscriptions the broker granted, kept by the supervisor so that a reconnect that
//! finds no session on the broker can subscribe again. Routes to recipients stay in the
//! router; this keeps only what a new SUBSCRIBE needs.

use std::num::NonZeroU32;

use crate::codec::{
    BoxedProperties, SubAckReason, SubscriptionOptions, TopicFilter, UnsubAckReason,
};
use crate::store::Request;

/// One granted filter with the options and properties it was subscribed with.
#[derive(Debug, Clone)]
struct Entry {
    filter: TopicFilter,
    options: SubscriptionOptions,
    properties: BoxedProperties,
    automatic_identifier: Option<NonZeroU32>,
}

/// Granted subscriptions in the order they were granted.
#[derive(Debug, Default)]
pub(super) struct Granted {
    entries: Vec<Entry>,
}

impl Granted {
    /// Records each filter of a completed SUBSCRIBE whose reason code is a success,
    /// replacing an earlier entry of the same filter as the broker does.
    pub fn record(&mut self, request: &Request, reasons: &[SubAckReason]) {
        let Request::Subscribe {
            filters,
            properties,
            automatic_identifier,
        } = request
        else {
            return;
        };
        for (index, (filter, options)) in filters.iter().enumerate() {
            if !reasons.get(index).is_some_and(|reason| reason.is_success()) {
                continue;
            }
            self.entries.retain(|entry| entry.filter != *filter);
            self.entries.push(Entry {
                filter: filter.clone(),
                options: *options,
                properties: properties.clone(),
                automatic_identifier: *automatic_identifier,
            });
        }
    }

    /// Forgets the filters a completed UNSUBSCRIBE removed. MQTT 3.1.1 UNSUBACK has no
    /// reason codes, so there every filter counts as removed.
    pub fn remove(&mut self, filters: &[TopicFilter], reasons: &[UnsubAckReason]) {
        for (index, filter) in filters.iter().enumerate() {
            let removed = reasons
                .get(index)
                .map_or(true, |reason| reason.is_success());
            if removed {
                self.entries.retain(|entry| entry.filter != *filter);
            }
        }
    }

    /// Returns the number of granted filters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Builds the SUBSCRIBE requests that restore every granted filter. Neighbouring
    /// filters that were subscribed with the same properties share one request, so each
    /// keeps its subscription identifier.
    pub fn requests(&self) -> Vec<Request> {
        let mut requests: Vec<Request> = Vec::new();
        for entry in &self.entries {
            if let Some(Request::Subscribe {
                filters,
                properties,
                automatic_identifier,
            }) = requests.last_mut()
            {
                if *properties == entry.properties
                    && *automatic_identifier == entry.automatic_identifier
                {
                    filters.push((entry.filter.clone(), entry.options));
                    continue;
                }
            }
            requests.push(Request::Subscribe {
                filters: vec![(entry.filter.clone(), entry.options)],
                properties: entry.properties.clone(),
                automatic_identifier: entry.automatic_identifier,
            });
        }
        requests
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
    use crate::codec::{Properties, QoS};

    fn subscribe(filters: &[&str], identifier: Option<u32>) -> Request {
        Request::Subscribe {
            filters: filters
                .iter()
                .map(|filter| {
                    let options = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
                    (filter.parse().unwrap(), options)
                })
                .collect(),
            properties: Properties {
                subscription_identifiers: identifier
                    .and_then(NonZeroU32::new)
                    .into_iter()
                    .collect(),
                ..Properties::default()
            }
            .into(),
            automatic_identifier: identifier.and_then(NonZeroU32::new),
        }
    }

    fn filters_of(request: &Request) -> Vec<String> {
        match request {
            Request::Subscribe { filters, .. } => filters
                .iter()
                .map(|(filter, _)| filter.as_str().to_owned())
                .collect(),
            other => panic!("expected a subscribe, got {other:?}"),
        }
    }

    #[test]
    fn granted_filters_are_restored_in_order() {
        let mut granted = Granted::default();
        granted.record(
            &subscribe(&["a", "b", "c"], Some(1)),
            &[
                SubAckReason::GrantedQoS1,
                SubAckReason::NotAuthorized,
                SubAckReason::GrantedQoS0,
            ],
        );
        granted.record(&subscribe(&["d"], Some(2)), &[SubAckReason::GrantedQoS1]);
        assert_eq!(granted.len(), 3);

        let requests = granted.requests();
        assert_eq!(requests.len(), 2, "one request per identifier");
        assert_eq!(filters_of(&requests[0]), ["a", "c"]);
        assert_eq!(filters_of(&requests[1]), ["d"]);
    }

    #[test]
    fn resubscribing_a_filter_replaces_it() {
        let mut granted = Granted::default();
        granted.record(&subscribe(&["a"], Some(1)), &[SubAckReason::GrantedQoS1]);
        granted.record(&subscribe(&["a"], Some(2)), &[SubAckReason::GrantedQoS2]);
        assert_eq!(granted.len(), 1);
        let requests = granted.requests();
        let Request::Subscribe {
            automatic_identifier,
            ..
        } = &requests[0]
        else {
            panic!("expected a subscribe");
        };
        assert_eq!(*automatic_identifier, NonZeroU32::new(2));
    }

    #[test]
    fn unsubscribe_forgets_removed_filters() {
        let mut granted = Granted::default();
        granted.record(
            &subscribe(&["a", "b"], None),
            &[SubAckReason::GrantedQoS1, SubAckReason::GrantedQoS1],
        );
        let a: TopicFilter = "a".parse().unwrap();
        let b: TopicFilter = "b".parse().unwrap();

        granted.remove(&[a], &[UnsubAckReason::NoSubscriptionExisted]);
        granted.remove(std::slice::from_ref(&b), &[UnsubAckReason::NotAuthorized]);
        assert_eq!(granted.len(), 1, "a removed, b kept");

        granted.remove(&[b], &[]);
        assert_eq!(granted.len(), 0, "3.1.1 removes without reason codes");
    }
}
