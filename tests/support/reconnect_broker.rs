//! A scripted fake broker for the reconnect tests, and a Mosquitto process that can be
//! restarted with its persistence file.
//!
//! The fake broker listens on 127.0.0.1 port 0 and hands each accepted connection to the
//! test, which reads and writes packets one step at a time. A test can accept CONNECT
//! with or without Session Present, reject it with a reason code, or read N packets and
//! then cut the connection. Every wait is bounded.

#![allow(dead_code)]

use std::time::Duration;

use bytes::BytesMut;
use mqttlink::codec::{
    encode, ConnAck, Connect, ConnectReason, Decoder, Packet, Properties, ProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::actor_broker::STEP;

/// A listening fake broker.
pub struct ScriptedBroker {
    listener: TcpListener,
}

impl ScriptedBroker {
    /// Listens on 127.0.0.1 at a free port.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self { listener }
    }

    /// Returns the port the broker listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("local address").port()
    }

    /// Accepts the next connection from the client.
    pub async fn accept(&self) -> Connection {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("client connects in time")
            .expect("accept");
        Connection {
            stream,
            decoder: Decoder::for_server(),
            buf: BytesMut::new(),
        }
    }

    /// Returns `true` when no client connects within `wait`.
    pub async fn no_connection_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_err()
    }
}

/// One client connection, seen from the broker.
pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Connection {
    /// Returns the next packet from the client, or `None` once it closed the connection.
    pub async fn next(&mut self) -> Option<Packet> {
        loop {
            let decoded = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sends valid packets");
            if let Some(packet) = decoded {
                return Some(packet);
            }
            let read = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf))
                .await
                .expect("client sends or closes in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Returns the next packet, failing the test when the connection closed first.
    pub async fn recv(&mut self) -> Packet {
        self.next().await.expect("client sends a packet")
    }

    /// Reads `count` packets and returns them, so the test can cut the connection after them.
    pub async fn recv_packets(&mut self, count: usize) -> Vec<Packet> {
        let mut packets = Vec::with_capacity(count);
        for _ in 0..count {
            packets.push(self.recv().await);
        }
        packets
    }

    /// Expects CONNECT and returns it.
    pub async fn expect_connect(&mut self) -> Connect {
        match self.recv().await {
            Packet::Connect(connect) => *connect,
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    /// Expects CONNECT, accepts it with `session_present`, and returns the CONNECT.
    pub async fn accept_connect(&mut self, session_present: bool) -> Connect {
        let connect = self.expect_connect().await;
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
        connect
    }

    /// Expects CONNECT and rejects it with `reason`, then waits for the client to close.
    pub async fn reject_connect(&mut self, reason: ConnectReason) -> Connect {
        let connect = self.expect_connect().await;
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default().into(),
        }))
        .await;
        let rest = self.until_closed().await;
        assert!(
            rest.is_empty(),
            "packets after a rejected CONNECT: {rest:?}"
        );
        connect
    }

    /// Sends one packet, encoded for the version of the client's CONNECT.
    pub async fn send(&mut self, packet: &Packet) {
        let version = self.decoder.version().unwrap_or(ProtocolVersion::V5);
        let mut out = BytesMut::new();
        encode(packet, version, u32::MAX, &mut out).expect("test packet encodes");
        tokio::time::timeout(STEP, self.stream.write_all(&out))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Cuts the connection without DISCONNECT, as a crashed broker or a dead link would.
    pub fn cut(self) {
        drop(self);
    }

    /// Reads until the client closes the connection and returns what it sent.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.next().await {
            packets.push(packet);
        }
        packets
    }
}

/// Environment variable that turns a missing Mosquitto binary into a test failure, as in
/// the shared Mosquitto harness.
pub const REQUIRE_MOSQUITTO_VAR: &str = "MQTTLINK_REQUIRE_MOSQUITTO";

/// Environment variable that overrides the path of the Mosquitto binary.
pub const MOSQUITTO_BINARY_VAR: &str = "MQTTLINK_MOSQUITTO";

/// A Mosquitto process with persistence that can be stopped and started again on the
/// same port and with the same directory, which the shared harness cannot do. It is
/// stopped by its PID when dropped, and its directory is removed.
pub struct RestartableMosquitto {
    binary: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl RestartableMosquitto {
    /// Starts a broker with persistence in a fresh directory, or returns `None` after
    /// printing why the test is skipped when no binary exists.
    pub async fn start(name: &str) -> Option<Self> {
        let binary = std::env::var_os(MOSQUITTO_BINARY_VAR)
            .map_or_else(|| "/usr/sbin/mosquitto".into(), std::path::PathBuf::from);
        if !binary.is_file() {
            assert!(
                std::env::var_os(REQUIRE_MOSQUITTO_VAR).is_none(),
                "mosquitto not found at {}",
                binary.display()
            );
            println!("skipped: mosquitto not found at {}", binary.display());
            return None;
        }
        let dir = std::env::temp_dir().join(format!("mqttlink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the broker directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\n\
             log_type all\nmax_queued_messages 10000\n",
            dir.display(),
            dir.display()
        );
        // Started as root, mosquitto switches to the user `mosquitto`, which cannot
        // write the log and the persistence file into this root-owned directory.
        let owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(&dir).expect("read the broker directory"),
        );
        if owner == 0 {
            config.push_str("user root\n");
        }
        std::fs::write(dir.join("mosquitto.conf"), config).expect("write the broker config");

        let mut broker = Self {
            binary,
            dir,
            port,
            child: None,
        };
        broker.launch().await;
        Some(broker)
    }

    /// Returns the port the broker listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker with SIGTERM, so it writes its persistence file, and starts it
    /// again on the same port from that file.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Returns the last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);

        // Bounded polling: a TCP connect succeeds once the listener is bound.
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "mosquitto did not listen on port {} in time:\n{}",
            self.port,
            self.log_tail()
        );
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if terminated {
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RestartableMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("mosquitto log tail:\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
