//! Process measurements (CPU time from the process CPU clock, resident memory and
//! open file descriptors from /proc) and the order statistics the report prints.
//!
//! Linux only: every reader returns an error elsewhere.

use std::error::Error;
use std::fs;
use std::process::Command;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Result type of the benchmark helpers.
pub type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Bytes per page of the `resident` field of /proc/self/statm, confirmed by
/// `getconf PAGESIZE` at start-up.
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// CPU time (user plus system) this process has used so far, in all its threads,
/// from the kernel's process CPU clock (nanoseconds, not clock ticks).
pub fn process_cpu() -> BenchResult<Duration> {
    let time = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(time))
}

/// Converts /proc counters to bytes.
#[derive(Debug, Clone, Copy)]
pub struct ProcUnits {
    page_size: u64,
}

impl ProcUnits {
    /// Asks `getconf` for the page size, falling back to the Linux default when it
    /// cannot run.
    pub fn detect() -> Self {
        Self {
            page_size: getconf("PAGESIZE").unwrap_or(DEFAULT_PAGE_SIZE),
        }
    }

    /// Resident set size of this process in bytes.
    pub fn resident_bytes(self) -> BenchResult<u64> {
        let statm = fs::read_to_string("/proc/self/statm")?;
        let resident: u64 = statm
            .split_whitespace()
            .nth(1)
            .ok_or("invalid /proc/self/statm: missing resident field")?
            .parse()?;
        Ok(resident * self.page_size)
    }
}

fn getconf(name: &str) -> Option<u64> {
    let output = Command::new("getconf").arg(name).output().ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

/// Number of file descriptors this process has open.
pub fn open_fds() -> BenchResult<usize> {
    Ok(fs::read_dir("/proc/self/fd")?.count())
}

/// Median, minimum and maximum of the repetitions of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `values`; `None` when there are none. The median of an even
    /// count is the mean of the two middle values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let upper = *sorted.get(count / 2)?;
        let median = if count % 2 == 0 {
            (sorted.get(count / 2 - 1)? + upper) / 2.0
        } else {
            upper
        };
        Some(Self {
            median,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Percentiles 10 to 90 in steps of 10.
    pub deciles: [f64; 9],
}

impl Percentiles {
    /// Computes nearest-rank percentiles of `samples` (nanoseconds), sorting them
    /// in place; `None` when there are no samples.
    pub fn of_nanos(samples: &mut [u64]) -> Option<Self> {
        samples.sort_unstable();
        let rank = |percent: usize| {
            let index = (samples.len() * percent).div_ceil(100).saturating_sub(1);
            samples.get(index).map(|&nanos| nanos as f64 / 1000.0)
        };
        let mut deciles = [0.0; 9];
        for (tenth, slot) in (1..).zip(&mut deciles) {
            *slot = rank(tenth * 10)?;
        }
        Some(Self {
            p50: rank(50)?,
            p99: rank(99)?,
            max: rank(100)?,
            deciles,
        })
    }
}

/// Messages per second for `messages` in `elapsed`.
pub fn rate(messages: u64, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Microseconds of `total` per message.
pub fn micros_per(total: Duration, messages: u64) -> f64 {
    total.as_secs_f64() * 1e6 / messages.max(1) as f64
}
