//! The sink: a minimal MQTT server on loopback that sends what a client waits for
//! (CONNACK, SUBACK, UNSUBACK, PUBACK, PUBREC, PUBCOMP, PINGRESP) and discards
//! everything else, so a benchmark measures the client and not a broker.
//!
//! It runs in a child process (the bench binary re-executed with the hidden
//! `sink` subcommand) so that the client's process CPU time excludes the sink's.
//! A SUBSCRIBE to `bench/push/{qos}/{count}` makes the sink publish `count`
//! messages of 64 bytes at that QoS (0 or 1) to the subscriber, keeping at most
//! `window` QoS 1 messages unacknowledged, and then one QoS 1 end marker.
//!
//! It trusts its clients: malformed packets end the connection, nothing is
//! validated beyond what is needed to find packet boundaries and ids.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::measure::BenchResult;

/// Topic prefix of a subscription that makes the sink publish.
pub const PUSH_PREFIX: &str = "bench/push/";

/// Payload size of every message the sink publishes, except the end marker.
pub const PAYLOAD_LEN: usize = 64;

/// Payload of the QoS 1 message that ends a push. A client may drop QoS 0
/// messages it cannot deliver, so it counts messages until this one arrives.
pub const END_MARKER: &[u8] = b"end";

/// Pending connections the listener queues, so thousands of clients can
/// connect at once (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// Bytes reserved before each socket read.
const READ_RESERVE: usize = 16 * 1024;

/// Bytes of pushed PUBLISH packets written per write call.
const PUSH_BATCH_BYTES: usize = 64 * 1024;

const PROTOCOL_V5: u8 = 5;

/// Name of the Receive Maximum property in a v5 CONNACK.
const PROPERTY_RECEIVE_MAXIMUM: u8 = 0x21;

/// A sink running in a child process, killed and reaped on drop.
#[derive(Debug)]
pub struct SinkProcess {
    child: Child,
    /// Closing this pipe also ends the sink, should the parent die first.
    _stdin: Option<ChildStdin>,
    port: u16,
}

impl SinkProcess {
    /// Starts the sink in a child process and waits for the port it listens on.
    /// `window` is the Receive Maximum it announces to v5 clients and the
    /// maximum of unacknowledged QoS 1 messages it pushes.
    pub fn spawn(window: u16) -> BenchResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["sink", "--window", &window.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let port = match read_port(&mut child) {
            Ok(port) => port,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
        };
        Ok(Self {
            child,
            _stdin: stdin,
            port,
        })
    }

    /// Loopback address of the sink.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the `port N` line the sink prints once it listens.
fn read_port(child: &mut Child) -> BenchResult<u16> {
    let stdout = child.stdout.take().ok_or("sink stdout is not piped")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("port ")
        .ok_or_else(|| format!("sink printed {line:?} instead of its port"))?;
    Ok(port.parse()?)
}

/// Runs the sink in this process until standard input closes.
pub fn serve(window: u16) -> BenchResult<()> {
    // The parent keeps the write end of stdin open, so EOF means it has gone.
    std::thread::spawn(|| {
        let mut sink = [0_u8; 64];
        while matches!(io::stdin().read(&mut sink), Ok(read) if read > 0) {}
        std::process::exit(0);
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let mut stdout = io::stdout();
        writeln!(stdout, "port {}", listener.local_addr()?.port())?;
        stdout.flush()?;

        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                // A client that resets its connection is normal during churn.
                let _ = serve_connection(stream, window).await;
            });
        }
    })
}

async fn serve_connection(mut stream: TcpStream, window: u16) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = BytesMut::new();
    let mut conn = Connection {
        version: 4,
        window,
        output: Vec::new(),
        push: None,
    };

    loop {
        if conn.push.as_ref().is_some_and(|push| push.can_send(window)) {
            conn.fill_push_batch();
            stream.write_all(&conn.output).await?;
            conn.output.clear();
            if !drain_ready_input(&stream, &mut input, &mut conn)? {
                return Ok(());
            }
            continue;
        }

        input.reserve(READ_RESERVE);
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        if !conn.handle_input(&mut input)? {
            return Ok(());
        }
        if !conn.output.is_empty() {
            stream.write_all(&conn.output).await?;
            conn.output.clear();
        }
    }
}

/// Handles whatever the client sent while the sink was pushing, without waiting.
/// Returns `false` when the client closed the connection or disconnected.
fn drain_ready_input(
    stream: &TcpStream,
    input: &mut BytesMut,
    conn: &mut Connection,
) -> io::Result<bool> {
    loop {
        input.reserve(READ_RESERVE);
        match stream.try_read_buf(input) {
            Ok(0) => return Ok(false),
            Ok(_) => {
                if !conn.handle_input(input)? {
                    return Ok(false);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(error) => return Err(error),
        }
    }
}

/// Protocol state of one client connection.
struct Connection {
    version: u8,
    window: u16,
    output: Vec<u8>,
    push: Option<Push>,
}

/// Messages the sink still has to publish to a subscriber.
struct Push {
    topic: Vec<u8>,
    qos: u8,
    remaining: u64,
    unacknowledged: u16,
    next_id: u16,
    /// One batch of encoded QoS 0 messages, built once: they are all the same, so the
    /// sink copies them instead of encoding each, and can push faster than a client
    /// reads.
    qos0_batch: Vec<u8>,
    /// Bytes of one message in `qos0_batch`.
    qos0_message_len: usize,
}

impl Push {
    fn can_send(&self, window: u16) -> bool {
        self.remaining > 0 && (self.qos == 0 || self.unacknowledged < window)
    }

    /// Appends as many whole QoS 0 messages of the prepared batch as fit in one
    /// batch and remain to be sent.
    fn copy_qos0_batch(&mut self, output: &mut Vec<u8>, v5: bool) {
        if self.qos0_batch.is_empty() {
            write_publish(
                &mut self.qos0_batch,
                &self.topic,
                None,
                v5,
                &[b'x'; PAYLOAD_LEN],
            );
            self.qos0_message_len = self.qos0_batch.len();
            while self.qos0_batch.len() + self.qos0_message_len <= PUSH_BATCH_BYTES {
                self.qos0_batch.extend_from_within(..self.qos0_message_len);
            }
        }
        let room = PUSH_BATCH_BYTES.saturating_sub(output.len()) / self.qos0_message_len;
        let count = room.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let bytes = self.qos0_batch.get(..count * self.qos0_message_len);
        output.extend_from_slice(bytes.unwrap_or_default());
        self.remaining -= count as u64;
    }

    /// Returns the packet id of the next message, `None` at QoS 0.
    fn take_id(&mut self) -> Option<u16> {
        if self.qos == 0 {
            return None;
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1).unwrap_or(1);
        self.unacknowledged += 1;
        Some(id)
    }
}

impl Connection {
    /// Handles every complete packet in `input` and removes it. Returns `false`
    /// on DISCONNECT.
    fn handle_input(&mut self, input: &mut BytesMut) -> io::Result<bool> {
        while let Some((header_len, body_len)) = fixed_header(input)? {
            let total = header_len + body_len;
            if input.len() < total {
                break;
            }
            let first = input.first().copied().unwrap_or_default();
            let body = input.get(header_len..total).unwrap_or_default();
            let open = self.handle_packet(first, body)?;
            input.advance(total);
            if !open {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn handle_packet(&mut self, first: u8, body: &[u8]) -> io::Result<bool> {
        match first >> 4 {
            1 => self.handle_connect(body)?,
            3 => self.handle_publish(first, body)?,
            4 => {
                if let Some(push) = &mut self.push {
                    push.unacknowledged = push.unacknowledged.saturating_sub(1);
                }
            }
            6 => self
                .output
                .extend_from_slice(&[0x70, 2, at(body, 0)?, at(body, 1)?]),
            8 => self.handle_subscribe(body)?,
            10 => self.handle_unsubscribe(body)?,
            12 => self.output.extend_from_slice(&[0xD0, 0]),
            14 => return Ok(false),
            _ => {}
        }
        Ok(true)
    }

    fn handle_connect(&mut self, body: &[u8]) -> io::Result<()> {
        let name_len = usize::from(read_u16(body, 0)?);
        self.version = at(body, 2 + name_len)?;
        if self.version == PROTOCOL_V5 {
            let [high, low] = self.window.to_be_bytes();
            self.output
                .extend_from_slice(&[0x20, 6, 0, 0, 3, PROPERTY_RECEIVE_MAXIMUM, high, low]);
        } else {
            self.output.extend_from_slice(&[0x20, 2, 0, 0]);
        }
        Ok(())
    }

    fn handle_publish(&mut self, first: u8, body: &[u8]) -> io::Result<()> {
        let qos = (first >> 1) & 3;
        if qos == 0 {
            return Ok(());
        }
        let topic_len = usize::from(read_u16(body, 0)?);
        let id_offset = 2 + topic_len;
        let kind = if qos == 1 { 0x40 } else { 0x50 };
        self.output
            .extend_from_slice(&[kind, 2, at(body, id_offset)?, at(body, id_offset + 1)?]);
        Ok(())
    }

    fn handle_subscribe(&mut self, body: &[u8]) -> io::Result<()> {
        let mut position = self.skip_properties(body, 2)?;
        let mut codes = Vec::new();
        while position < body.len() {
            let filter_len = usize::from(read_u16(body, position)?);
            let filter = body
                .get(position + 2..position + 2 + filter_len)
                .ok_or_else(|| invalid("truncated topic filter"))?;
            let options = at(body, position + 2 + filter_len)?;
            codes.push(options & 3);
            self.start_push(filter);
            position += 3 + filter_len;
        }
        self.write_ack(0x90, body, &codes)
    }

    fn handle_unsubscribe(&mut self, body: &[u8]) -> io::Result<()> {
        let mut position = self.skip_properties(body, 2)?;
        let mut codes = Vec::new();
        while position < body.len() {
            position += 2 + usize::from(read_u16(body, position)?);
            codes.push(0);
        }
        if self.version != PROTOCOL_V5 {
            codes.clear();
        }
        self.write_ack(0xB0, body, &codes)
    }

    /// Writes a SUBACK or UNSUBACK for the packet id at the start of `body`.
    fn write_ack(&mut self, first: u8, body: &[u8], codes: &[u8]) -> io::Result<()> {
        let properties_len = usize::from(self.version == PROTOCOL_V5);
        self.output.push(first);
        write_remaining_length(&mut self.output, 2 + properties_len + codes.len());
        self.output.extend_from_slice(&[at(body, 0)?, at(body, 1)?]);
        if properties_len == 1 {
            self.output.push(0);
        }
        self.output.extend_from_slice(codes);
        Ok(())
    }

    /// Returns the offset after the v5 properties at `offset`, or `offset` for
    /// earlier versions, which have none.
    fn skip_properties(&self, body: &[u8], offset: usize) -> io::Result<usize> {
        if self.version != PROTOCOL_V5 {
            return Ok(offset);
        }
        let rest = body.get(offset..).unwrap_or_default();
        let (len_bytes, len) = read_variable_int(rest)?.ok_or_else(|| invalid("truncated"))?;
        Ok(offset + len_bytes + len)
    }

    /// Starts publishing when `filter` is `bench/push/{qos}/{count}`.
    fn start_push(&mut self, filter: &[u8]) {
        let Some(spec) = filter.strip_prefix(PUSH_PREFIX.as_bytes()) else {
            return;
        };
        let Some((qos, count)) = std::str::from_utf8(spec)
            .ok()
            .and_then(|spec| spec.split_once('/'))
            .and_then(|(qos, count)| Some((qos.parse::<u8>().ok()?, count.parse().ok()?)))
        else {
            return;
        };
        self.push = Some(Push {
            topic: filter.to_vec(),
            qos: qos.min(1),
            remaining: count,
            unacknowledged: 0,
            next_id: 1,
            qos0_batch: Vec::new(),
            qos0_message_len: 0,
        });
    }

    /// Appends PUBLISH packets up to one batch, the window or the end of the
    /// push, which is marked by one QoS 1 message with the payload [`END_MARKER`].
    fn fill_push_batch(&mut self) {
        let Some(push) = &mut self.push else {
            return;
        };
        let v5 = self.version == PROTOCOL_V5;
        if push.qos == 0 {
            push.copy_qos0_batch(&mut self.output, v5);
        }
        while push.can_send(self.window) && self.output.len() < PUSH_BATCH_BYTES {
            let id = push.take_id();
            write_publish(&mut self.output, &push.topic, id, v5, &[b'x'; PAYLOAD_LEN]);
            push.remaining -= 1;
        }
        if push.remaining == 0 {
            let id = push.next_id;
            write_publish(&mut self.output, &push.topic, Some(id), v5, END_MARKER);
            self.push = None;
        }
    }
}

/// Appends a PUBLISH of `payload`: QoS 1 with packet id `id`, QoS 0 without.
fn write_publish(output: &mut Vec<u8>, topic: &[u8], id: Option<u16>, v5: bool, payload: &[u8]) {
    let id_len = if id.is_some() { 2 } else { 0 };
    let properties_len = usize::from(v5);
    output.push(if id.is_some() { 0x32 } else { 0x30 });
    write_remaining_length(
        output,
        2 + topic.len() + id_len + properties_len + payload.len(),
    );
    output.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    output.extend_from_slice(topic);
    if let Some(id) = id {
        output.extend_from_slice(&id.to_be_bytes());
    }
    if v5 {
        output.push(0);
    }
    output.extend_from_slice(payload);
}

/// Parses a fixed header: `(header length, remaining length)`, or `None` when
/// more bytes are needed.
fn fixed_header(input: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let rest = input.get(1..).unwrap_or_default();
    Ok(read_variable_int(rest)?.map(|(len_bytes, len)| (1 + len_bytes, len)))
}

/// Reads an MQTT variable byte integer: `(bytes used, value)`, or `None` when
/// truncated.
fn read_variable_int(bytes: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let mut value = 0_usize;
    for (index, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((index + 1, value)));
        }
    }
    if bytes.len() >= 4 {
        return Err(invalid("variable byte integer longer than 4 bytes"));
    }
    Ok(None)
}

fn write_remaining_length(output: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            output.push(byte);
            return;
        }
        output.push(byte | 0x80);
    }
}

fn at(body: &[u8], index: usize) -> io::Result<u8> {
    body.get(index)
        .copied()
        .ok_or_else(|| invalid("packet shorter than its fields"))
}

fn read_u16(body: &[u8], index: usize) -> io::Result<u16> {
    Ok(u16::from_be_bytes([at(body, index)?, at(body, index + 1)?]))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
