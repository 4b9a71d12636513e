//! Scripted fake MQTT brokers that fail connection attempts on purpose.
//!
//! A `FaultBroker` listens on 127.0.0.1 port 0 and plays one `Script` per accepted
//! connection: close at once, reply to the CONNECT with given bytes (a refusing CONNACK,
//! garbage, a late CONNACK) and then close or wait, close after a delay, or never reply.
//! Every connection has a bounded lifetime, and `FaultBroker::stop` closes the listener
//! and awaits every task it started, so a stopped broker leaves no task, socket or timer
//! behind for a leak count to see.
//!
//! The broker writes raw bytes and parses only the fixed header of what it reads, so
//! it does not depend on the codec under test and can send packets the codec rejects.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Maximum lifetime of one connection task, after which the broker closes the connection.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Time `FaultBroker::stop` gives open connections to be closed by the client before it
/// aborts them and counts them as lingering.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Maximum packet size the broker reads from a client. CONNECT packets in these tests are far smaller.
const MAX_READ_PACKET: usize = 64 * 1024;

/// What the broker does with one accepted connection.
#[derive(Debug, Clone)]
pub enum Script {
    /// Closes the connection before reading anything.
    CloseAtOnce,
    /// Reads the CONNECT packet, waits `delay`, writes `bytes` and then reads until the
    /// client closes the connection.
    Reply {
        /// Wait between reading CONNECT and writing.
        delay: Delay,
        /// Bytes written as they are, valid MQTT or not.
        bytes: Bytes,
    },
    /// Reads the CONNECT packet, waits `delay`, writes `bytes` and closes the connection.
    ReplyThenClose {
        /// Wait between reading CONNECT and writing.
        delay: Delay,
        /// Bytes written as they are, valid MQTT or not.
        bytes: Bytes,
    },
    /// Reads the CONNECT packet, waits `delay` and closes the connection without a reply.
    CloseAfterConnect {
        /// Wait between reading CONNECT and closing.
        delay: Delay,
    },
    /// Reads whatever the client sends, never writes, and ends when the client closes
    /// the connection.
    Silent,
}

impl Script {
    /// Returns a script that writes `bytes` as soon as the CONNECT packet has been read.
    pub fn reply(bytes: impl Into<Bytes>) -> Self {
        Self::Reply {
            delay: Delay::NONE,
            bytes: bytes.into(),
        }
    }
}

/// A short wait that moves the instant of a race, on the broker's or the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// Number of `tokio::task::yield_now` calls, for delays below the timer resolution.
    pub yields: u32,
    /// Time to sleep after the yields.
    pub sleep: Duration,
}

impl Delay {
    /// No wait at all.
    pub const NONE: Self = Self {
        yields: 0,
        sleep: Duration::ZERO,
    };

    /// Yields `yields` times, then sleeps for `sleep` unless it is zero.
    pub async fn wait(self) {
        for _ in 0..self.yields {
            tokio::task::yield_now().await;
        }
        if !self.sleep.is_zero() {
            tokio::time::sleep(self.sleep).await;
        }
    }
}

/// What a broker saw between its start and its stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerReport {
    /// Connections accepted.
    pub accepted: usize,
    /// Connections on which a whole first packet of type CONNECT was read.
    pub connects_read: usize,
    /// Connections on which the scripted reply was written completely.
    pub replies_written: usize,
    /// Connections that the client had not closed when the stop grace time ran out.
    pub lingering: usize,
}

/// One connection's contribution to a `BrokerReport`.
#[derive(Debug, Clone, Copy, Default)]
struct ConnectionReport {
    connect_read: bool,
    reply_written: bool,
}

/// A running fake broker; `stop` must be awaited to release its listener and tasks.
#[derive(Debug)]
pub struct FaultBroker {
    port: u16,
    shutdown: oneshot::Sender<Duration>,
    task: JoinHandle<BrokerReport>,
}

impl FaultBroker {
    /// Binds 127.0.0.1 port 0 and starts accepting. `script` is called with the index of
    /// each accepted connection (0, 1, 2, ...) and returns what to do with it.
    pub async fn start<F>(script: F) -> io::Result<Self>
    where
        F: FnMut(usize) -> Script + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let (shutdown, shutdown_received) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, script, shutdown_received));
        Ok(Self {
            port,
            shutdown,
            task,
        })
    }

    /// Returns the port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listener, waits up to `STOP_GRACE` for open connections to be closed by
    /// their clients, aborts the rest and returns what the broker saw. When this returns,
    /// every task and socket of the broker is gone.
    pub async fn stop(self) -> BrokerReport {
        self.stop_within(STOP_GRACE).await
    }

    /// Works as `stop`, with `grace` in place of `STOP_GRACE`.
    pub async fn stop_within(self, grace: Duration) -> BrokerReport {
        // A send error means the accept loop already ended; the join below still applies.
        let _ = self.shutdown.send(grace);
        match self.task.await {
            Ok(report) => report,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// A loopback port that refuses connections: a socket bound to port 0 that never
/// listens. A closed listener's port could be taken at once by another listener bound
/// to port 0, but while this socket lives, no other socket can bind the port, because
/// it does not set `SO_REUSEADDR`.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: TcpSocket,
    port: u16,
}

impl ClosedPort {
    /// Binds a socket to 127.0.0.1 port 0 without listening.
    pub fn bind() -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = socket.local_addr()?.port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    /// Returns the port, which refuses connections while `self` lives.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Returns a v3.1.1 CONNACK packet with `session_present` false and `return_code`.
pub fn connack_v3(return_code: u8) -> Bytes {
    Bytes::from(vec![0x20, 0x02, 0x00, return_code])
}

/// Returns a v5 CONNACK packet with `session_present` false, `reason_code` and no properties.
pub fn connack_v5(reason_code: u8) -> Bytes {
    Bytes::from(vec![0x20, 0x03, 0x00, reason_code, 0x00])
}

/// Accepts connections until `shutdown` fires, then drops the listener and collects
/// every connection task.
async fn accept_loop<F>(
    listener: TcpListener,
    mut script: F,
    mut shutdown: oneshot::Receiver<Duration>,
) -> BrokerReport
where
    F: FnMut(usize) -> Script + Send + 'static,
{
    let mut report = BrokerReport::default();
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            // A dropped `FaultBroker` closes the channel, which stops the broker too.
            received = &mut shutdown => break received.unwrap_or(STOP_GRACE),
            accepted = listener.accept() => {
                // Accept errors such as a client resetting before accept are not the
                // broker's concern, because the attempt fails on the client side.
                let Ok((stream, _)) = accepted else { continue };
                let connection_script = script(report.accepted);
                report.accepted += 1;
                connections.spawn(serve_bounded(stream, connection_script));
            }
            // Reap finished connections as they end so the set stays small.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                add_connection(&mut report, finished);
            }
        }
    };
    drop(listener);

    collect_connections(&mut report, connections, grace).await;
    report
}

/// Waits up to `grace` for the remaining connections and aborts the ones still open.
async fn collect_connections(
    report: &mut BrokerReport,
    mut connections: JoinSet<ConnectionReport>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while !connections.is_empty() {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(Some(finished)) => add_connection(report, finished),
            Ok(None) => break,
            Err(_) => {
                report.lingering = connections.len();
                connections.shutdown().await;
                break;
            }
        }
    }
}

/// Adds one finished connection to the report; a panic in a connection task is re-raised.
fn add_connection(
    report: &mut BrokerReport,
    finished: Result<ConnectionReport, tokio::task::JoinError>,
) {
    let connection = match finished {
        Ok(connection) => connection,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => return,
    };
    report.connects_read += usize::from(connection.connect_read);
    report.replies_written += usize::from(connection.reply_written);
}

/// Plays `script` on `stream`, closing the connection after `CONNECTION_LIFETIME` at most.
async fn serve_bounded(stream: TcpStream, script: Script) -> ConnectionReport {
    let mut report = ConnectionReport::default();
    // On timeout the stream is dropped with the future, which closes the connection.
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serve(stream, script, &mut report)).await;
    report
}

/// Plays one script; I/O errors end the connection, which is what a client sees anyway.
async fn serve(mut stream: TcpStream, script: Script, report: &mut ConnectionReport) {
    match script {
        Script::CloseAtOnce => drop(stream),
        Script::Reply { delay, bytes } => {
            reply_after_connect(&mut stream, delay, &bytes, report).await;
            if report.reply_written {
                drain_until_closed(&mut stream).await;
            }
        }
        Script::ReplyThenClose { delay, bytes } => {
            reply_after_connect(&mut stream, delay, &bytes, report).await;
        }
        Script::CloseAfterConnect { delay } => {
            report.connect_read = read_connect(&mut stream).await;
            delay.wait().await;
        }
        Script::Silent => {
            report.connect_read = read_connect(&mut stream).await;
            drain_until_closed(&mut stream).await;
        }
    }
}

/// Reads the CONNECT packet, waits `delay` and writes `bytes`, recording both steps in
/// `report`. Stops at the first step that fails.
async fn reply_after_connect(
    stream: &mut TcpStream,
    delay: Delay,
    bytes: &[u8],
    report: &mut ConnectionReport,
) {
    report.connect_read = read_connect(stream).await;
    if !report.connect_read {
        return;
    }
    delay.wait().await;
    report.reply_written = stream.write_all(bytes).await.is_ok();
}

/// Reads one whole packet and returns `true` when it is a CONNECT (packet type 1).
/// Returns `false` on end of stream, an I/O error or a malformed fixed header.
async fn read_connect(stream: &mut TcpStream) -> bool {
    let Ok(first_byte) = stream.read_u8().await else {
        return false;
    };
    let Some(remaining_length) = read_remaining_length(stream).await else {
        return false;
    };
    if remaining_length > MAX_READ_PACKET {
        return false;
    }
    let mut body = vec![0; remaining_length];
    if stream.read_exact(&mut body).await.is_err() {
        return false;
    }
    first_byte >> 4 == 1
}

/// Reads the variable byte integer of a fixed header: at most four bytes, seven bits each.
async fn read_remaining_length(stream: &mut TcpStream) -> Option<usize> {
    let mut value = 0_usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await.ok()?;
        value |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads and discards until the peer closes the connection or an I/O error occurs.
async fn drain_until_closed(stream: &mut TcpStream) {
    let mut buffer = [0_u8; 1024];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
}

/// Serialises the tests of one binary that open sockets or measure process-wide counts
/// (open file descriptors, live actors, heap allocations), because the test harness
/// runs tests on parallel threads. A test must take it before it builds its runtime,
/// since a runtime owns file descriptors of its own.
static PROCESS_COUNTS_LOCK: Mutex<()> = Mutex::new(());

/// Takes `PROCESS_COUNTS_LOCK` for the rest of the calling test. A test that panicked
/// while holding it leaves nothing shared behind, so a poisoned lock is taken as it is.
pub fn lock_process_counts() -> MutexGuard<'static, ()> {
    PROCESS_COUNTS_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use std::future::Future;

    use super::*;

    /// A minimal v3.1.1 CONNECT: client id "t", clean session, keep-alive 0.
    const CONNECT: [u8; 15] = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b't',
    ];

    /// Runs `test` on a new current-thread runtime while holding the process-wide lock,
    /// because every test here opens sockets.
    fn run_exclusive(test: impl Future<Output = ()>) {
        let _counts = lock_process_counts();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }

    async fn connect(broker: &FaultBroker) -> TcpStream {
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, broker.port())))
            .await
            .unwrap()
    }

    /// Connects, sends `CONNECT` and reads a reply of `reply_len` bytes.
    async fn exchange_connect(broker: &FaultBroker, reply_len: usize) -> (TcpStream, Vec<u8>) {
        let mut stream = connect(broker).await;
        stream.write_all(&CONNECT).await.unwrap();
        let mut reply = vec![0_u8; reply_len];
        stream.read_exact(&mut reply).await.unwrap();
        (stream, reply)
    }

    /// Plays `script` on one connection until the broker closes it and returns what the
    /// client received and the broker's report. With `send_connect` the client first sends
    /// `CONNECT` and closes its writing half.
    async fn play_to_close(script: Script, send_connect: bool) -> (Vec<u8>, BrokerReport) {
        let broker = FaultBroker::start(move |_| script.clone()).await.unwrap();
        let mut stream = connect(&broker).await;
        if send_connect {
            stream.write_all(&CONNECT).await.unwrap();
            stream.shutdown().await.unwrap();
        }

        let received = read_to_close(&mut stream).await;
        drop(stream);
        (received, broker.stop().await)
    }

    /// Reads until end of stream, treating a connection reset as the end.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buffer = [0_u8; 256];
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        received
    }

    #[test]
    fn closed_port_refuses_connections() {
        run_exclusive(async {
            let closed = ClosedPort::bind().unwrap();
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, closed.port()));

            let result = TcpStream::connect(address).await;
            let rebind = std::net::TcpListener::bind(address);

            let error = result.expect_err("connect to a closed port succeeded");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
            let error = rebind.expect_err("a listener took the closed port");
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        });
    }

    #[test]
    fn close_at_once_sends_nothing() {
        run_exclusive(async {
            let (received, report) = play_to_close(Script::CloseAtOnce, false).await;

            assert!(received.is_empty(), "received {received:?}");
            assert_eq!(report.accepted, 1);
            assert_eq!(report.connects_read, 0);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn reply_follows_connect() {
        run_exclusive(async {
            let broker = FaultBroker::start(|_| Script::reply(connack_v3(5)))
                .await
                .unwrap();

            let (stream, reply) = exchange_connect(&broker, 4).await;
            drop(stream);
            let report = broker.stop().await;

            assert_eq!(reply, [0x20, 0x02, 0x00, 0x05]);
            assert_eq!(report.accepted, 1);
            assert_eq!(report.connects_read, 1);
            assert_eq!(report.replies_written, 1);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn delayed_reply_still_arrives() {
        run_exclusive(async {
            let script = Script::Reply {
                delay: Delay {
                    yields: 3,
                    sleep: Duration::from_millis(1),
                },
                bytes: connack_v5(0x87),
            };
            let broker = FaultBroker::start(move |_| script.clone()).await.unwrap();

            let (stream, reply) = exchange_connect(&broker, 5).await;
            drop(stream);
            let report = broker.stop().await;

            assert_eq!(reply, [0x20, 0x03, 0x00, 0x87, 0x00]);
            assert_eq!(report.replies_written, 1);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn silent_reads_connect_and_never_writes() {
        run_exclusive(async {
            let (received, report) = play_to_close(Script::Silent, true).await;

            assert!(received.is_empty(), "received {received:?}");
            assert_eq!(report.connects_read, 1);
            assert_eq!(report.replies_written, 0);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn reply_then_close_closes_after_reply() {
        run_exclusive(async {
            let script = Script::ReplyThenClose {
                delay: Delay::NONE,
                bytes: connack_v3(0),
            };
            let (received, report) = play_to_close(script, true).await;

            assert_eq!(received, [0x20, 0x02, 0x00, 0x00]);
            assert_eq!(report.connects_read, 1);
            assert_eq!(report.replies_written, 1);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn close_after_connect_reads_then_closes() {
        run_exclusive(async {
            let script = Script::CloseAfterConnect {
                delay: Delay {
                    yields: 2,
                    sleep: Duration::from_millis(1),
                },
            };
            let (received, report) = play_to_close(script, true).await;

            assert!(received.is_empty(), "received {received:?}");
            assert_eq!(report.connects_read, 1);
            assert_eq!(report.replies_written, 0);
            assert_eq!(report.lingering, 0);
        });
    }

    #[test]
    fn script_receives_connection_index() {
        run_exclusive(async {
            let broker = FaultBroker::start(|index| Script::reply(connack_v3(index as u8)))
                .await
                .unwrap();

            let mut replies = Vec::new();
            for _ in 0..3 {
                let (_stream, reply) = exchange_connect(&broker, 4).await;
                replies.push(reply[3]);
            }
            let report = broker.stop().await;

            assert_eq!(replies, [0, 1, 2]);
            assert_eq!(report.accepted, 3);
        });
    }

    #[test]
    fn stop_counts_connections_left_open() {
        run_exclusive(async {
            let broker = FaultBroker::start(|_| Script::reply(connack_v3(0)))
                .await
                .unwrap();
            // Once the reply is here, the broker is reading until the client closes.
            let (mut stream, _reply) = exchange_connect(&broker, 4).await;

            // The client keeps its end open, so the broker must give up after the grace time.
            let report = broker.stop_within(Duration::from_millis(50)).await;
            let received = read_to_close(&mut stream).await;

            assert_eq!(report.lingering, 1);
            assert!(received.is_empty(), "received {received:?}");
        });
    }

    #[test]
    fn stopped_broker_leaves_no_task_or_socket() {
        run_exclusive(async {
            let tasks = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
            let (tasks_before, fds_before) = (tasks(), fds());

            let broker = FaultBroker::start(|_| Script::Silent).await.unwrap();
            let mut stream = connect(&broker).await;
            stream.write_all(&CONNECT).await.unwrap();
            let tasks_running = tasks();
            drop(stream);
            broker.stop().await;

            assert!(tasks_running > tasks_before, "broker tasks are not counted");
            assert_eq!(tasks(), tasks_before);
            assert_eq!(fds(), fds_before);
        });
    }
}
