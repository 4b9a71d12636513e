//! The mqttlink side of every workload, written as an actix user would. Each run
//! has its own actix System (a current-thread tokio runtime) and speaks MQTT 3.1.1
//! like the rumqttc side. Incoming messages go to a recipient actor, and publishes
//! are queued with `try_publish` while a bounded number of them is outstanding.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use mqttlink::codec::{ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, TopicName};
use mqttlink::{Client, ClientError, ClientOptions, Disconnect, Event, Publish, Subscribe};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

use crate::common::{
    latency_nanos, payload, push_filter, timestamped_bytes, ChurnMeter, ChurnRun, LatencyPlan,
    LatencyRun, MemoryRun, Settings, Stopwatch, Throughput, CONNECT_WAVE, DRAIN_TIMEOUT,
    IDLE_SETTLE, KEEP_ALIVE, PUBLISH_TOPIC, RUN_TIMEOUT,
};
use crate::measure::BenchResult;
use crate::sink::END_MARKER;

/// Publishes `count` messages at `qos` to the sink and waits until the last one
/// is acknowledged. A QoS 0 run ends with one QoS 1 message whose PUBACK proves
/// that the sink has read everything before it.
pub fn publish(
    sink: SocketAddr,
    qos: u8,
    count: u64,
    settings: &Settings,
) -> BenchResult<Throughput> {
    run_system(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let (client, _events) = connect(sink, "bench-mqttlink-publish", settings, deadline).await?;
        let topic: TopicName = PUBLISH_TOPIC.parse()?;
        let level = qos_level(qos);
        let window = settings.mqttlink_outstanding.max(1);
        let stopwatch = Stopwatch::start()?;

        let mut outstanding = VecDeque::with_capacity(window);
        let mut queued = 0;
        while queued < count {
            if outstanding.len() < window {
                match client.try_publish(Publish::new(topic.clone(), payload()).qos(level)) {
                    Ok(response) => {
                        outstanding.push_back(response);
                        queued += 1;
                        continue;
                    }
                    Err(ClientError::QueueFull) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            // The window or the client's queue is full: wait for the oldest.
            match outstanding.pop_front() {
                Some(response) => {
                    timeout_at(deadline, response).await??;
                }
                None => wait_for_queue(deadline).await?,
            }
        }
        while let Some(response) = outstanding.pop_front() {
            timeout_at(deadline, response).await??;
        }
        if level == QoS::AtMostOnce {
            let marker = Publish::new(topic, payload()).qos(QoS::AtLeastOnce);
            timeout_at(deadline, client.publish(marker)).await??;
        }
        let throughput = stopwatch.stop(count)?;

        timeout_at(deadline, client.disconnect(Disconnect::new())).await??;
        Ok(throughput)
    })
}

/// Subscribes a counting actor to the sink's push topic, which publishes `count`
/// messages at `qos`, and waits until the end marker has arrived.
pub fn inbound(
    sink: SocketAddr,
    qos: u8,
    count: u64,
    settings: &Settings,
) -> BenchResult<Throughput> {
    run_system(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let (client, _events) = connect(sink, "bench-mqttlink-inbound", settings, deadline).await?;
        let (done_tx, done_rx) = oneshot::channel();
        let counter = Counter {
            mailbox: settings.recipient_mailbox,
            received: 0,
            done: Some(done_tx),
        }
        .start();
        let stopwatch = Stopwatch::start()?;

        let filter: TopicFilter = push_filter(qos, count).parse()?;
        let subscribe = Subscribe::new(counter.recipient())
            .filter(filter, SubscriptionOptions::with_qos(qos_level(qos)));
        timeout_at(deadline, client.subscribe(subscribe)).await??;
        let received = timeout_at(deadline, done_rx).await??;
        let throughput = stopwatch.stop(received)?.with_lost(count - received);

        timeout_at(deadline, client.disconnect(Disconnect::new())).await??;
        Ok(throughput)
    })
}

/// Publishes timestamped messages at a fixed rate through the broker to itself
/// and measures the time each takes to come back.
pub fn latency(plan: LatencyPlan, settings: &Settings) -> BenchResult<LatencyRun> {
    run_system(async move {
        let messages = plan.messages();
        let deadline = Instant::now() + plan.duration + RUN_TIMEOUT;
        let (client, _events) =
            connect(plan.broker, "bench-mqttlink-latency", settings, deadline).await?;
        let level = qos_level(plan.qos);
        let topic: TopicName = "bench/latency/mqttlink".parse()?;

        let samples = Rc::new(RefCell::new(Vec::with_capacity(usize::try_from(messages)?)));
        let (done_tx, done_rx) = oneshot::channel();
        let recorder = LatencyRecorder {
            mailbox: settings.recipient_mailbox,
            samples: Rc::clone(&samples),
            expected: usize::try_from(messages)?,
            done: Some(done_tx),
        }
        .start();
        let subscribe = Subscribe::new(recorder.recipient()).filter(
            topic.as_str().parse()?,
            SubscriptionOptions::with_qos(level),
        );
        timeout_at(deadline, client.subscribe(subscribe)).await??;

        // The publisher runs as a task of its own, as on the rumqttc side, so the
        // thread's main future only waits.
        let publisher_client = client.clone();
        let publisher = actix_rt::spawn(async move {
            let started = Instant::now();
            for index in 0..messages {
                tokio::time::sleep_until(started + plan.due(index)).await;
                let stamped = timestamped_bytes();
                // The publish is queued once `try_publish` returns. Like the rumqttc
                // side, which does not wait for PUBACK either, the outcome is dropped:
                // the received copy is what counts, and a lost one shows in `lost`.
                // Each attempt copies the payload once, as the rumqttc side does, so
                // that no shared copy is made for a retry that rarely happens.
                loop {
                    let payload = Bytes::copy_from_slice(&stamped);
                    let publish = Publish::new(topic.clone(), payload).qos(level);
                    match publisher_client.try_publish(publish) {
                        Ok(_outcome) => break,
                        Err(ClientError::QueueFull) => wait_for_queue(deadline).await?,
                        Err(error) => return Err(error.into()),
                    }
                }
                if plan.yield_after_publish {
                    tokio::task::yield_now().await;
                }
            }
            BenchResult::Ok(started)
        });
        let started = publisher.await??;

        // A timeout here means lost messages, which the result reports.
        let _ = timeout_at(started + plan.duration + DRAIN_TIMEOUT, done_rx).await;
        let samples = samples.take();
        let lost = messages - samples.len() as u64;

        timeout_at(deadline, client.disconnect(Disconnect::new())).await??;
        Ok(LatencyRun { samples, lost })
    })
}

/// Connects `clients` idle clients to the sink and returns the resident memory
/// of this process before the first and after the last has connected.
pub fn idle_memory(
    sink: SocketAddr,
    clients: usize,
    settings: &Settings,
) -> BenchResult<MemoryRun> {
    run_system(async move {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let before = settings.units.resident_bytes()?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let forwarder = EventForwarder { events: events_tx }.start();
        let mut handles = Vec::with_capacity(clients);

        for wave_start in (0..clients).step_by(CONNECT_WAVE) {
            let wave_end = (wave_start + CONNECT_WAVE).min(clients);
            for index in wave_start..wave_end {
                let client =
                    options(sink, &format!("bench-mqttlink-idle-{index}"), settings).start()?;
                client.subscribe_events(forwarder.clone().recipient());
                handles.push(client);
            }
            let mut connected = wave_start;
            while connected < wave_end {
                match timeout_at(deadline, events_rx.recv()).await? {
                    Some(Event::Connected { .. }) => connected += 1,
                    Some(event) => return Err(format!("idle client failed: {event:?}").into()),
                    None => return Err("event forwarder stopped".into()),
                }
            }
        }

        tokio::time::sleep(IDLE_SETTLE).await;
        let after = settings.units.resident_bytes()?;
        drop(handles);
        Ok(MemoryRun {
            clients,
            before,
            after,
        })
    })
}

/// Connects to the sink and disconnects `cycles` times, one client after the
/// other, and counts live actors, tokio tasks and file descriptors before and
/// after.
pub fn churn(sink: SocketAddr, cycles: u64, settings: &Settings) -> BenchResult<ChurnRun> {
    connect_cycles(sink, cycles, settings, true)
}

/// Starts `cycles` clients against `refused` (a port without a listener), one
/// after the other, and waits for each to report the failed connection.
pub fn failed_connects(
    refused: SocketAddr,
    cycles: u64,
    settings: &Settings,
) -> BenchResult<ChurnRun> {
    connect_cycles(refused, cycles, settings, false)
}

/// Starts one client after the other against `addr` and waits for each to end:
/// after Connected and a requested disconnect when `accepted`, or after the
/// failed connection otherwise.
fn connect_cycles(
    addr: SocketAddr,
    cycles: u64,
    settings: &Settings,
    accepted: bool,
) -> BenchResult<ChurnRun> {
    run_system(async move {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let forwarder = EventForwarder { events: events_tx }.start();
        let meter = ChurnMeter::start(mqttlink::live_actor_count)?;

        for _ in 0..cycles {
            let client = options(addr, "bench-mqttlink-churn", settings).start()?;
            client.subscribe_events(forwarder.clone().recipient());
            if accepted {
                match timeout_at(deadline, events_rx.recv()).await? {
                    Some(Event::Connected { .. }) => {}
                    other => return Err(format!("expected Connected, got {other:?}").into()),
                }
                timeout_at(deadline, client.disconnect(Disconnect::new())).await??;
            }
            match timeout_at(deadline, events_rx.recv()).await? {
                Some(Event::Disconnected { .. }) => {}
                other => return Err(format!("expected Disconnected, got {other:?}").into()),
            }
        }
        meter.finish(cycles).await
    })
}

/// Runs `future` to completion in a new actix System.
fn run_system<T>(future: impl std::future::Future<Output = BenchResult<T>>) -> BenchResult<T> {
    actix_rt::System::new().block_on(future)
}

fn options(addr: SocketAddr, client_id: &str, settings: &Settings) -> ClientOptions {
    ClientOptions::new(addr.ip().to_string(), addr.port())
        .client_id(client_id)
        .protocol(ProtocolVersion::V3_1_1)
        .keep_alive(KEEP_ALIVE)
        .max_inflight(settings.inflight)
}

/// Starts a client and waits for its Connected event. The returned receiver gets
/// the client's later events.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    settings: &Settings,
    deadline: Instant,
) -> BenchResult<(Client, mpsc::UnboundedReceiver<Event>)> {
    let client = options(addr, client_id, settings).start()?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    client.subscribe_events(EventForwarder { events: events_tx }.start().recipient());
    match timeout_at(deadline, events_rx.recv()).await? {
        Some(Event::Connected { .. }) => Ok((client, events_rx)),
        other => Err(format!("expected Connected, got {other:?}").into()),
    }
}

/// Sleeps briefly when the client's request queue is full but the benchmark has
/// no response of its own to wait for, or fails once `deadline` has passed.
async fn wait_for_queue(deadline: Instant) -> BenchResult<()> {
    if Instant::now() >= deadline {
        return Err("request queue stayed full until the run timed out".into());
    }
    tokio::time::sleep(Duration::from_micros(50)).await;
    Ok(())
}

fn qos_level(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Forwards a client's events to a channel the benchmark awaits.
#[derive(Debug)]
struct EventForwarder {
    events: mpsc::UnboundedSender<Event>,
}

impl Actor for EventForwarder {
    type Context = Context<Self>;
}

impl Handler<Event> for EventForwarder {
    type Result = ();

    fn handle(&mut self, event: Event, _: &mut Self::Context) {
        let _ = self.events.send(event);
    }
}

/// Counts delivered messages until the sink's end marker arrives, then sends
/// the count.
#[derive(Debug)]
struct Counter {
    mailbox: usize,
    received: u64,
    done: Option<oneshot::Sender<u64>>,
}

impl Actor for Counter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<mqttlink::Message> for Counter {
    type Result = ();

    fn handle(&mut self, message: mqttlink::Message, _: &mut Self::Context) {
        if message.payload != END_MARKER {
            self.received += 1;
        } else if let Some(done) = self.done.take() {
            let _ = done.send(self.received);
        }
    }
}

/// Records the latency of each delivered message.
#[derive(Debug)]
struct LatencyRecorder {
    mailbox: usize,
    samples: Rc<RefCell<Vec<u64>>>,
    expected: usize,
    done: Option<oneshot::Sender<()>>,
}

impl Actor for LatencyRecorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<mqttlink::Message> for LatencyRecorder {
    type Result = ();

    fn handle(&mut self, message: mqttlink::Message, _: &mut Self::Context) {
        let Ok(latency) = latency_nanos(&message.payload) else {
            return;
        };
        let mut samples = self.samples.borrow_mut();
        samples.push(latency);
        if samples.len() >= self.expected {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}
