//! A real Mosquitto broker for interop tests: one process per test, on a free
//! loopback port, with its own configuration and log file in a fresh temporary
//! directory, stopped by its PID when the handle is dropped.
//!
//! Include it with `#[path = "support/mosquitto.rs"] mod mosquitto;`.
//!
//! When the broker binary cannot be found or spawned, [`Mosquitto::start`] prints a
//! "skipped" line and returns `None`, so a test can return early, unless the
//! environment variable `MQTTLINK_REQUIRE_MOSQUITTO` is set (CI sets it): then the
//! test fails. A broker that starts but does not accept connections always fails the
//! test, with the tail of its log.
#![allow(dead_code, clippy::panic, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that turns a missing broker into a test failure.
pub const REQUIRE_VAR: &str = "MQTTLINK_REQUIRE_MOSQUITTO";

/// Environment variable that overrides the path of the broker binary.
pub const BINARY_VAR: &str = "MQTTLINK_MOSQUITTO";

const DEFAULT_BINARY: &str = "/usr/sbin/mosquitto";

/// How long a started broker has to accept its first TCP connection.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Start attempts, each on a newly chosen port: another process may take the port
/// between the moment it is found free and the moment the broker binds it.
const START_ATTEMPTS: u32 = 3;

const LOG_TAIL_LINES: usize = 30;

/// A running Mosquitto process, killed and reaped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts a broker with the default configuration, or returns `None` after
    /// printing why the test is skipped.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a broker whose configuration file ends with `extra_lines`, for example
    /// `["sys_interval 1"]`.
    pub fn start_with(extra_lines: &[&str]) -> Option<Self> {
        Self::start_with_files(extra_lines, &[])
    }

    /// Starts a broker after writing `files` (name, contents) into its directory.
    /// In `extra_lines`, `{dir}` stands for that directory, as in
    /// `"acl_file {dir}/acl"`.
    pub fn start_with_files(extra_lines: &[&str], files: &[(&str, &str)]) -> Option<Self> {
        let binary = find_binary()?;
        let dir = create_temp_dir();
        for (name, contents) in files {
            fs::write(dir.join(name), contents).expect("write a file for mosquitto");
        }
        let dir_text = dir.display().to_string();
        let extra_lines: Vec<String> = extra_lines
            .iter()
            .map(|line| line.replace("{dir}", &dir_text))
            .collect();

        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_broker(&binary, &dir, &extra_lines) {
                Ok(Spawned::Ready(broker)) => return Some(broker),
                Ok(Spawned::Exited(message)) => last_error = message,
                Err(error) => {
                    skip_or_fail(&format!("failed to spawn {}: {error}", binary.display()));
                    let _ = fs::remove_dir_all(&dir);
                    return None;
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("mosquitto did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// TCP port the broker listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process ID of the broker.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Host and port as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Broker URL in the form `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Returns the broker's whole log so far; empty before the log file exists.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits until the broker's log contains `needle`, for example
    /// `"Sending SUBACK to sub-1"` to know a subscription made by another process is
    /// in place. Fails the test with the log's tail after [`READY_TIMEOUT`]. This
    /// blocks the thread, so async tests poll [`Mosquitto::log`] instead.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "mosquitto log has no {needle:?} after {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            thread::sleep(READY_POLL_INTERVAL);
        }
    }

    /// Returns the last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        read_log_tail(&self.dir)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("mosquitto log tail:\n{}", self.log_tail());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum Spawned {
    Ready(Mosquitto),
    Exited(String),
}

/// Finds the broker binary, or reports the skip and returns `None`. When
/// `MQTTLINK_MOSQUITTO` is set, only that path is tried.
fn find_binary() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os(BINARY_VAR) {
        Some(path) => vec![PathBuf::from(path)],
        None => std::iter::once(PathBuf::from(DEFAULT_BINARY))
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths)
                    .map(|dir| dir.join("mosquitto")),
            )
            .collect(),
    };
    if let Some(found) = candidates.iter().find(|candidate| candidate.is_file()) {
        return Some(found.clone());
    }
    skip_or_fail(&format!(
        "mosquitto not found (tried {})",
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    None
}

/// Fails the test when the broker is required, or prints the skip otherwise.
fn skip_or_fail(reason: &str) {
    assert!(
        std::env::var_os(REQUIRE_VAR).is_none(),
        "{reason}; {REQUIRE_VAR} is set, so this test requires mosquitto (install the Debian package `mosquitto`)"
    );
    eprintln!(
        "skipped: {reason}; this test did not run (install mosquitto, or set {REQUIRE_VAR} to make this a failure)"
    );
}

fn spawn_broker(binary: &Path, dir: &Path, extra_lines: &[String]) -> std::io::Result<Spawned> {
    let port = free_port()?;
    let config_path = dir.join("mosquitto.conf");
    write_config(&config_path, dir, port, extra_lines)?;

    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout.log"))?)
        .stderr(fs::File::create(dir.join("stderr.log"))?)
        .spawn()?;

    // Bounded polling: a TCP connect succeeds once the listener is bound.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Spawned::Exited(format!(
                "mosquitto exited with {status} on port {port}:\n{}",
                read_log_tail(dir)
            )));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, READY_POLL_INTERVAL).is_ok() {
            return Ok(Spawned::Ready(Mosquitto {
                child,
                port,
                dir: dir.to_path_buf(),
            }));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mosquitto did not accept connections on port {port} within {READY_TIMEOUT:?}:\n{}",
                read_log_tail(dir)
            );
        }
        thread::sleep(READY_POLL_INTERVAL);
    }
}

fn write_config(path: &Path, dir: &Path, port: u16, extra_lines: &[String]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    writeln!(file, "listener {port} 127.0.0.1")?;
    writeln!(file, "allow_anonymous true")?;
    writeln!(file, "persistence false")?;
    writeln!(
        file,
        "log_dest file {}",
        dir.join("mosquitto.log").display()
    )?;
    writeln!(file, "log_type all")?;
    // Run as root, mosquitto switches to the user `mosquitto` before opening its
    // log file, which then cannot be created in this root-owned directory.
    if running_as_root() {
        writeln!(file, "user root")?;
    }
    for line in extra_lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

/// Asks the OS for a free loopback port. The port is released before the broker
/// binds it, hence the retries in [`Mosquitto::start_with`].
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn create_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let name = format!(
        "mqttlink-mosquitto-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(name);
    fs::create_dir_all(&dir).expect("create a temporary directory for mosquitto");
    dir
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1))
            == Some("0")
    })
}

fn read_log_tail(dir: &Path) -> String {
    let mut tail = String::new();
    for name in ["mosquitto.log", "stderr.log", "stdout.log"] {
        let Ok(text) = fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        if start < lines.len() {
            let _ = writeln!(tail, "--- {name}");
            for line in lines.iter().skip(start) {
                let _ = writeln!(tail, "{line}");
            }
        }
    }
    tail
}
