//! Settings and results shared by the mqttlink and rumqttc sides of the benchmark,
//! so both run the same workload with the same parameters.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::measure::{process_cpu, BenchResult, ProcUnits};
use crate::sink::PAYLOAD_LEN;

/// Topic of every message the clients publish to the sink.
pub const PUBLISH_TOPIC: &str = "bench/publish";

/// Time limit of one run, so a stalled client ends the benchmark with an error
/// instead of hanging it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Keep-alive of every client: long enough that no PINGREQ falls into a run.
pub const KEEP_ALIVE: Duration = Duration::from_secs(600);

/// Time the latency runs wait after the last send for messages still in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Time resources get to return to their count before churn, for clients that
/// finish stopping after their last event.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients that connect at the same time in the memory workload.
pub const CONNECT_WAVE: usize = 250;

/// Time idle clients get after the last CONNACK before memory is measured, for
/// any work a client does right after connecting.
pub const IDLE_SETTLE: Duration = Duration::from_millis(500);

/// Parameters both libraries use.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Unacknowledged QoS 1 and 2 messages allowed in each direction.
    pub inflight: u16,
    /// Capacity of rumqttc's request channel (`AsyncClient::new(options, capacity)`).
    pub rumqttc_capacity: usize,
    /// Publishes mqttlink keeps outstanding at once in the publish workloads.
    pub mqttlink_outstanding: usize,
    /// Mailbox capacity of the actors that receive mqttlink's messages.
    pub recipient_mailbox: usize,
    pub units: ProcUnits,
}

/// Outcome of a throughput run: messages moved, wall time and process CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub messages: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
    /// Messages the client dropped instead of delivering (inbound QoS 0 only).
    pub lost: u64,
}

impl Throughput {
    pub fn with_lost(self, lost: u64) -> Self {
        Self { lost, ..self }
    }
}

/// Resident memory of a process before and after connecting idle clients.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRun {
    pub clients: usize,
    pub before: u64,
    pub after: u64,
}

impl MemoryRun {
    /// Resident bytes added per client.
    pub fn bytes_per_client(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.clients.max(1) as f64
    }
}

/// Outcome of a latency run.
#[derive(Debug, Clone, Default)]
pub struct LatencyRun {
    /// Round-trip time of each message received, in nanoseconds.
    pub samples: Vec<u64>,
    /// Messages sent but not received before the drain timeout.
    pub lost: u64,
}

impl LatencyRun {
    /// Adds the samples and losses of `other`, a run of the same workload.
    pub fn pool(&mut self, other: Self) {
        self.samples.extend(other.samples);
        self.lost += other.lost;
    }
}

/// Process resources counted before and after churn; equal when nothing leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub open_fds: usize,
    pub tokio_tasks: usize,
    /// `mqttlink::live_actor_count()`; zero for rumqttc.
    pub live_actors: usize,
}

/// Outcome of a churn run.
#[derive(Debug, Clone, Copy)]
pub struct ChurnRun {
    pub cycles: u64,
    pub elapsed: Duration,
    pub before: Resources,
    pub after: Resources,
}

/// Parameters of a latency run through the broker at `broker`.
#[derive(Debug, Clone, Copy)]
pub struct LatencyPlan {
    pub broker: SocketAddr,
    pub qos: u8,
    pub rate: u64,
    pub duration: Duration,
    /// Whether the publisher yields once after each publish call.
    pub yield_after_publish: bool,
}

impl LatencyPlan {
    /// Messages the run sends.
    pub fn messages(&self) -> u64 {
        (self.rate as f64 * self.duration.as_secs_f64()) as u64
    }

    /// Time after the start at which message `index` is due.
    pub fn due(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate.max(1) as f64)
    }
}

/// Returns the payload of every throughput message: 64 static bytes, shared, never copied.
pub fn payload() -> Bytes {
    static PAYLOAD: [u8; PAYLOAD_LEN] = [b'x'; PAYLOAD_LEN];
    Bytes::from_static(&PAYLOAD)
}

/// Returns the topic filter that makes the sink publish `count` messages at `qos`.
pub fn push_filter(qos: u8, count: u64) -> String {
    format!("{}{qos}/{count}", crate::sink::PUSH_PREFIX)
}

/// Nanoseconds since the first call in this process, on the monotonic clock.
pub fn monotonic_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Builds a 64-byte payload that starts with the send time from [`monotonic_nanos`].
pub fn timestamped_payload() -> Bytes {
    Bytes::copy_from_slice(&timestamped_bytes())
}

/// Returns the bytes of [`timestamped_payload`], for a caller that may need to build
/// the payload more than once.
pub fn timestamped_bytes() -> [u8; PAYLOAD_LEN] {
    let mut payload = [0_u8; PAYLOAD_LEN];
    for (slot, byte) in payload.iter_mut().zip(monotonic_nanos().to_le_bytes()) {
        *slot = byte;
    }
    payload
}

/// Nanoseconds between the send time in `payload` and now.
pub fn latency_nanos(payload: &[u8]) -> BenchResult<u64> {
    let stamp: [u8; 8] = payload
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("latency payload shorter than its 8-byte timestamp")?;
    Ok(monotonic_nanos().saturating_sub(u64::from_le_bytes(stamp)))
}

/// Process CPU time and wall time from the moment it is created.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    started: Instant,
    cpu: Duration,
}

impl Stopwatch {
    pub fn start() -> BenchResult<Self> {
        Ok(Self {
            started: Instant::now(),
            cpu: process_cpu()?,
        })
    }

    pub fn stop(&self, messages: u64) -> BenchResult<Throughput> {
        Ok(Throughput {
            messages,
            elapsed: self.started.elapsed(),
            cpu: process_cpu()?.saturating_sub(self.cpu),
            lost: 0,
        })
    }
}

/// Counts resources in use by this process and, for mqttlink, its actors.
pub fn count_resources(live_actors: usize) -> BenchResult<Resources> {
    Ok(Resources {
        open_fds: crate::measure::open_fds()?,
        tokio_tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        live_actors,
    })
}

/// Wall time and resource counts of a churn run.
#[derive(Debug)]
pub struct ChurnMeter {
    before: Resources,
    started: Instant,
    live_actors: fn() -> usize,
}

impl ChurnMeter {
    /// Counts resources and starts the clock; `live_actors` counts the library's
    /// actors.
    pub fn start(live_actors: fn() -> usize) -> BenchResult<Self> {
        Ok(Self {
            before: count_resources(live_actors())?,
            started: Instant::now(),
            live_actors,
        })
    }

    /// Stops the clock, then counts resources until they equal the count at the
    /// start or [`SETTLE_TIMEOUT`] has passed.
    pub async fn finish(self, cycles: u64) -> BenchResult<ChurnRun> {
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let after = count_resources((self.live_actors)())?;
            if after == self.before || Instant::now() >= deadline {
                return Ok(ChurnRun {
                    cycles,
                    elapsed,
                    before: self.before,
                    after,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
