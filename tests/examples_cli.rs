//! Runs the `mqtt` example binary (`examples/mqtt.rs`) against a test Mosquitto:
//! `sub` and `pub` in separate processes, stdin input, the last will, reconnecting
//! across a broker restart, and the error exits. Also runs the quickstart, with its
//! embedded broker and with `MQTT_URL`.
//!
//! `cargo test` builds the example before it runs the tests. When the binary is
//! missing or older than its sources, as after `cargo test --test examples_cli`
//! alone, the tests build it with `cargo build --example mqtt` first. Every child process is killed by its PID if a
//! test fails, and every wait is bounded by [`WAIT`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/reconnect_broker.rs"]
mod reconnect_broker;

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use mosquitto::Mosquitto;
use reconnect_broker::RestartableMosquitto;

/// Upper bound for every single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[test]
fn sub_prints_two_publishes_then_exits() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut sub = spawn_sub(
        &broker,
        "cli-sub",
        &["-t", "cli/#", "-q", "1", "-C", "2", "-v"],
    );
    broker.wait_for_log("Sending SUBACK to cli-sub");

    let first = run_pub(&broker, &["-t", "cli/one", "-m", "first", "-q", "1"], None);
    assert!(first.status.success(), "pub exit: {first:?}");
    let second = run_pub(
        &broker,
        &["-t", "cli/two", "-m", "second message", "-q", "2"],
        None,
    );
    assert!(second.status.success(), "pub exit: {second:?}");

    let status = sub.wait_with_timeout();
    assert!(status.success(), "sub exit status {status}");
    assert_eq!(
        sub.read_stdout_to_end(),
        "cli/one first\ncli/two second message\n"
    );
    assert_eq!(sub.read_stderr_to_end(), "");
}

#[test]
fn pub_sends_each_stdin_line() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut sub = spawn_sub(&broker, "lines-sub", &["-t", "lines", "-q", "1", "-C", "3"]);
    broker.wait_for_log("Sending SUBACK to lines-sub");

    let output = run_pub(
        &broker,
        &["-t", "lines", "-l", "-q", "1"],
        Some("alpha\nbeta\n\ngamma\n"),
    );
    assert!(output.status.success(), "pub exit: {output:?}");
    assert_eq!(output.stderr, "");

    let status = sub.wait_with_timeout();
    assert!(status.success(), "sub exit status {status}");
    assert_eq!(
        sub.read_stdout_to_end(),
        "alpha\nbeta\ngamma\n",
        "one message per non-empty line, in order"
    );
}

#[test]
fn pub_300_lines_qos2_mqtt_3_1_1() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    // Mosquitto accepts 20 inbound QoS 2 messages in flight by default and drops the
    // rest. MQTT 3.1.1 has no way to announce that limit, so `pub` must keep to it.
    let mut sub = spawn_sub(
        &broker,
        "many-sub",
        &["-V", "311", "-t", "many", "-q", "2", "-C", "300"],
    );
    broker.wait_for_log("Sending SUBACK to many-sub");
    let input: String = (1..=300)
        .flat_map(|line| [line.to_string(), "\n".into()])
        .collect();

    let output = run_pub(
        &broker,
        &["-V", "311", "-t", "many", "-l", "-q", "2"],
        Some(&input),
    );
    assert!(output.status.success(), "pub exit: {output:?}");
    assert_eq!(output.stderr, "");

    let status = sub.wait_with_timeout();
    assert!(status.success(), "sub exit status {status}");
    assert_eq!(sub.read_stdout_to_end(), input, "every line once, in order");
    assert!(
        !broker.log().contains("rc151"),
        "the broker refused a publish for its quota"
    );
}

#[test]
fn sub_flushes_each_message_at_once() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut sub = spawn_sub(&broker, "flush-sub", &["-t", "flush", "-v"]);
    broker.wait_for_log("Sending SUBACK to flush-sub");
    let lines = sub.stdout_lines();

    // Without -C the subscriber keeps running, so each line must reach the pipe
    // while the process is alive.
    for payload in ["one", "two"] {
        let output = run_pub(&broker, &["-t", "flush", "-m", payload], None);
        assert!(output.status.success(), "pub exit: {output:?}");
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no output line for {payload} within {WAIT:?}"));
        assert_eq!(line, format!("flush {payload}"));
    }
    assert!(sub.is_running(), "sub without -C keeps running");
}

#[test]
fn pub_connection_refused_fails() {
    let port = free_port();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "refused",
        "-m",
        "x",
        "-W",
        "5",
    ];
    let output = run_mqtt("pub", &args, None);

    assert!(!output.status.success(), "pub exit: {output:?}");
    assert_eq!(output.stdout, "");
    assert_one_error_line(&output.stderr);
}

#[test]
fn pub_invalid_topic_fails_before_connecting() {
    // A listener that would accept the client if it tried to connect.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let args = ["-h", "127.0.0.1", "-p", &port, "-t", "bad/#", "-m", "x"];
    let output = run_mqtt("pub", &args, None);

    assert_eq!(output.status.code(), Some(2), "pub exit: {output:?}");
    assert_one_error_line(&output.stderr);
    assert!(output.stderr.contains("bad/#"), "stderr: {}", output.stderr);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "pub connected although its topic is invalid"
    );
}

#[test]
fn sub_invalid_filter_fails() {
    let output = run_mqtt("sub", &["-t", "a/#/b"], None);

    assert_eq!(output.status.code(), Some(2), "sub exit: {output:?}");
    assert_one_error_line(&output.stderr);
}

#[test]
fn sub_timeout_before_count_fails() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut sub = spawn_sub(&broker, "quiet-sub", &["-t", "quiet", "-C", "1", "-W", "1"]);

    let status = sub.wait_with_timeout();
    assert!(!status.success(), "sub exit status {status}");
    assert_one_error_line(&sub.read_stderr_to_end());
}

#[test]
fn sub_will_published_when_killed() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let will_args = [
        "-t",
        "unused",
        "--will-topic",
        "cli/will",
        "--will-payload",
        "gone",
        "--will-qos",
        "1",
    ];
    let mut doomed = spawn_sub(&broker, "doomed-sub", &will_args);
    broker.wait_for_log("Sending SUBACK to doomed-sub");
    let mut watcher = spawn_sub(
        &broker,
        "will-watcher",
        &["-t", "cli/will", "-q", "1", "-C", "1", "-v"],
    );
    broker.wait_for_log("Sending SUBACK to will-watcher");

    // SIGKILL: the process cannot send DISCONNECT, so the broker publishes the will.
    doomed.child.kill().unwrap();
    let status = watcher.wait_with_timeout();
    assert!(status.success(), "watcher exit status {status}");
    assert_eq!(watcher.read_stdout_to_end(), "cli/will gone\n");
}

#[test]
fn sub_keeps_receiving_across_broker_restart() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(mut broker) = runtime.block_on(RestartableMosquitto::start("cli-restart")) else {
        return;
    };
    let port = broker.port().to_string();
    // -c keeps the session, and with it the subscription, in the broker's persistence
    // file across the restart.
    let sub_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "restart-sub",
        "-c",
        "-t",
        "cli/restart",
        "-q",
        "1",
        "-C",
        "2",
        "-v",
        "--reconnect-base",
        "0.05",
        "--reconnect-max",
        "0.2",
    ];
    let mut sub = spawn_mqtt("sub", &sub_args);
    wait_for_restartable_log(&broker, "Sending SUBACK to restart-sub", 1);
    let lines = sub.stdout_lines();
    let publish = |payload| {
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "cli/restart",
            "-q",
            "1",
            "-W",
            "10",
            "-m",
            payload,
        ];
        run_mqtt("pub", &args, None)
    };

    let before = publish("before");
    assert!(before.status.success(), "pub exit: {before:?}");
    let line = lines.recv_timeout(WAIT).expect("first message printed");
    assert_eq!(line, "cli/restart before");

    runtime.block_on(broker.restart());
    let after = publish("after");
    assert!(after.status.success(), "pub exit: {after:?}");
    let line = lines
        .recv_timeout(WAIT)
        .expect("message after the restart printed");
    assert_eq!(line, "cli/restart after");

    let status = sub.wait_with_timeout();
    assert!(status.success(), "sub exit status {status}");
    assert_eq!(sub.read_stderr_to_end(), "");
    assert_eq!(
        broker.log().matches("as restart-sub ").count(),
        2,
        "sub connected before and after the restart"
    );
}

#[test]
fn reconnect_max_below_base_fails_before_connecting() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "bounds",
        "--reconnect-base",
        "5",
        "--reconnect-max",
        "1",
    ];
    for (subcommand, extra) in [("pub", ["-m", "x"]), ("sub", ["-C", "1"])] {
        let mut all_args = args.to_vec();
        all_args.extend_from_slice(&extra);
        let output = run_mqtt(subcommand, &all_args, None);

        assert_eq!(
            output.status.code(),
            Some(2),
            "{subcommand} exit: {output:?}"
        );
        assert_one_error_line(&output.stderr);
        assert!(
            output
                .stderr
                .contains("--reconnect-max of 1 s is below --reconnect-base of 5 s"),
            "stderr: {}",
            output.stderr
        );
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "a client connected although its reconnect bounds are invalid"
    );
}

#[test]
fn reconnect_flags_reject_invalid_seconds() {
    let cases: [(&[&str], &str); 5] = [
        (&["--reconnect-base", "soon"], "--reconnect-base"),
        (&["--reconnect-base=-1"], "--reconnect-base"),
        (&["--reconnect-base", "0"], "--reconnect-base"),
        (&["--reconnect-max", "NaN"], "--reconnect-max"),
        (&["--reconnect-reset", "1e30"], "--reconnect-reset"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["-t", "a"];
        args.extend_from_slice(flags);
        let output = run_mqtt("sub", &args, None);

        assert_eq!(output.status.code(), Some(2), "{flags:?}: {output:?}");
        assert_one_error_line(&output.stderr);
        assert!(
            output.stderr.contains(named),
            "{flags:?}: stderr {}",
            output.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// The quickstart example

#[test]
fn quickstart_runs_with_embedded_broker() {
    let mut quickstart = spawn_quickstart(None);

    let status = quickstart.wait_with_timeout();
    let stdout = quickstart.read_stdout_to_end();
    assert!(
        status.success(),
        "quickstart exit status {status}, stdout:\n{stdout}"
    );
    for qos in 0..3 {
        let line = format!("received mqttlink/quickstart/qos{qos}: hello at QoS {qos}");
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line:?} missing in:\n{stdout}"
        );
    }
    assert_eq!(quickstart.read_stderr_to_end(), "");
}

#[test]
fn quickstart_uses_mqtt_url() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut quickstart = spawn_quickstart(Some(&broker.url()));

    let status = quickstart.wait_with_timeout();
    let stdout = quickstart.read_stdout_to_end();
    assert!(
        status.success(),
        "quickstart exit status {status}, stdout:\n{stdout}"
    );
    assert!(!stdout.contains("embedded broker"), "stdout:\n{stdout}");
    broker.wait_for_log("as mqttlink-quickstart");
}

#[test]
fn quickstart_connection_refused_fails() {
    let port = free_port();
    let mut quickstart = spawn_quickstart(Some(&format!("mqtt://127.0.0.1:{port}")));

    let status = quickstart.wait_with_timeout();
    assert!(!status.success(), "quickstart exit status {status}");
    let stderr = quickstart.read_stderr_to_end();
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(
        stderr.starts_with("quickstart failed: "),
        "stderr: {stderr:?}"
    );
}

// ---------------------------------------------------------------------------
// Helpers

/// Waits until the broker's log contains `needle` at least `count` times, failing the
/// test after [`WAIT`]. The broker writes its log as it goes, so the log is read again
/// every [`POLL_INTERVAL`].
fn wait_for_restartable_log(broker: &RestartableMosquitto, needle: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    while broker.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "mosquitto log has {needle:?} fewer than {count} times after {WAIT:?}:\n{}",
            broker.log_tail()
        );
        thread::sleep(POLL_INTERVAL);
    }
}

fn assert_one_error_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.starts_with("mqtt: "), "stderr: {stderr:?}");
}

/// Output of a finished example process.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_pub(broker: &Mosquitto, args: &[&str], stdin: Option<&str>) -> Output {
    let port = broker.port().to_string();
    let mut all_args = vec!["-h", "127.0.0.1", "-p", &port, "-W", "10"];
    all_args.extend_from_slice(args);
    run_mqtt("pub", &all_args, stdin)
}

/// Runs `mqtt SUBCOMMAND ARGS...` to completion, killing it after [`WAIT`].
fn run_mqtt(subcommand: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn_mqtt(subcommand, args);
    if let Some(input) = stdin {
        let mut pipe = child.child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    // Dropping the pipe closes stdin, which ends `-l` and `-s` input.
    drop(child.child.stdin.take());

    let status = child.wait_with_timeout();
    Output {
        status,
        stdout: child.read_stdout_to_end(),
        stderr: child.read_stderr_to_end(),
    }
}

fn spawn_sub(broker: &Mosquitto, client_id: &str, args: &[&str]) -> ChildGuard {
    let port = broker.port().to_string();
    let mut all_args = vec!["-h", "127.0.0.1", "-p", &port, "-i", client_id];
    all_args.extend_from_slice(args);
    spawn_mqtt("sub", &all_args)
}

fn spawn_mqtt(subcommand: &str, args: &[&str]) -> ChildGuard {
    let mut command = Command::new(example_binary("mqtt"));
    command.arg(subcommand).args(args);
    spawn_piped(command)
}

/// Starts the quickstart with `MQTT_URL` set to `url`, or unset for its embedded broker.
fn spawn_quickstart(url: Option<&str>) -> ChildGuard {
    let mut command = Command::new(example_binary("quickstart"));
    match url {
        Some(url) => command.env("MQTT_URL", url),
        None => command.env_remove("MQTT_URL"),
    };
    spawn_piped(command)
}

fn spawn_piped(mut command: Command) -> ChildGuard {
    let child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    ChildGuard { child }
}

/// Returns a loopback port that was free a moment ago and has no listener now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns the path of an example binary, building it first when it is missing or
/// older than its sources.
fn example_binary(name: &'static str) -> PathBuf {
    static CHECKED: Mutex<Vec<&str>> = Mutex::new(Vec::new());

    // This test runs from target/PROFILE/deps; examples go to target/PROFILE/examples.
    let deps_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let profile_dir = deps_dir.parent().unwrap();
    let binary = profile_dir.join("examples").join(name);

    // Tests run in parallel; the lock keeps them from building the same example twice.
    let mut checked = CHECKED.lock().unwrap_or_else(PoisonError::into_inner);
    if !checked.contains(&name) {
        if !is_newer_than_sources(&binary, name) {
            build_example(profile_dir, name);
        }
        checked.push(name);
    }
    assert!(binary.is_file(), "{} not found", binary.display());
    binary
}

/// Runs `cargo build --example NAME` in the profile of this test.
fn build_example(profile_dir: &Path, name: &str) {
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir
        .file_name()
        .is_some_and(|profile| profile == "release")
    {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
}

/// Checks whether `binary` exists and was modified after every file of the crate's
/// `src/`, `examples/NAME.rs` and `Cargo.toml`.
fn is_newer_than_sources(binary: &Path, name: &str) -> bool {
    let Ok(built) = fs::metadata(binary).and_then(|metadata| metadata.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pending = vec![
        root.join("src"),
        root.join("examples").join(format!("{name}.rs")),
        root.join("Cargo.toml"),
    ];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = fs::metadata(&path) else {
            return false;
        };
        if metadata.is_dir() {
            let Ok(entries) = fs::read_dir(&path) else {
                return false;
            };
            pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
        } else if metadata
            .modified()
            .map_or(true, |modified| modified > built)
        {
            return false;
        }
    }
    true
}

/// A child process that is killed and reaped by its PID when dropped.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Waits for the process to exit, killing it and failing the test after [`WAIT`].
    fn wait_with_timeout(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "mqtt (pid {}) did not exit within {WAIT:?}; stderr: {}",
                    self.child.id(),
                    self.read_stderr_to_end()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Reads stdout to its end; call after the process exited.
    fn read_stdout_to_end(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Reads stderr to its end; call after the process exited.
    fn read_stderr_to_end(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Passes each stdout line to the returned channel as soon as it is written.
    fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let stdout: ChildStdout = self.child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        // The thread ends when the process closes stdout, at the latest on drop.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        lines_rx
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
