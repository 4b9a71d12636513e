//! `mqtt`: a command-line client with `pub` and `sub` subcommands whose flags follow
//! mosquitto_pub and mosquitto_sub where those have one. See `docs/cli.md`.
//!
//! ```text
//! cargo run --example mqtt -- sub -h 127.0.0.1 -t 'sensors/#' -v
//! cargo run --example mqtt -- pub -h 127.0.0.1 -t sensors/door -m open -q 1
//! ```

use std::collections::VecDeque;
use std::error::Error;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use clap::{ArgAction, Args, Parser};
use mqttlink::codec::{
    InvalidValue, LastWill, Properties, ProtocolVersion, QoS, SubscriptionOptions, TopicFilter,
    TopicName,
};
use mqttlink::{
    Client, ClientError, ClientOptions, Disconnect, DisconnectCause, Event, Message, Publish,
    PublishOutcome, Subscribe,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;

type BoxError = Box<dyn Error>;

/// Exit status for invalid arguments, as clap uses.
const USAGE_ERROR: u8 = 2;

/// Publishes not yet acknowledged that `pub -l` keeps before it waits for the oldest.
const MAX_PENDING_PUBLISHES: usize = 64;

/// Command-line MQTT client built on mqttlink.
#[derive(Debug, Parser)]
#[command(name = "mqtt")]
enum Cli {
    /// Publish one message, or one message per line of standard input
    #[command(name = "pub", disable_help_flag = true)]
    Pub(PubArgs),
    /// Subscribe to topic filters and print the messages that arrive
    #[command(name = "sub", disable_help_flag = true)]
    Sub(SubArgs),
}

/// Connection options shared by `pub` and `sub`.
#[derive(Debug, Args)]
struct ConnectArgs {
    /// Broker host name or IP address
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,

    /// Broker TCP port
    #[arg(short, long, default_value_t = 1883)]
    port: u16,

    /// Client identifier [default: mqttlink-pub-PID or mqttlink-sub-PID]
    #[arg(short, long)]
    id: Option<String>,

    /// MQTT version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5)
    #[arg(short = 'V', long = "protocol-version", default_value = "5", value_parser = parse_protocol)]
    protocol: ProtocolVersion,

    /// Keep-alive interval in seconds; 0 turns keep-alive off
    #[arg(short, long, default_value_t = 60)]
    keepalive: u16,

    /// User name
    #[arg(short, long)]
    username: Option<String>,

    /// Password; requires a user name
    #[arg(short = 'P', long = "pw", requires = "username")]
    password: Option<String>,

    /// Keep the session when the client disconnects (clean session off; in MQTT 5
    /// the session never expires)
    #[arg(short = 'c', long)]
    disable_clean_session: bool,

    /// Topic of the last will the broker publishes if this client's connection ends
    /// without DISCONNECT
    #[arg(long, value_parser = parse_topic_name)]
    will_topic: Option<TopicName>,

    /// Payload of the last will
    #[arg(long, requires = "will_topic")]
    will_payload: Option<String>,

    /// QoS of the last will: 0, 1 or 2
    #[arg(long, requires = "will_topic", default_value = "0", value_parser = parse_qos)]
    will_qos: QoS,

    /// Retain the last will
    #[arg(long, requires = "will_topic")]
    will_retain: bool,

    /// Maximum wait in seconds before the first reconnect attempt after the connection
    /// is lost. Each further attempt may wait twice as long, up to --reconnect-max.
    /// Decimals such as 0.5 are allowed
    #[arg(long, value_name = "SECONDS", default_value = "0.5", value_parser = parse_seconds)]
    reconnect_base: Duration,

    /// Maximum wait in seconds before any reconnect attempt
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    reconnect_max: Duration,

    /// Seconds a connection must last before the wait starts again from
    /// --reconnect-base
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    reconnect_reset: Duration,

    /// Print the client's debug log on standard error
    #[arg(short, long)]
    debug: bool,

    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// Arguments of `mqtt pub`.
#[derive(Debug, Args)]
struct PubArgs {
    #[command(flatten)]
    connect: ConnectArgs,

    /// Topic to publish to
    #[arg(short, long, value_parser = parse_topic_name)]
    topic: TopicName,

    #[command(flatten)]
    payload: PayloadArgs,

    /// QoS to publish at: 0, 1 or 2
    #[arg(short, long, default_value = "0", value_parser = parse_qos)]
    qos: QoS,

    /// Ask the broker to retain the message
    #[arg(short, long)]
    retain: bool,

    /// Seconds to wait for the connection and for each acknowledgement
    #[arg(short = 'W', long, default_value_t = 30)]
    timeout: u64,
}

/// Payload source of `mqtt pub`: exactly one of these flags.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PayloadArgs {
    /// Publish this message
    #[arg(short, long)]
    message: Option<String>,

    /// Publish each line of standard input as its own message (empty lines are skipped)
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,

    /// Publish the whole of standard input as one message
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,

    /// Publish the contents of this file as one message
    #[arg(short, long)]
    file: Option<PathBuf>,

    /// Publish a zero-length message
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
}

/// Arguments of `mqtt sub`.
#[derive(Debug, Args)]
struct SubArgs {
    #[command(flatten)]
    connect: ConnectArgs,

    /// Topic filter to subscribe to; repeat for several
    #[arg(short, long = "topic", value_name = "TOPIC", required = true, value_parser = parse_topic_filter)]
    topics: Vec<TopicFilter>,

    /// Maximum QoS the broker may deliver at: 0, 1 or 2
    #[arg(short, long, default_value = "0", value_parser = parse_qos)]
    qos: QoS,

    /// Exit after this many messages
    #[arg(short = 'C', long)]
    count: Option<u64>,

    /// Print each message as "TOPIC PAYLOAD" instead of the payload alone
    #[arg(short, long)]
    verbose: bool,

    /// Disconnect and exit this many seconds after the SUBACK; an error if a count
    /// given with -C has not been reached by then
    #[arg(short = 'W', long)]
    timeout: Option<u64>,

    /// Seconds to wait for the connection and the subscription acknowledgement
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return report_usage_error(&error),
    };

    let connect = match &cli {
        Cli::Pub(args) => &args.connect,
        Cli::Sub(args) => &args.connect,
    };
    if let Err(error) = check_reconnect_bounds(connect) {
        return report_usage_error(&error);
    }
    if connect.debug {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter("mqttlink=debug")
            .init();
    }

    let result = actix_rt::System::new().block_on(async move {
        match cli {
            Cli::Pub(args) => run_pub(args).await,
            Cli::Sub(args) => run_sub(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mqtt: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Checks the reconnect flags against each other, which clap checks one at a time.
fn check_reconnect_bounds(args: &ConnectArgs) -> Result<(), clap::Error> {
    let message = if args.reconnect_base.is_zero() {
        "--reconnect-base must be greater than 0".to_owned()
    } else if args.reconnect_max < args.reconnect_base {
        format!(
            "--reconnect-max of {} s is below --reconnect-base of {} s",
            args.reconnect_max.as_secs_f64(),
            args.reconnect_base.as_secs_f64()
        )
    } else {
        return Ok(());
    };
    Err(clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        message,
    ))
}

/// Prints help as clap does, and any other argument error as one line.
fn report_usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;

    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }

    // clap's message may continue on the next lines (a list of missing arguments),
    // followed by a usage section or a hint, both left out here.
    let rendered = error.render().to_string();
    let message = rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("mqtt: {message} (see --help)");
    ExitCode::from(USAGE_ERROR)
}

async fn run_pub(args: PubArgs) -> Result<(), BoxError> {
    let step_timeout = Duration::from_secs(args.timeout);
    let options = client_options(&args.connect, "pub", step_timeout);
    let client = connect(options, step_timeout).await?.client;

    let mut publisher = Publisher::new(&client, &args, step_timeout);
    if args.payload.stdin_line {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            if !line.is_empty() {
                publisher.send(Bytes::from(line)).await?;
            }
        }
    } else {
        let payload = read_payload(&args.payload).await?;
        publisher.send(payload).await?;
    }
    publisher.wait_all().await?;

    within(step_timeout, client.disconnect(Disconnect::new())).await??;
    Ok(())
}

/// Reads the payload of a single-message `pub`.
async fn read_payload(args: &PayloadArgs) -> Result<Bytes, BoxError> {
    if let Some(message) = &args.message {
        return Ok(Bytes::from(message.clone()));
    }
    if let Some(path) = &args.file {
        let contents = tokio::fs::read(path)
            .await
            .map_err(|error| format!("failed to read {}: {error}", path.display()))?;
        return Ok(Bytes::from(contents));
    }
    if args.stdin_file {
        let mut contents = Vec::new();
        tokio::io::stdin().read_to_end(&mut contents).await?;
        return Ok(Bytes::from(contents));
    }
    Ok(Bytes::new())
}

type PendingPublish<'a> = Pin<Box<dyn Future<Output = Result<PublishOutcome, ClientError>> + 'a>>;

/// Sends publishes in order without waiting for each acknowledgement, keeping at
/// most [`MAX_PENDING_PUBLISHES`] unacknowledged.
struct Publisher<'a> {
    client: &'a Client,
    topic: TopicName,
    qos: QoS,
    retain: bool,
    pending: VecDeque<PendingPublish<'a>>,
    step_timeout: Duration,
}

impl<'a> Publisher<'a> {
    fn new(client: &'a Client, args: &PubArgs, step_timeout: Duration) -> Self {
        Self {
            client,
            topic: args.topic.clone(),
            qos: args.qos,
            retain: args.retain,
            pending: VecDeque::new(),
            step_timeout,
        }
    }

    fn new_publish(&self, payload: Bytes) -> Publish {
        Publish::new(self.topic.clone(), payload)
            .qos(self.qos)
            .retain(self.retain)
    }

    async fn send(&mut self, payload: Bytes) -> Result<(), BoxError> {
        if self.pending.len() >= MAX_PENDING_PUBLISHES {
            self.wait_oldest().await?;
        }
        loop {
            match self.client.try_publish(self.new_publish(payload.clone())) {
                Ok(acknowledged) => {
                    self.pending.push_back(Box::pin(acknowledged));
                    return Ok(());
                }
                // The client's queue is full: an acknowledgement frees a place.
                Err(ClientError::QueueFull) if !self.pending.is_empty() => {
                    self.wait_oldest().await?;
                }
                Err(ClientError::QueueFull) => {
                    let publish = self.new_publish(payload);
                    self.pending
                        .push_back(Box::pin(self.client.publish(publish)));
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn wait_all(&mut self) -> Result<(), BoxError> {
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), BoxError> {
        let Some(oldest) = self.pending.pop_front() else {
            return Ok(());
        };
        let outcome = within(self.step_timeout, oldest).await??;
        if let Some(reason) = outcome.reason.filter(|reason| !reason.is_success()) {
            return Err(format!("broker rejected the publish: {reason:?}").into());
        }
        Ok(())
    }
}

/// Starts the client and waits for its first connection. Automatic reconnect retries
/// only a connection that was up. A broker that cannot be reached at all fails the
/// command at once, as it fails mosquitto_pub and mosquitto_sub.
async fn connect(options: ClientOptions, timeout: Duration) -> Result<Connection, BoxError> {
    let client = options.start()?;
    let (incoming_tx, mut incoming_rx) = mpsc::unbounded_channel();
    let forwarder = Forwarder { incoming_tx }.start();
    client.subscribe_events(forwarder.clone().recipient());
    match within(timeout, incoming_rx.recv()).await? {
        Some(Incoming::Connected) => Ok(Connection {
            client,
            forwarder,
            incoming_rx,
        }),
        Some(Incoming::Disconnected(DisconnectCause::Failed(error))) => Err(error.into()),
        Some(Incoming::Disconnected(cause)) => Err(cause.to_string().into()),
        Some(Incoming::Message(_)) | None => Err("the event forwarder stopped".into()),
    }
}

/// A connected client, with the actor that forwards its messages and connection
/// events to `incoming_rx`.
struct Connection {
    client: Client,
    forwarder: Addr<Forwarder>,
    incoming_rx: mpsc::UnboundedReceiver<Incoming>,
}

async fn run_sub(args: SubArgs) -> Result<(), BoxError> {
    let connect_timeout = Duration::from_secs(args.connect_timeout);
    let options = client_options(&args.connect, "sub", connect_timeout);
    let Connection {
        client,
        forwarder,
        mut incoming_rx,
    } = connect(options, connect_timeout).await?;

    let mut subscribe = Subscribe::new(forwarder.recipient());
    for topic in &args.topics {
        subscribe = subscribe.filter(topic.clone(), SubscriptionOptions::with_qos(args.qos));
    }
    let outcome = within(connect_timeout, client.subscribe(subscribe)).await??;
    for (topic, reason) in args.topics.iter().zip(&outcome.reasons) {
        if !reason.is_success() {
            return Err(format!("broker rejected the subscription to {topic}: {reason:?}").into());
        }
    }

    let received = print_messages(&client, &mut incoming_rx, &args).await?;
    if let (Some(count), Some(seconds)) = (args.count, args.timeout) {
        if received < count {
            return Err(
                format!("timed out after {seconds} s with {received} of {count} messages").into(),
            );
        }
    }
    within(connect_timeout, client.disconnect(Disconnect::new())).await??;
    Ok(())
}

/// Prints messages until the count is reached or the timeout passes, and returns how
/// many it printed. A lost connection is an error only when the client stopped
/// instead of reconnecting, for example because the broker refused it for good.
async fn print_messages(
    client: &Client,
    incoming_rx: &mut mpsc::UnboundedReceiver<Incoming>,
    args: &SubArgs,
) -> Result<u64, BoxError> {
    let deadline = args
        .timeout
        .map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let mut received = 0;
    while !matches!(args.count, Some(count) if received >= count) {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, incoming_rx.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => incoming_rx.recv().await,
        };
        match next {
            Some(Incoming::Message(message)) => {
                print_message(&message, args.verbose)?;
                received += 1;
            }
            Some(Incoming::Connected) => {}
            // A client that stopped for good fails every request, and one that
            // reconnects returns its counters and needs nothing from `sub`.
            Some(Incoming::Disconnected(reason)) => {
                if client.stats().await.is_err() {
                    return Err(format!("connection lost: {reason}").into());
                }
            }
            None => return Err("the message forwarder stopped".into()),
        }
    }
    Ok(received)
}

/// Writes one message on its own line and flushes it, so a pipe sees it at once.
fn print_message(message: &Message, verbose: bool) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if verbose {
        write!(stdout, "{} ", message.topic)?;
    }
    stdout.write_all(&message.payload)?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

/// A message or connection event that the forwarder actor passes on.
enum Incoming {
    Message(Box<Message>),
    Connected,
    Disconnected(DisconnectCause),
}

/// Forwards incoming messages and connection events to a channel.
struct Forwarder {
    incoming_tx: mpsc::UnboundedSender<Incoming>,
}

impl Actor for Forwarder {
    type Context = Context<Self>;
}

impl Handler<Message> for Forwarder {
    type Result = ();

    fn handle(&mut self, message: Message, _: &mut Context<Self>) {
        let _ = self.incoming_tx.send(Incoming::Message(Box::new(message)));
    }
}

impl Handler<Event> for Forwarder {
    type Result = ();

    fn handle(&mut self, event: Event, _: &mut Context<Self>) {
        let incoming = match event {
            Event::Connected { .. } => Incoming::Connected,
            Event::Disconnected { reason } => Incoming::Disconnected(reason),
            _ => return,
        };
        let _ = self.incoming_tx.send(incoming);
    }
}

/// Builds client options from the shared connection flags; `role` names the default
/// client identifier.
fn client_options(args: &ConnectArgs, role: &str, connect_timeout: Duration) -> ClientOptions {
    let client_id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("mqttlink-{role}-{}", std::process::id()));
    let mut options = ClientOptions::new(args.host.clone(), args.port)
        .client_id(&client_id)
        .protocol(args.protocol)
        .keep_alive(Duration::from_secs(args.keepalive.into()))
        .clean_start(!args.disable_clean_session)
        // With -c the user asks for the session an earlier run left on the broker, as
        // mosquitto_sub -c gives it, so the client takes it without local state.
        .adopt_broker_session(args.disable_clean_session)
        .connect_timeout(connect_timeout)
        .reconnect(true)
        .reconnect_backoff(args.reconnect_base, args.reconnect_max)
        .reconnect_reset_after(args.reconnect_reset);

    // As in mosquitto_pub, -c in MQTT 5 requests a session that never expires.
    if args.disable_clean_session && args.protocol.is_v5() {
        options = options.session_expiry(Duration::from_secs(u32::MAX.into()));
    }
    if let Some(username) = &args.username {
        let password = args.password.clone().map(String::into_bytes);
        options = options.credentials(username, password);
    }
    if let Some(topic) = &args.will_topic {
        options = options.last_will(LastWill {
            topic: topic.clone(),
            payload: Bytes::from(args.will_payload.clone().unwrap_or_default()),
            qos: args.will_qos,
            retain: args.will_retain,
            properties: Properties::default(),
        });
    }
    options
}

/// Fails with a timeout error when `future` takes longer than `limit`.
async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, BoxError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| format!("timed out after {} s", limit.as_secs()).into())
}

/// Joins an error and its sources into one line.
fn error_chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

fn parse_protocol(value: &str) -> Result<ProtocolVersion, String> {
    match value {
        "31" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        other => Err(format!(
            "unknown protocol version {other:?}, expected 31, 311 or 5"
        )),
    }
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("invalid duration {value:?}, expected seconds such as 2 or 0.5"))
}

fn parse_qos(value: &str) -> Result<QoS, String> {
    let level: u8 = value
        .parse()
        .map_err(|_| format!("invalid QoS {value:?}, expected 0, 1 or 2"))?;
    QoS::try_from(level).map_err(|error| error.to_string())
}

fn parse_topic_name(value: &str) -> Result<TopicName, String> {
    value
        .parse()
        .map_err(|error: InvalidValue| error.to_string())
}

fn parse_topic_filter(value: &str) -> Result<TopicFilter, String> {
    value
        .parse()
        .map_err(|error: InvalidValue| error.to_string())
}
