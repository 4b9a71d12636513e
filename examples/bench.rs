//! Client benchmarks of mqttlink side by side with rumqttc 0.25.
//!
//! Throughput, CPU time, memory and churn are measured against a sink (a minimal
//! loopback server in a child process that acknowledges and discards), so the
//! numbers show the cost of the client and not of a broker. Latency is measured
//! through a real Mosquitto. Every workload runs both libraries in alternating
//! order, repeated `--reps` times. The report prints medians with min and max and
//! the ratio mqttlink/rumqttc, and the SVG charts go to `--out`.
//!
//! ```text
//! cargo run --release --example bench -- [WORKLOAD...] [--count N] [--reps R] [--out docs/img]
//! ```
//!
//! docs/benchmarks.md (section "Client") describes each workload and one full run.
#![allow(
    // Counts and durations become f64 for rates; they stay far below 2^52.
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

#[path = "bench/common.rs"]
mod common;
#[path = "bench/measure.rs"]
mod measure;
#[path = "../tests/support/mosquitto.rs"]
mod mosquitto;
#[path = "bench/mqttlink_side.rs"]
mod mqttlink_side;
#[path = "bench/plot.rs"]
mod plot;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/rumqttc_side.rs"]
mod rumqttc_side;
#[path = "bench/sink.rs"]
mod sink;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use common::{ChurnRun, LatencyPlan, LatencyRun, MemoryRun, Settings, Throughput};
use measure::{micros_per, rate, BenchResult, Percentiles, ProcUnits};
use report::{Better, Goal, Library, Report};
use sink::SinkProcess;

/// Maximum resident bytes per idle mqttlink connection.
const MEMORY_GOAL_BYTES: f64 = 16.0 * 1024.0;

/// Minimum throughput ratio mqttlink/rumqttc.
const THROUGHPUT_GOAL: f64 = 1.5;

/// Maximum ratio of CPU time per message mqttlink/rumqttc.
const CPU_GOAL: f64 = 2.0 / 3.0;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmarks mqttlink against rumqttc: throughput and CPU to a sink, latency through Mosquitto, memory and churn",
    args_conflicts_with_subcommands = true
)]
#[allow(clippy::struct_excessive_bools)] // Each bool is one command-line switch.
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,

    /// Workloads to run, in this order; all of them when none is given.
    #[arg(value_enum)]
    workloads: Vec<Workload>,

    /// Messages per run of qos0/qos1/qos2/inbound, clients per run of memory,
    /// cycles per run of churn (default: the count each workload lists).
    #[arg(long)]
    count: Option<u64>,

    /// Repetitions of every workload for each library.
    #[arg(long, default_value_t = 5)]
    reps: usize,

    /// Directory the SVG charts are written to.
    #[arg(long, default_value = "docs/img")]
    out: PathBuf,

    /// Skip writing charts.
    #[arg(long)]
    no_plots: bool,

    /// Run only this library (for profiling one side).
    #[arg(long, value_enum)]
    only: Option<Library>,

    /// Unacknowledged QoS 1 and 2 messages allowed in each direction.
    #[arg(long, default_value_t = 100)]
    inflight: u16,

    /// Capacity of rumqttc's request channel (1,000 was its fastest of 10, 100
    /// and 1,000 in qos0 and qos1).
    #[arg(long, default_value_t = 1000)]
    rumqttc_capacity: usize,

    /// Publishes mqttlink keeps outstanding at once in qos0/qos1/qos2.
    #[arg(long, default_value_t = 1000)]
    mqttlink_outstanding: usize,

    /// Mailbox capacity of the actors that receive mqttlink's messages (actix's
    /// default is 16).
    #[arg(long, default_value_t = 1024)]
    recipient_mailbox: usize,

    /// Seconds of paced sending per library in each repetition of a latency workload.
    #[arg(long, default_value_t = 2.0)]
    latency_seconds: f64,

    /// Windows each latency repetition is cut into. The libraries take turns window by
    /// window, so a slow phase of the machine falls on both, and each library's
    /// samples from all its windows give the percentiles of the repetition.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    latency_windows: u32,

    /// Message rates of the latency workload, in messages per second.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    latency_rates: Vec<u64>,

    /// Also print the deciles of each library's latency samples, one line per
    /// repetition. A median alone hides the spread: where client and broker share a
    /// core, the samples can fall into two groups (see docs/benchmarks.md).
    #[arg(long)]
    latency_deciles: bool,

    /// Run the latency workload with the client thread on one core and Mosquitto on
    /// another. When they share a core, the kernel decides at each send which of the
    /// two runs first, and that choice can decide the median (see docs/benchmarks.md).
    #[arg(long)]
    latency_pin: bool,

    /// In the latency workload, let the publisher task yield once after each publish
    /// call, on both sides. The client then writes the message before the publisher
    /// arms the timer for its next one, instead of after (see docs/benchmarks.md).
    #[arg(long)]
    latency_yield: bool,
}

/// Modes the benchmark re-executes itself in; not for direct use.
#[derive(Debug, Subcommand)]
enum Internal {
    /// Serve as the sink until standard input closes.
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        window: u16,
    },
    /// Connect idle clients of one library and print resident memory.
    #[command(hide = true)]
    MemoryChild {
        #[arg(long, value_enum)]
        library: Library,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        inflight: u16,
        #[arg(long)]
        rumqttc_capacity: usize,
    },
}

/// The workloads, each selectable by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// QoS 0 publish to the sink, 1,000,000 x 64 B.
    Qos0,
    /// QoS 1 publish to the sink, 100,000 x 64 B.
    Qos1,
    /// QoS 2 publish to the sink, 100,000 x 64 B.
    Qos2,
    /// The sink publishes 1,000,000 QoS 0 and 100,000 QoS 1 messages to the client.
    Inbound,
    /// Only the QoS 0 half of `inbound`: 1,000,000 messages.
    InboundQos0,
    /// Only the QoS 1 half of `inbound`: 100,000 messages.
    InboundQos1,
    /// Round trip through Mosquitto at 1,000 and 10,000 msg/s, QoS 0 and 1.
    Latency,
    /// Resident memory per idle connection, 1,000 and 5,000 clients.
    Memory,
    /// 10,000 connect/disconnect cycles and 10,000 refused connects.
    Churn,
}

impl Workload {
    const ALL: [Self; 7] = [
        Self::Qos0,
        Self::Qos1,
        Self::Qos2,
        Self::Inbound,
        Self::Latency,
        Self::Memory,
        Self::Churn,
    ];
}

fn main() -> BenchResult<()> {
    let cli = Cli::parse();
    let units = ProcUnits::detect();
    match cli.internal {
        Some(Internal::Sink { window }) => return sink::serve(window),
        Some(Internal::MemoryChild {
            library,
            clients,
            port,
            inflight,
            rumqttc_capacity,
        }) => {
            let settings = Settings {
                inflight,
                rumqttc_capacity,
                mqttlink_outstanding: 0,
                recipient_mailbox: 0,
                units,
            };
            return memory_child(library, clients, port, &settings);
        }
        None => {}
    }

    let settings = Settings {
        inflight: cli.inflight,
        rumqttc_capacity: cli.rumqttc_capacity,
        mqttlink_outstanding: cli.mqttlink_outstanding,
        recipient_mailbox: cli.recipient_mailbox,
        units,
    };
    let workloads = if cli.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        cli.workloads.clone()
    };
    let libraries: Vec<Library> = Library::BOTH
        .into_iter()
        .filter(|library| cli.only.map_or(true, |only| only == *library))
        .collect();
    let bench = Bench {
        cli: &cli,
        settings,
        libraries,
        sink: SinkProcess::spawn(cli.inflight)?,
    };

    let mut report = Report::default();
    for workload in workloads {
        eprintln!("running {workload:?}");
        bench.run(workload, &mut report)?;
    }

    println!("{}", report.render());
    if !cli.no_plots {
        for path in plot::write_charts(&report, &cli.out)? {
            println!("wrote {path}");
        }
    }
    Ok(())
}

/// One side's run of a throughput workload: sink, QoS, count, settings.
type ThroughputRun = fn(SocketAddr, u8, u64, &Settings) -> BenchResult<Throughput>;

/// One invocation's settings and its sink.
#[derive(Debug)]
struct Bench<'a> {
    cli: &'a Cli,
    settings: Settings,
    libraries: Vec<Library>,
    sink: SinkProcess,
}

impl Bench<'_> {
    fn run(&self, workload: Workload, report: &mut Report) -> BenchResult<()> {
        match workload {
            Workload::Qos0 => self.publish(report, "qos0", (0, 1_000_000)),
            Workload::Qos1 => self.publish(report, "qos1", (1, 100_000)),
            Workload::Qos2 => self.publish(report, "qos2", (2, 100_000)),
            Workload::Inbound => {
                self.inbound(report, "inbound-qos0", (0, 1_000_000))?;
                self.inbound(report, "inbound-qos1", (1, 100_000))
            }
            Workload::InboundQos0 => self.inbound(report, "inbound-qos0", (0, 1_000_000)),
            Workload::InboundQos1 => self.inbound(report, "inbound-qos1", (1, 100_000)),
            Workload::Latency => self.latency(report),
            Workload::Memory => self.memory(report),
            Workload::Churn => self.churn(report),
        }
    }

    /// Runs `run` for each library in turn, `--reps` times; an error names the
    /// workload, library and repetition.
    fn repeat<T>(
        &self,
        name: &str,
        mut run: impl FnMut(Library) -> BenchResult<T>,
        record: impl FnMut(Library, T),
    ) -> BenchResult<()> {
        self.repeat_in_turns(
            name,
            |order| {
                order
                    .iter()
                    .map(|&library| Ok((library, named(library, run(library))?)))
                    .collect()
            },
            record,
        )
    }

    /// Runs `run` `--reps` times with the libraries in the order they take turns in
    /// that repetition, and records what it returns for each library.
    fn repeat_in_turns<T>(
        &self,
        name: &str,
        mut run: impl FnMut(&[Library]) -> BenchResult<Vec<(Library, T)>>,
        mut record: impl FnMut(Library, T),
    ) -> BenchResult<()> {
        for repetition in 1..=self.cli.reps {
            // Which library goes first changes every repetition, so a drift of the
            // machine during the workload does not favour one of them.
            let mut order = self.libraries.clone();
            if repetition % 2 == 0 {
                order.reverse();
            }
            let results = run(&order)
                .map_err(|error| format!("{name} failed in repetition {repetition}: {error}"))?;
            for (library, result) in results {
                record(library, result);
            }
        }
        Ok(())
    }

    fn publish(&self, report: &mut Report, name: &str, load: (u8, u64)) -> BenchResult<()> {
        self.throughput(
            report,
            name,
            load,
            mqttlink_side::publish,
            rumqttc_side::publish,
        )
    }

    fn inbound(&self, report: &mut Report, name: &str, load: (u8, u64)) -> BenchResult<()> {
        self.throughput(
            report,
            name,
            load,
            mqttlink_side::inbound,
            rumqttc_side::inbound,
        )
    }

    /// Runs a throughput workload: `mqttlink` and `rumqttc` are the two sides'
    /// functions for it (publish or inbound).
    fn throughput(
        &self,
        report: &mut Report,
        name: &str,
        (qos, default_count): (u8, u64),
        mqttlink: ThroughputRun,
        rumqttc: ThroughputRun,
    ) -> BenchResult<()> {
        let count = self.cli.count.unwrap_or(default_count);
        let sink = self.sink.addr();
        // One round that is not recorded: a process's first run pays for page faults
        // and the allocator's growth, which made the first library's first run up to
        // half again as slow as its later runs.
        let warm_up = (count / 10).max(1);
        for &library in &self.libraries {
            match library {
                Library::Mqttlink => mqttlink(sink, qos, warm_up, &self.settings)?,
                Library::Rumqttc => rumqttc(sink, qos, warm_up, &self.settings)?,
            };
        }
        self.repeat(
            name,
            |library| match library {
                Library::Mqttlink => mqttlink(sink, qos, count, &self.settings),
                Library::Rumqttc => rumqttc(sink, qos, count, &self.settings),
            },
            |library, throughput| record_throughput(report, name, library, throughput),
        )
    }

    fn latency(&self, report: &mut Report) -> BenchResult<()> {
        let Some(broker) = mosquitto::Mosquitto::start_with(&[
            "set_tcp_nodelay true",
            "max_queued_messages 0",
            // The helper logs every packet for the tests. A broker in service logs
            // errors and warnings only, so the two log writes per message go.
            "log_type none",
            "log_type error",
            "log_type warning",
            &format!("max_inflight_messages {}", self.settings.inflight),
        ]) else {
            report
                .notes
                .push("latency: skipped, mosquitto not found".to_owned());
            return Ok(());
        };
        let _pinned = if self.cli.latency_pin {
            let pinned = Pinned::apart(broker.pid())?;
            if pinned.is_none() {
                report
                    .notes
                    .push("latency: not pinned, fewer than two cores allowed".to_owned());
            }
            pinned
        } else {
            None
        };
        let windows = self.cli.latency_windows;
        for qos in [0, 1] {
            for &rate in &self.cli.latency_rates {
                let plan = LatencyPlan {
                    broker: broker.addr(),
                    qos,
                    rate,
                    duration: Duration::from_secs_f64(
                        self.cli.latency_seconds / f64::from(windows),
                    ),
                    yield_after_publish: self.cli.latency_yield,
                };
                let name = format!("latency-qos{qos}-{rate}/s");
                self.repeat_in_turns(
                    &name,
                    |order| self.latency_windows(plan, windows, order),
                    |library, run| {
                        record_latency(report, &name, library, run, self.cli.latency_deciles);
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Runs `windows` latency windows of each library in `libraries`, which take turns
    /// and swap places every window. Returns each library's windows pooled into one run.
    fn latency_windows(
        &self,
        plan: LatencyPlan,
        windows: u32,
        libraries: &[Library],
    ) -> BenchResult<Vec<(Library, LatencyRun)>> {
        let mut pooled: Vec<(Library, LatencyRun)> = libraries
            .iter()
            .map(|&library| (library, LatencyRun::default()))
            .collect();
        for window in 0..windows {
            let mut turns: Vec<&mut (Library, LatencyRun)> = pooled.iter_mut().collect();
            if window % 2 == 1 {
                turns.reverse();
            }
            for (library, run) in turns {
                let window_run = match library {
                    Library::Mqttlink => mqttlink_side::latency(plan, &self.settings),
                    Library::Rumqttc => rumqttc_side::latency(plan, &self.settings),
                };
                run.pool(named(*library, window_run)?);
            }
        }
        Ok(pooled)
    }

    fn memory(&self, report: &mut Report) -> BenchResult<()> {
        let counts = match self.cli.count {
            Some(count) => vec![usize::try_from(count)?],
            None => vec![1_000, 5_000],
        };
        for clients in counts {
            let name = format!("memory-{clients}");
            self.repeat(
                &name,
                |library| self.spawn_memory_child(library, clients),
                |library, run| {
                    report.record(
                        &name,
                        "bytes/client",
                        Better::Lower,
                        (library == Library::Mqttlink)
                            .then_some(Goal::ValueAtMost(MEMORY_GOAL_BYTES)),
                        library,
                        run.bytes_per_client(),
                    );
                },
            )?;
        }
        Ok(())
    }

    /// Measures one library's idle clients in a fresh process, so neither
    /// library's allocations count against the other.
    fn spawn_memory_child(&self, library: Library, clients: usize) -> BenchResult<MemoryRun> {
        let output = Command::new(std::env::current_exe()?)
            .args([
                "memory-child",
                "--library",
                library.name(),
                "--clients",
                &clients.to_string(),
                "--port",
                &self.sink.addr().port().to_string(),
                "--inflight",
                &self.settings.inflight.to_string(),
                "--rumqttc-capacity",
                &self.settings.rumqttc_capacity.to_string(),
            ])
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "memory child for {} exited with {}: {}",
                library.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        parse_memory_line(&stdout)
    }

    fn churn(&self, report: &mut Report) -> BenchResult<()> {
        let cycles = self.cli.count.unwrap_or(10_000);
        let sink = self.sink.addr();
        let refused = refused_addr()?;
        let mut leaks = Vec::new();
        self.repeat(
            "churn-connect",
            |library| match library {
                Library::Mqttlink => mqttlink_side::churn(sink, cycles, &self.settings),
                Library::Rumqttc => rumqttc_side::churn(sink, cycles, &self.settings),
            },
            |library, run| record_churn(report, &mut leaks, "churn-connect", library, run),
        )?;
        self.repeat(
            "churn-refused",
            |library| match library {
                Library::Mqttlink => {
                    mqttlink_side::failed_connects(refused, cycles, &self.settings)
                }
                Library::Rumqttc => rumqttc_side::failed_connects(refused, cycles, &self.settings),
            },
            |library, run| record_churn(report, &mut leaks, "churn-refused", library, run),
        )?;
        report.notes.extend(count_repeats(leaks, self.cli.reps));
        Ok(())
    }
}

fn record_throughput(report: &mut Report, name: &str, library: Library, run: Throughput) {
    if run.lost > 0 {
        report.notes.push(format!(
            "{name}: {} dropped {} of {} messages; msg/s and CPU count delivered messages only",
            library.name(),
            run.lost,
            run.lost + run.messages
        ));
    }
    report.record(
        name,
        "msg/s",
        Better::Higher,
        Some(Goal::RatioAtLeast(THROUGHPUT_GOAL)),
        library,
        rate(run.messages, run.elapsed),
    );
    report.record(
        name,
        "CPU µs/msg",
        Better::Lower,
        Some(Goal::RatioAtMost(CPU_GOAL)),
        library,
        micros_per(run.cpu, run.messages),
    );
}

/// Guard that keeps the calling thread on one core and another process on a
/// second core. Dropping it gives the thread back the cores it had.
struct Pinned {
    previous: CpuSet,
}

impl Pinned {
    /// Pins the calling thread to the first core it may run on and `other_pid` to
    /// the second. Returns `None` when the thread may run on fewer than two cores.
    fn apart(other_pid: u32) -> BenchResult<Option<Self>> {
        let this_thread = Pid::from_raw(0);
        let previous = sched_getaffinity(this_thread)?;
        let mut allowed = (0..CpuSet::count()).filter(|&cpu| previous.is_set(cpu).unwrap_or(false));
        let (Some(first), Some(second)) = (allowed.next(), allowed.next()) else {
            return Ok(None);
        };
        let single_core = |cpu: usize| -> BenchResult<CpuSet> {
            let mut set = CpuSet::new();
            set.set(cpu)?;
            Ok(set)
        };
        sched_setaffinity(
            Pid::from_raw(i32::try_from(other_pid)?),
            &single_core(second)?,
        )?;
        sched_setaffinity(this_thread, &single_core(first)?)?;
        Ok(Some(Self { previous }))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.previous);
    }
}

/// Puts the name of `library` before the error of its run.
fn named<T>(library: Library, result: BenchResult<T>) -> BenchResult<T> {
    result.map_err(|error| format!("{} failed: {error}", library.name()).into())
}

fn record_latency(
    report: &mut Report,
    name: &str,
    library: Library,
    mut run: LatencyRun,
    deciles: bool,
) {
    let Some(percentiles) = Percentiles::of_nanos(&mut run.samples) else {
        report
            .notes
            .push(format!("{name}: {} received no messages", library.name()));
        return;
    };
    if deciles {
        let values: Vec<String> = percentiles
            .deciles
            .iter()
            .map(|micros| format!("{micros:.1}"))
            .collect();
        report.notes.push(format!(
            "{name} {} deciles µs: {}",
            library.name(),
            values.join(" ")
        ));
    }
    let p50_goal = Some(Goal::RatioAtMost(1.0));
    report.record(
        name,
        "p50 µs",
        Better::Lower,
        p50_goal,
        library,
        percentiles.p50,
    );
    report.record(
        name,
        "p99 µs",
        Better::Lower,
        None,
        library,
        percentiles.p99,
    );
    report.record(
        name,
        "max µs",
        Better::Lower,
        None,
        library,
        percentiles.max,
    );
    if run.lost > 0 {
        report.notes.push(format!(
            "{name}: {} lost {} messages (not received within the drain timeout)",
            library.name(),
            run.lost
        ));
    }
}

fn record_churn(
    report: &mut Report,
    leaks: &mut Vec<String>,
    name: &str,
    library: Library,
    run: ChurnRun,
) {
    report.record(
        name,
        "µs/cycle",
        Better::Lower,
        None,
        library,
        micros_per(run.elapsed, run.cycles),
    );
    let verdict = if run.before == run.after {
        "nothing left behind"
    } else {
        "LEAK"
    };
    leaks.push(format!(
        "{name} {}: {verdict}: open fds {} -> {}, tokio tasks {} -> {}, live actors {} -> {}",
        library.name(),
        run.before.open_fds,
        run.after.open_fds,
        run.before.tokio_tasks,
        run.after.tokio_tasks,
        run.before.live_actors,
        run.after.live_actors,
    ));
}

/// Collapses equal lines into one, with the number of repetitions it stands for.
fn count_repeats(lines: Vec<String>, repetitions: usize) -> Vec<String> {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for line in lines {
        match counted.iter_mut().find(|(seen, _)| *seen == line) {
            Some((_, count)) => *count += 1,
            None => counted.push((line, 1)),
        }
    }
    counted
        .into_iter()
        .map(|(line, count)| format!("{line} ({count} of {repetitions} repetitions)"))
        .collect()
}

/// Runs in the memory child process: prints one line the parent parses.
fn memory_child(
    library: Library,
    clients: usize,
    port: u16,
    settings: &Settings,
) -> BenchResult<()> {
    let sink = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let run = match library {
        Library::Mqttlink => mqttlink_side::idle_memory(sink, clients, settings)?,
        Library::Rumqttc => rumqttc_side::idle_memory(sink, clients, settings)?,
    };
    println!(
        "memory clients {} before {} after {}",
        run.clients, run.before, run.after
    );
    Ok(())
}

fn parse_memory_line(stdout: &str) -> BenchResult<MemoryRun> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("memory "))
        .ok_or_else(|| format!("memory child printed no result: {stdout:?}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        ["memory", "clients", clients, "before", before, "after", after] => Ok(MemoryRun {
            clients: clients.parse()?,
            before: before.parse()?,
            after: after.parse()?,
        }),
        _ => Err(format!("invalid memory child line: {line:?}").into()),
    }
}

/// Returns a loopback address with no listener: a port the OS handed out and took back.
fn refused_addr() -> BenchResult<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}
