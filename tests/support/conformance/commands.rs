//! The client side of a conformance sequence: starting an mqttlink client with the
//! sequences' settings and performing a sequence's command once it is connected.
//!
//! Shared by the in-process test runner and the `conformance_driver` example, so both
//! drive the client the same way. Must run inside an actix System. This module does
//! not depend on the fake broker.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use bytestring::ByteString;
use mqttlink::codec::{
    PayloadFormat, Properties, ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, TopicName,
};
use mqttlink::{Client, ClientOptions, Event, Message, Publish, Subscribe, Unsubscribe};
use tokio::sync::mpsc;

/// Client identifier that the sequences expect in CONNECT.
pub const CLIENT_ID: &str = "fuzzish";

/// Keep-alive that the sequences expect in CONNECT.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Receive Maximum that the sequences expect in a v5 CONNECT.
pub const RECEIVE_MAXIMUM: u16 = 20;

/// Maximum wait for the client to connect before the command is given up.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Maximum time a client started by [`run_client`] is kept, connected or not.
pub const CLIENT_LIFETIME: Duration = Duration::from_secs(30);

/// Subscription identifier of a v5 SUBSCRIBE, the largest the specification allows.
const SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

/// Correlation data of a v5 PUBLISH.
const CORRELATION_DATA: &[u8] = b"7deac5c5-8802-44ff-86ce-11479f337419";

/// What the client does once connected.
///
/// NOTE: the Mosquitto sequences use only `publish-1`. The packets of the other commands
/// are checked against bytes that this harness chose (`MQTTLINK_SEQUENCES` in
/// `tests/conformance.rs`), among them the QoS 0 of `subscribe-multiple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `publish-0/1/2`: publish `message` to `test/publish` with this QoS.
    Publish(QoS),
    /// `subscribe-0/1/2`: subscribe to `test/subscribe` with this maximum QoS.
    Subscribe(QoS),
    /// `subscribe-multiple`: subscribe to `test/subscribe1` and `test/subscribe2` in
    /// one SUBSCRIBE, both with maximum QoS 0.
    SubscribeMultiple,
    /// `unsubscribe`: unsubscribe from `test/subscribe`.
    Unsubscribe,
    /// `unsubscribe-multiple`: unsubscribe from `test/subscribe1` and `test/subscribe2`
    /// in one UNSUBSCRIBE.
    UnsubscribeMultiple,
}

impl FromStr for Command {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "publish-0" => Ok(Self::Publish(QoS::AtMostOnce)),
            "publish-1" => Ok(Self::Publish(QoS::AtLeastOnce)),
            "publish-2" => Ok(Self::Publish(QoS::ExactlyOnce)),
            "subscribe-0" => Ok(Self::Subscribe(QoS::AtMostOnce)),
            "subscribe-1" => Ok(Self::Subscribe(QoS::AtLeastOnce)),
            "subscribe-2" => Ok(Self::Subscribe(QoS::ExactlyOnce)),
            "subscribe-multiple" => Ok(Self::SubscribeMultiple),
            "unsubscribe" => Ok(Self::Unsubscribe),
            "unsubscribe-multiple" => Ok(Self::UnsubscribeMultiple),
            other => Err(format!(
                "unknown command `{other}`: expected publish-0/1/2, subscribe-0/1/2, \
                 subscribe-multiple, unsubscribe or unsubscribe-multiple"
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Publish(qos) => write!(f, "publish-{}", qos.level()),
            Self::Subscribe(qos) => write!(f, "subscribe-{}", qos.level()),
            Self::SubscribeMultiple => f.write_str("subscribe-multiple"),
            Self::Unsubscribe => f.write_str("unsubscribe"),
            Self::UnsubscribeMultiple => f.write_str("unsubscribe-multiple"),
        }
    }
}

/// One request to the conformance driver: a line `PORT PROTOCOL_LEVEL CLEAN_START
/// [COMMAND]`, where CLEAN_START is `1` or `0` (`true` or `false` are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverLine {
    /// Port of the broker on 127.0.0.1.
    pub port: u16,
    /// Protocol level: 3, 4 or 5.
    pub version: ProtocolVersion,
    /// Clean session (3.1.1) or clean start (5.0) flag.
    pub clean_start: bool,
    /// What the client does once connected.
    pub command: Option<Command>,
}

impl FromStr for DriverLine {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut fields = line.split_whitespace();
        let mut next_field = |name: &str| {
            fields.next().ok_or_else(|| {
                format!("missing {name}: expected PORT PROTOCOL_LEVEL CLEAN_START [COMMAND]")
            })
        };

        let port = next_field("PORT")?;
        let port = port.parse().map_err(|_| format!("invalid port `{port}`"))?;
        let level = next_field("PROTOCOL_LEVEL")?;
        let level = level
            .parse()
            .map_err(|_| format!("invalid protocol level `{level}`: expected 3, 4 or 5"))?;
        let clean_start = match next_field("CLEAN_START")? {
            "1" | "true" => true,
            "0" | "false" => false,
            other => {
                return Err(format!(
                    "invalid clean start flag `{other}`: expected 1 or 0"
                ))
            }
        };
        let command = fields.next().map(str::parse).transpose()?;
        if let Some(extra) = fields.next() {
            return Err(format!("unexpected field `{extra}` after the command"));
        }

        Ok(Self {
            port,
            version: protocol_version(level)?,
            clean_start,
            command,
        })
    }
}

impl fmt::Display for DriverLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clean_start = u8::from(self.clean_start);
        write!(f, "{} {} {clean_start}", self.port, self.version.level())?;
        match self.command {
            Some(command) => write!(f, " {command}"),
            None => Ok(()),
        }
    }
}

/// Returns the protocol version of a protocol level from the sequences.
pub fn protocol_version(level: u8) -> Result<ProtocolVersion, String> {
    ProtocolVersion::try_from(level)
        .map_err(|level| format!("invalid protocol level {level}: expected 3, 4 or 5"))
}

/// Returns the options of a client that connects to 127.0.0.1:`port` the way the
/// sequences expect: client id `fuzzish`, keep-alive 60 s, no reconnect, and for v5
/// Receive Maximum 20.
pub fn client_options(port: u16, version: ProtocolVersion, clean_start: bool) -> ClientOptions {
    let options = ClientOptions::new("127.0.0.1", port)
        .client_id(CLIENT_ID)
        .protocol(version)
        .keep_alive(KEEP_ALIVE)
        .clean_start(clean_start)
        .reconnect(false);
    if version.is_v5() {
        options.receive_maximum(RECEIVE_MAXIMUM)
    } else {
        options
    }
}

/// A started client and the lifecycle events it reports.
#[derive(Debug)]
pub struct StartedClient {
    /// Handle of the client; dropping every clone stops it.
    pub client: Client,
    lifecycle: mpsc::UnboundedReceiver<Lifecycle>,
    v5: bool,
}

/// Starts a client for 127.0.0.1:`port` that drops every incoming message and reports
/// its connection events. Must be called inside a running actix System.
pub fn start_client(
    port: u16,
    version: ProtocolVersion,
    clean_start: bool,
) -> Result<StartedClient, String> {
    let client = client_options(port, version, clean_start)
        .start()
        .map_err(|error| format!("starting the client failed: {error}"))?;

    let (sender, lifecycle) = mpsc::unbounded_channel();
    client.subscribe_events(EventWatcher { sender }.start().recipient());
    client.set_default_recipient(MessageSink.start().recipient());
    Ok(StartedClient {
        client,
        lifecycle,
        v5: version.is_v5(),
    })
}

/// Waits until the client is connected, performs `command` and keeps the client until
/// the connection ends or [`CLIENT_LIFETIME`] has passed. Returns how the run went, for
/// logs and failure messages only: the broker script judges the client.
pub async fn run_client(started: StartedClient, command: Option<Command>) -> String {
    let StartedClient {
        client,
        mut lifecycle,
        v5,
    } = started;
    let run = async {
        match tokio::time::timeout(CONNECT_WAIT, lifecycle.recv()).await {
            Ok(Some(Lifecycle::Connected)) => {}
            Ok(other) => return format!("not connected: {}", describe_end(other)),
            Err(_) => return format!("not connected within {CONNECT_WAIT:?}"),
        }

        let mut report = String::new();
        if let Some(command) = command {
            // Many sequences make the request fail on purpose, so a failure is only
            // reported, and the client handle is kept until the connection ends.
            tokio::select! {
                result = perform(&client, command, v5) => match result {
                    Ok(()) => report = format!("{command} succeeded; "),
                    Err(error) => report = format!("{error}; "),
                },
                event = lifecycle.recv() => return describe_end(event),
            }
        }
        report + &describe_end(lifecycle.recv().await)
    };

    tokio::time::timeout(CLIENT_LIFETIME, run)
        .await
        .unwrap_or_else(|_| format!("still running after {CLIENT_LIFETIME:?}"))
}

/// Performs `command` on a connected client and waits for its acknowledgement. Under
/// 5.0 the request carries the sequences' properties; 3.1 and 3.1.1 have none.
pub async fn perform(client: &Client, command: Command, v5: bool) -> Result<(), String> {
    match command {
        Command::Publish(qos) => {
            let mut publish = Publish::new(topic_name("test/publish")?, "message").qos(qos);
            if v5 {
                publish = publish.properties(publish_properties()?);
            }
            client
                .publish(publish)
                .await
                .map(drop)
                .map_err(|error| format!("publish failed: {error}"))
        }
        Command::Subscribe(qos) => subscribe(client, &["test/subscribe"], qos, v5).await,
        Command::SubscribeMultiple => {
            let filters = ["test/subscribe1", "test/subscribe2"];
            subscribe(client, &filters, QoS::AtMostOnce, v5).await
        }
        Command::Unsubscribe => unsubscribe(client, &["test/subscribe"], v5).await,
        Command::UnsubscribeMultiple => {
            unsubscribe(client, &["test/subscribe1", "test/subscribe2"], v5).await
        }
    }
}

async fn subscribe(client: &Client, filters: &[&str], qos: QoS, v5: bool) -> Result<(), String> {
    let mut subscribe = Subscribe::new(MessageSink.start().recipient());
    if v5 {
        let identifier = NonZeroU32::new(SUBSCRIPTION_IDENTIFIER)
            .ok_or("the subscription identifier must not be zero")?;
        subscribe = subscribe.properties(Properties {
            subscription_identifiers: vec![identifier],
            user_properties: user_property(),
            ..Properties::default()
        });
    }
    for filter in filters {
        subscribe = subscribe.filter(topic_filter(filter)?, SubscriptionOptions::with_qos(qos));
    }
    client
        .subscribe(subscribe)
        .await
        .map(drop)
        .map_err(|error| format!("subscribe failed: {error}"))
}

async fn unsubscribe(client: &Client, filters: &[&str], v5: bool) -> Result<(), String> {
    let mut unsubscribe = Unsubscribe::new();
    if v5 {
        unsubscribe = unsubscribe.properties(Properties {
            user_properties: user_property(),
            ..Properties::default()
        });
    }
    for filter in filters {
        unsubscribe = unsubscribe.filter(topic_filter(filter)?);
    }
    client
        .unsubscribe(unsubscribe)
        .await
        .map(drop)
        .map_err(|error| format!("unsubscribe failed: {error}"))
}

/// Returns the properties of the sequences' v5 PUBLISH.
fn publish_properties() -> Result<Properties, String> {
    Ok(Properties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(u32::MAX),
        response_topic: Some(topic_name("response/topic")?),
        correlation_data: Some(Bytes::from_static(CORRELATION_DATA)),
        content_type: Some(ByteString::from_static("text/plain")),
        user_properties: user_property(),
        ..Properties::default()
    })
}

fn user_property() -> Vec<(ByteString, ByteString)> {
    vec![(
        ByteString::from_static("key"),
        ByteString::from_static("value"),
    )]
}

fn topic_name(text: &str) -> Result<TopicName, String> {
    TopicName::try_from(text).map_err(|error| format!("invalid topic name `{text}`: {error}"))
}

fn topic_filter(text: &str) -> Result<TopicFilter, String> {
    TopicFilter::try_from(text).map_err(|error| format!("invalid topic filter `{text}`: {error}"))
}

fn describe_end(event: Option<Lifecycle>) -> String {
    match event {
        Some(Lifecycle::Disconnected(reason)) => format!("disconnected: {reason}"),
        Some(Lifecycle::Connected) => "connected a second time".to_owned(),
        None => "the client stopped".to_owned(),
    }
}

/// Connection events of a client, reduced to what the runner needs.
#[derive(Debug)]
enum Lifecycle {
    Connected,
    Disconnected(String),
}

/// Actor that forwards a client's events into a channel.
#[derive(Debug)]
struct EventWatcher {
    sender: mpsc::UnboundedSender<Lifecycle>,
}

impl Actor for EventWatcher {
    type Context = Context<Self>;
}

impl Handler<Event> for EventWatcher {
    type Result = ();

    fn handle(&mut self, event: Event, _: &mut Context<Self>) {
        let lifecycle = match event {
            Event::Connected { .. } => Lifecycle::Connected,
            Event::Disconnected { reason, .. } => Lifecycle::Disconnected(reason.to_string()),
            _ => return,
        };
        // The receiver is dropped once the run has ended, and then the event is not needed.
        let _ = self.sender.send(lifecycle);
    }
}

/// Actor that accepts and drops incoming messages.
#[derive(Debug)]
struct MessageSink;

impl Actor for MessageSink {
    type Context = Context<Self>;
}

impl Handler<Message> for MessageSink {
    type Result = ();

    fn handle(&mut self, _: Message, _: &mut Context<Self>) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_names_round_trip() {
        let names = [
            "publish-0",
            "publish-1",
            "publish-2",
            "subscribe-0",
            "subscribe-1",
            "subscribe-2",
            "subscribe-multiple",
            "unsubscribe",
            "unsubscribe-multiple",
        ];
        for name in names {
            let command: Command = name.parse().unwrap();
            assert_eq!(command.to_string(), name);
        }
    }

    #[test]
    fn unknown_command_rejected() {
        let error = "publish-3".parse::<Command>().unwrap_err();
        assert!(error.starts_with("unknown command `publish-3`"), "{error}");
    }

    #[test]
    fn driver_line_parsed() {
        let line: DriverLine = "1883 5 1 publish-1".parse().unwrap();
        assert_eq!(line.port, 1883);
        assert_eq!(line.version, ProtocolVersion::V5);
        assert!(line.clean_start);
        assert_eq!(line.command, Some(Command::Publish(QoS::AtLeastOnce)));
        assert_eq!(line.to_string(), "1883 5 1 publish-1");

        let line: DriverLine = "  40000 3 false ".parse().unwrap();
        assert_eq!(line.version, ProtocolVersion::V3_1);
        assert!(!line.clean_start);
        assert_eq!(line.command, None);
        assert_eq!(line.to_string(), "40000 3 0");
    }

    #[test]
    fn invalid_driver_lines_rejected() {
        let cases = [
            ("", "missing PORT"),
            ("1883", "missing PROTOCOL_LEVEL"),
            ("1883 4", "missing CLEAN_START"),
            ("70000 4 1", "invalid port `70000`"),
            ("1883 6 1", "invalid protocol level 6"),
            ("1883 x 1", "invalid protocol level `x`"),
            ("1883 4 yes", "invalid clean start flag `yes`"),
            ("1883 4 1 dance", "unknown command `dance`"),
            ("1883 4 1 unsubscribe more", "unexpected field `more`"),
        ];
        for (line, expected) in cases {
            let error = line.parse::<DriverLine>().unwrap_err();
            assert!(error.starts_with(expected), "`{line}`: {error}");
        }
    }
}
