//! The rumqttc 0.25 side of every workload, used the way its documentation
//! suggests for speed. One `AsyncClient` feeds requests through its bounded
//! channel to an `EventLoop` that the benchmark polls in a loop. Each run has a
//! current-thread tokio runtime (the flavour of an actix System), TCP_NODELAY and
//! the same in-flight window as mqttlink. It speaks MQTT 3.1.1, rumqttc's main
//! protocol.

use std::net::SocketAddr;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS,
};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::common::{
    latency_nanos, payload, push_filter, timestamped_payload, ChurnMeter, ChurnRun, LatencyPlan,
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
    runtime()?.block_on(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let (client, mut eventloop) =
            connect(sink, "bench-rumqttc-publish", settings, deadline).await?;
        let level = qos_level(qos);
        let stopwatch = Stopwatch::start()?;

        let publisher = tokio::spawn(async move {
            for _ in 0..count {
                client
                    .publish_bytes(PUBLISH_TOPIC, level, false, payload())
                    .await?;
            }
            if level == QoS::AtMostOnce {
                client
                    .publish_bytes(PUBLISH_TOPIC, QoS::AtLeastOnce, false, payload())
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(client)
        });

        let expected = if level == QoS::AtMostOnce { 1 } else { count };
        let mut acknowledged = 0;
        while acknowledged < expected {
            match timeout_at(deadline, eventloop.poll()).await?? {
                Event::Incoming(Packet::PubAck(_)) if level != QoS::ExactlyOnce => {
                    acknowledged += 1;
                }
                Event::Incoming(Packet::PubComp(_)) => acknowledged += 1,
                _ => {}
            }
        }
        let throughput = stopwatch.stop(count)?;

        let client = publisher.await??;
        disconnect(&client, &mut eventloop, deadline).await?;
        Ok(throughput)
    })
}

/// Subscribes to the sink's push topic and receives `count` messages at `qos`
/// and the end marker.
pub fn inbound(
    sink: SocketAddr,
    qos: u8,
    count: u64,
    settings: &Settings,
) -> BenchResult<Throughput> {
    runtime()?.block_on(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let (client, mut eventloop) =
            connect(sink, "bench-rumqttc-inbound", settings, deadline).await?;
        let stopwatch = Stopwatch::start()?;
        client
            .subscribe(push_filter(qos, count), qos_level(qos))
            .await?;

        let mut received = 0;
        loop {
            if let Event::Incoming(Packet::Publish(publish)) =
                timeout_at(deadline, eventloop.poll()).await??
            {
                if publish.payload == END_MARKER {
                    break;
                }
                received += 1;
            }
        }
        let throughput = stopwatch.stop(received)?.with_lost(count - received);

        disconnect(&client, &mut eventloop, deadline).await?;
        Ok(throughput)
    })
}

/// Publishes timestamped messages at a fixed rate through the broker to itself
/// and measures the time each takes to come back.
pub fn latency(plan: LatencyPlan, settings: &Settings) -> BenchResult<LatencyRun> {
    runtime()?.block_on(async {
        let messages = plan.messages();
        let deadline = Instant::now() + plan.duration + RUN_TIMEOUT;
        let (client, mut eventloop) =
            connect(plan.broker, "bench-rumqttc-latency", settings, deadline).await?;
        let level = qos_level(plan.qos);
        let topic = "bench/latency/rumqttc";
        client.subscribe(topic, level).await?;
        wait_for_suback(&mut eventloop, deadline).await?;

        let publisher_client = client.clone();
        let publisher = tokio::spawn(async move {
            let started = Instant::now();
            for index in 0..messages {
                tokio::time::sleep_until(started + plan.due(index)).await;
                publisher_client
                    .publish_bytes(topic, level, false, timestamped_payload())
                    .await?;
                if plan.yield_after_publish {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, rumqttc::ClientError>(())
        });

        let drain_deadline = Instant::now() + plan.duration + DRAIN_TIMEOUT;
        let mut samples = Vec::with_capacity(usize::try_from(messages)?);
        while (samples.len() as u64) < messages {
            match timeout_at(drain_deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                    samples.push(latency_nanos(&publish.payload)?);
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => break,
            }
        }
        publisher.await??;
        let lost = messages - samples.len() as u64;

        disconnect(&client, &mut eventloop, deadline).await?;
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
    runtime()?.block_on(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let before = settings.units.resident_bytes()?;
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let mut handles = Vec::with_capacity(clients);

        for wave_start in (0..clients).step_by(CONNECT_WAVE) {
            let wave_end = (wave_start + CONNECT_WAVE).min(clients);
            for index in wave_start..wave_end {
                let (client, mut eventloop) = AsyncClient::new(
                    options(sink, &format!("bench-rumqttc-idle-{index}"), settings),
                    settings.rumqttc_capacity,
                );
                eventloop.set_network_options(network_options());
                handles.push(client);
                let connected_tx = connected_tx.clone();
                tokio::spawn(async move {
                    // An idle client's event loop runs until its connection ends.
                    while let Ok(event) = eventloop.poll().await {
                        if let Event::Incoming(Packet::ConnAck(_)) = event {
                            let _ = connected_tx.send(());
                        }
                    }
                });
            }
            for _ in wave_start..wave_end {
                timeout_at(deadline, connected_rx.recv())
                    .await?
                    .ok_or("idle client tasks ended before connecting")?;
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
/// other, and counts file descriptors and tokio tasks before and after.
pub fn churn(sink: SocketAddr, cycles: u64, settings: &Settings) -> BenchResult<ChurnRun> {
    runtime()?.block_on(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let meter = ChurnMeter::start(|| 0)?;
        for _ in 0..cycles {
            let (client, mut eventloop) =
                connect(sink, "bench-rumqttc-churn", settings, deadline).await?;
            disconnect(&client, &mut eventloop, deadline).await?;
        }
        meter.finish(cycles).await
    })
}

/// Attempts `cycles` connections to `refused` (a port without a listener); each
/// must fail.
pub fn failed_connects(
    refused: SocketAddr,
    cycles: u64,
    settings: &Settings,
) -> BenchResult<ChurnRun> {
    runtime()?.block_on(async {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let meter = ChurnMeter::start(|| 0)?;
        for _ in 0..cycles {
            let (_client, mut eventloop) = AsyncClient::new(
                options(refused, "bench-rumqttc-refused", settings),
                settings.rumqttc_capacity,
            );
            eventloop.set_network_options(network_options());
            match timeout_at(deadline, eventloop.poll()).await? {
                Err(ConnectionError::Io(_) | ConnectionError::ConnectionRefused(_)) => {}
                Err(error) => {
                    return Err(format!("expected connection refused, got {error}").into())
                }
                Ok(event) => {
                    return Err(format!("expected connection refused, got {event:?}").into())
                }
            }
        }
        meter.finish(cycles).await
    })
}

/// Builds a runtime of the flavour an actix System uses: one thread.
pub fn runtime() -> BenchResult<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn options(addr: SocketAddr, client_id: &str, settings: &Settings) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(KEEP_ALIVE);
    options.set_inflight(settings.inflight);
    options
}

fn network_options() -> NetworkOptions {
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

/// Creates a client and polls its event loop until the CONNACK arrives.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    settings: &Settings,
    deadline: Instant,
) -> BenchResult<(AsyncClient, EventLoop)> {
    let (client, mut eventloop) = AsyncClient::new(
        options(addr, client_id, settings),
        settings.rumqttc_capacity,
    );
    eventloop.set_network_options(network_options());
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) =
            timeout_at(deadline, eventloop.poll()).await??
        {
            return Ok((client, eventloop));
        }
    }
}

async fn wait_for_suback(eventloop: &mut EventLoop, deadline: Instant) -> BenchResult<()> {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = timeout_at(deadline, eventloop.poll()).await?? {
            return Ok(());
        }
    }
}

/// Sends DISCONNECT and polls until it is written.
async fn disconnect(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    deadline: Instant,
) -> BenchResult<()> {
    client.disconnect().await?;
    loop {
        if let Event::Outgoing(Outgoing::Disconnect) =
            timeout_at(deadline, eventloop.poll()).await??
        {
            return Ok(());
        }
    }
}

fn qos_level(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
