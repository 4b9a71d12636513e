//! Quickstart: connect, subscribe, publish one message at each QoS, print what
//! arrives, disconnect.
//!
//! ```text
//! cargo run --example quickstart
//! MQTT_URL=mqtt://127.0.0.1:1883 cargo run --example quickstart
//! ```
//!
//! Without `MQTT_URL` the example starts an embedded broker (rumqttd) on a free
//! loopback port, so it runs on a machine with no broker installed.

use std::error::Error;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mqttlink::codec::{QoS, SubscriptionOptions, TopicFilter, TopicName};
use mqttlink::{ClientOptions, Disconnect, Message, Publish, Subscribe};
use tokio::sync::mpsc;

/// Upper bound for every step: connect, subscribe, each publish, each message.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn Error>;

#[actix_rt::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the error and its causes, such as the I/O error behind a
            // failed connection.
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            eprintln!("quickstart failed: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let url = match std::env::var("MQTT_URL") {
        Ok(url) => url,
        Err(_) => start_embedded_broker()?,
    };
    println!("connecting to {url}");
    let client = ClientOptions::from_url(&url)?
        .client_id("mqttlink-quickstart")
        .start()?;

    // Incoming messages go to an actor. This one prints them and reports each arrival
    // to `run` on a channel.
    let (received_tx, mut received_rx) = mpsc::unbounded_channel();
    let printer = Printer { received_tx }.start();
    let filter: TopicFilter = "mqttlink/quickstart/#".parse()?;
    let subscribe = Subscribe::new(printer.recipient())
        .filter(filter, SubscriptionOptions::with_qos(QoS::ExactlyOnce));
    within(client.subscribe(subscribe)).await??;

    // Each publish resolves once the broker acknowledged it at its QoS: PUBACK for
    // QoS 1, PUBCOMP for QoS 2, and for QoS 0 as soon as it is written to the socket.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic: TopicName = format!("mqttlink/quickstart/qos{}", qos.level()).parse()?;
        let payload = format!("hello at QoS {}", qos.level());
        within(client.publish(Publish::new(topic, payload).qos(qos))).await??;
    }

    for _ in 0..3 {
        within(received_rx.recv())
            .await?
            .ok_or("the message printer stopped")?;
    }
    within(client.disconnect(Disconnect::new())).await??;
    println!("done");
    Ok(())
}

/// Prints each incoming message and reports its arrival on a channel.
struct Printer {
    received_tx: mpsc::UnboundedSender<()>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<Message> for Printer {
    type Result = ();

    fn handle(&mut self, message: Message, _: &mut Context<Self>) {
        let payload = String::from_utf8_lossy(&message.payload);
        println!("received {}: {payload}", message.topic);
        let _ = self.received_tx.send(());
    }
}

/// Fails with a timeout error when `future` takes longer than [`STEP_TIMEOUT`].
async fn within<F: Future>(future: F) -> Result<F::Output, BoxError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| format!("timed out after {} s", STEP_TIMEOUT.as_secs()).into())
}

/// Starts rumqttd on a free loopback port in its own thread and returns its URL once
/// it accepts connections. The broker lives until the process exits.
fn start_embedded_broker() -> Result<String, BoxError> {
    use std::collections::HashMap;

    // The port is found free here and bound by the broker a moment later.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let listener = rumqttd::ServerSettings {
        name: "quickstart".to_owned(),
        listen: (Ipv4Addr::LOCALHOST, port).into(),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..rumqttd::RouterConfig::default()
        },
        v5: Some(HashMap::from([("quickstart".to_owned(), listener)])),
        ..rumqttd::Config::default()
    };
    std::thread::spawn(move || {
        if let Err(error) = rumqttd::Broker::new(config).start() {
            eprintln!("embedded broker failed: {error}");
        }
    });

    // Bounded polling until the listener accepts a TCP connection.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("embedded broker did not listen on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("started an embedded broker (set MQTT_URL to use your own)");
    Ok(format!("mqtt://127.0.0.1:{port}"))
}
