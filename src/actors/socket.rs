//! The socket actor: owns the byte stream of one connection. It opens the stream and
//! hands both sides to the session actor, the read side as a [`PacketReader`] and the
//! write side as a [`PacketWriter`]. The session encodes its packets and writes them
//! itself while the stream takes them. When the stream is full, the socket waits until
//! it is writable and writes the rest.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{self, Poll};

use actix::prelude::*;
use bytes::BytesMut;

use crate::codec::{self, ClientId, Decoder, EncodeError, ProtocolVersion};
use crate::error::{ClientError, ClosedBy, DisconnectCause};
use crate::session::{PublishOutcome, Transmit};
use crate::store::RequestToken;
use crate::transport::{empties_socket, Endpoint, Stream, WriteBuffer};

use super::client::PendingRequests;
use super::group::{
    actor_started, actor_stopped, Counters, FlushPending, TransportConnected, Wire,
};
use super::link::{stop_with_link, Link};
use super::session::SessionActor;

/// Smallest free space reserved before a read from the stream, in bytes.
const MIN_READ_RESERVE: usize = 1024;

/// Largest free space reserved before a read from the stream, in bytes. The decoder may
/// reserve more for a large packet that has not fully arrived. While messages from the
/// last read still wait in a recipient's mailbox, the next read needs a new buffer,
/// so a flood of small messages costs one allocation per read. With 64 KiB instead of
/// 8 KiB, the inbound QoS 0 benchmark needs about 12 % fewer instructions per message.
/// A quiet connection frees the buffer, so only busy connections hold this much.
const MAX_READ_RESERVE: usize = 64 * 1024;

/// Bytes below which a read that leaves free space counts as having emptied the
/// socket. On a quiet connection each arrival then costs one read call, and no read
/// that finds nothing delays the recipients.
const DRAINED_BELOW: usize = MIN_READ_RESERVE;

/// Packets per read up to which a connection counts as quiet, so its reader frees the
/// read buffer once everything in it is decoded.
const QUIET_READ_PACKETS: usize = 8;

/// What the socket needs to know about the connection.
#[derive(Debug, Clone)]
pub(crate) struct SocketSettings {
    pub endpoint: Endpoint,
    pub protocol: ProtocolVersion,
    pub client_id: ClientId,
    /// Largest packet accepted from the broker, in bytes.
    pub max_packet_size: u32,
}

/// Owns the stream of one connection.
#[derive(Debug)]
pub(crate) struct SocketActor {
    settings: SocketSettings,
    link: Link,
    session: Addr<SessionActor>,
    counters: Rc<Counters>,
    flushing: Option<SpawnHandle>,
    /// Shared with the session: the reader and the writer it drives.
    wire: Rc<Wire>,
}

impl SocketActor {
    pub fn new(
        settings: SocketSettings,
        link: Link,
        session: Addr<SessionActor>,
        counters: Rc<Counters>,
        wire: Rc<Wire>,
    ) -> Self {
        Self {
            settings,
            link,
            session,
            counters,
            flushing: None,
            wire,
        }
    }

    fn on_connected(&mut self, stream: Stream) {
        tracing::info!(
            client_id = %self.settings.client_id,
            host = %self.settings.endpoint.host,
            port = self.settings.endpoint.port,
            "tcp connected"
        );
        let stream = Rc::new(stream);
        let decoder = Decoder::for_client(self.settings.protocol)
            .with_max_packet_size(self.settings.max_packet_size);
        *self.wire.reader.borrow_mut() = Some(PacketReader::new(Rc::clone(&stream), decoder));
        *self.wire.writer.borrow_mut() = Some(PacketWriter::new(stream, self.settings.protocol));
        self.session.do_send(TransportConnected);
    }

    fn fail(&mut self, error: ClientError, ctx: &mut Context<Self>) {
        self.link.take_down(DisconnectCause::Failed(error));
        ctx.stop();
    }

    /// Starts [`flush_writer`] for the bytes the stream did not take, unless such a
    /// flush runs already or the group is down.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing.is_some() || self.link.is_down() {
            return;
        }
        let flush = flush_writer(Rc::clone(&self.wire), Rc::clone(&self.counters));
        let handle = ctx.spawn(flush.into_actor(self).map(|result, actor, ctx| {
            actor.flushing = None;
            if let Err(error) = result {
                let closed = ClosedBy::Io(Arc::new(error));
                actor.fail(ClientError::ConnectionClosed(closed), ctx);
            }
        }));
        self.flushing = Some(handle);
    }
}

/// Writes the bytes waiting in the writer of `wire` each time the stream is writable,
/// until none are left. The session may append packets meanwhile; they leave in the
/// same write calls.
pub(crate) async fn flush_writer(wire: Rc<Wire>, counters: Rc<Counters>) -> io::Result<()> {
    loop {
        let Some(stream) = wire
            .writer
            .borrow_mut()
            .as_mut()
            .and_then(PacketWriter::left_over)
        else {
            return Ok(());
        };
        stream.writable().await?;
        if let Some(writer) = wire.writer.borrow_mut().as_mut() {
            writer.write_once(&counters, &wire.pending)?;
        }
    }
}

impl Actor for SocketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        actor_started();
        stop_with_link(&self.link, self, ctx);

        let endpoint = self.settings.endpoint.clone();
        let connect = async move { Stream::connect(&endpoint).await };
        ctx.spawn(
            connect
                .into_actor(self)
                .map(|result, actor, ctx| match result {
                    Ok(stream) => actor.on_connected(stream),
                    Err(error) => {
                        tracing::info!(
                            client_id = %actor.settings.client_id,
                            host = %actor.settings.endpoint.host,
                            port = actor.settings.endpoint.port,
                            %error,
                            "tcp connect failed"
                        );
                        let failure = ClientError::ConnectFailed {
                            endpoint: actor.settings.endpoint.clone(),
                            source: Arc::new(error),
                        };
                        actor.fail(failure, ctx);
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // One last write without waiting, so that a DISCONNECT the stream did not take
        // at once reaches the broker if it has room now. The stream closes on drop.
        if let Some(writer) = self.wire.writer.borrow_mut().as_mut() {
            let _ = writer.write_once(&self.counters, &self.wire.pending);
        }
        actor_stopped();
        self.link
            .take_down(DisconnectCause::Failed(ClientError::Stopped));
    }
}

impl Handler<FlushPending> for SocketActor {
    type Result = ();

    fn handle(&mut self, FlushPending: FlushPending, ctx: &mut Self::Context) {
        self.start_flush(ctx);
    }
}

/// The write side of one connection: the stream and the bytes waiting for it. The
/// socket builds it once connected. The session encodes into it with
/// [`encode`](Self::encode) and writes with [`write_now`](Self::write_now). The socket
/// writes what is left once the stream is writable.
#[derive(Debug)]
pub(crate) struct PacketWriter {
    stream: Rc<Stream>,
    protocol: ProtocolVersion,
    buf: WriteBuffer<RequestToken>,
    /// Whether bytes were left over and the socket was asked to write them.
    left_to_socket: bool,
}

impl PacketWriter {
    fn new(stream: Rc<Stream>, protocol: ProtocolVersion) -> Self {
        Self {
            stream,
            protocol,
            buf: WriteBuffer::default(),
            left_to_socket: false,
        }
    }

    /// Appends the encoded packet to the bytes waiting. The session checked user
    /// packets against the broker's Maximum Packet Size already, and the packets it
    /// builds itself are never larger than needed, so no limit is applied here.
    pub fn encode(&mut self, transmit: &Transmit) -> Result<(), EncodeError> {
        codec::encode(
            &transmit.packet,
            self.protocol,
            u32::MAX,
            self.buf.buf_mut(),
        )?;
        self.buf.commit(transmit.written);
        Ok(())
    }

    /// Writes the waiting bytes as far as the stream takes them now. Returns `true`
    /// when bytes are left, so the socket must write them once the stream is
    /// writable. Until the socket has written them all, this writes nothing and
    /// returns `false`: the stream is full, and the socket's writes include the newer
    /// bytes too.
    pub fn write_now(
        &mut self,
        counters: &Counters,
        pending: &PendingRequests,
    ) -> io::Result<bool> {
        if self.left_to_socket || self.buf.is_empty() {
            return Ok(false);
        }
        self.write_once(counters, pending)?;
        self.left_to_socket = !self.buf.is_empty();
        Ok(self.left_to_socket)
    }

    /// Writes as many waiting bytes as the stream takes now, counts them, and completes
    /// the QoS 0 publishes written. A full stream is not an error.
    pub fn write_once(&mut self, counters: &Counters, pending: &PendingRequests) -> io::Result<()> {
        match self.buf.write_to(&self.stream) {
            Ok((count, tokens)) => {
                Counters::add(&counters.bytes_out, count as u64);
                for token in tokens {
                    // A caller that already got a failure has no entry left.
                    let _ = pending.complete_publish(token, PublishOutcome::default());
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Returns `true` when bytes wait that the stream has not taken yet.
    pub fn has_unwritten(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Returns the stream while bytes wait for it. Once none wait, the session writes
    /// directly again.
    fn left_over(&mut self) -> Option<Rc<Stream>> {
        self.left_to_socket = !self.buf.is_empty();
        self.left_to_socket.then(|| Rc::clone(&self.stream))
    }
}

/// The read side of one connection: the stream, its read buffer and the decoder. The
/// socket builds it once connected, and the session actor drives it: wait with
/// [`poll_readable`](Self::poll_readable), [`read`](Self::read) once, take packets with
/// [`next_packet`](Self::next_packet) until it returns `None`, then
/// [`finish_read`](Self::finish_read).
#[derive(Debug)]
pub(crate) struct PacketReader {
    stream: Rc<Stream>,
    decoder: Decoder,
    read_buf: ReadBuffer,
}

impl PacketReader {
    fn new(stream: Rc<Stream>, decoder: Decoder) -> Self {
        Self {
            stream,
            decoder,
            read_buf: ReadBuffer::default(),
        }
    }

    /// Returns `Ready` once the stream may have bytes to read; until then the waker of
    /// `cx` is woken when it may. Only the waker of the latest call is kept.
    pub fn poll_readable(&self, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    /// Reads once from the stream. Returns the number of bytes read, 0 at the end of
    /// the stream, or `None` when nothing was ready after all.
    pub fn read(&mut self) -> io::Result<Option<usize>> {
        match self.read_buf.read_from(&self.stream) {
            Ok(count) => Ok(Some(count)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Decodes the next complete packet of the bytes read, or returns `None` when the
    /// rest is incomplete. After an error the stream is broken and nothing more may be
    /// read.
    pub fn next_packet(&mut self) -> Result<Option<codec::Packet>, codec::DecodeError> {
        self.decoder.decode(&mut self.read_buf.buf)
    }

    /// Returns `true` when the last read emptied the socket and cleared its readiness,
    /// so the next read would find nothing.
    pub fn drained_last_read(&self) -> bool {
        self.read_buf.drained
    }

    /// Returns `true` when the last read filled all the free space of the buffer, so
    /// more bytes probably wait in the stream.
    pub fn filled_last_read(&self) -> bool {
        self.read_buf.filled
    }

    /// Ends a read that gave `packets` packets: after a read of few packets the
    /// connection counts as quiet and frees the read buffer if nothing is left in it.
    /// A busy connection keeps the buffer, whose allocation is reused once the packets
    /// decoded from it are dropped.
    pub fn finish_read(&mut self, packets: usize) {
        if packets <= QUIET_READ_PACKETS {
            self.read_buf.release_if_empty();
        }
    }
}

/// Read buffer of one connection, whose reservation before each read adapts to the
/// traffic, so that a busy connection reads in large chunks and an idle one uses little
/// memory.
#[derive(Debug)]
struct ReadBuffer {
    /// Bytes read and not yet decoded, such as the start of a partial packet.
    buf: BytesMut,
    /// Free space reserved before the next read, from `MIN_READ_RESERVE` to
    /// `MAX_READ_RESERVE` bytes.
    reserve: usize,
    /// Whether the last read filled all the free space, so more bytes probably wait.
    filled: bool,
    /// Whether the last read emptied the socket, see [`DRAINED_BELOW`].
    drained: bool,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            reserve: MIN_READ_RESERVE,
            filled: false,
            drained: false,
        }
    }
}

impl ReadBuffer {
    /// Frees the allocation when it contains no undecoded bytes, so a connection waiting
    /// for its next packet keeps no read buffer allocated. Decoded packets that still
    /// share the allocation keep it alive until they are dropped.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Reads once from `stream` into at least `reserve` bytes of free space, then
    /// adapts `reserve` to the number of bytes read.
    fn read_from(&mut self, stream: &Stream) -> io::Result<usize> {
        self.buf.reserve(self.reserve);
        let spare = self.buf.capacity() - self.buf.len();
        let count = stream.try_read_buf(&mut self.buf, DRAINED_BELOW)?;
        self.reserve = next_read_reserve(self.reserve, spare, count);
        self.filled = count >= spare;
        self.drained = empties_socket(count, spare, DRAINED_BELOW);
        Ok(count)
    }
}

/// Computes the reservation for the next read after a read of `count` bytes into
/// `spare` bytes of free space. It doubles when the read filled the space, because more
/// bytes are probably waiting, and halves when the read used less than a quarter of
/// `reserve`. It stays within `MIN_READ_RESERVE..=MAX_READ_RESERVE`.
fn next_read_reserve(reserve: usize, spare: usize, count: usize) -> usize {
    if count >= spare {
        (reserve * 2).min(MAX_READ_RESERVE)
    } else if count < reserve / 4 {
        (reserve / 2).max(MIN_READ_RESERVE)
    } else {
        reserve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_reserve_doubles_when_filled() {
        assert_eq!(next_read_reserve(1024, 1024, 1024), 2048);
        assert_eq!(next_read_reserve(2048, 3000, 3000), 4096);
    }

    #[test]
    fn read_reserve_stops_at_maximum() {
        assert_eq!(
            next_read_reserve(MAX_READ_RESERVE, MAX_READ_RESERVE, MAX_READ_RESERVE),
            MAX_READ_RESERVE
        );
    }

    #[test]
    fn read_reserve_keeps_on_partial_read() {
        assert_eq!(next_read_reserve(4096, 4096, 1024), 4096);
        assert_eq!(next_read_reserve(4096, 4096, 4095), 4096);
    }

    #[test]
    fn read_reserve_halves_on_small_read() {
        assert_eq!(next_read_reserve(8192, 8192, 100), 4096);
        assert_eq!(next_read_reserve(8192, 8192, 2047), 4096);
    }

    #[test]
    fn read_reserve_stops_at_minimum() {
        assert_eq!(
            next_read_reserve(MIN_READ_RESERVE, MIN_READ_RESERVE, 2),
            MIN_READ_RESERVE
        );
    }

    #[test]
    fn read_reserve_ignores_decoder_reservation() {
        // The decoder reserved 64 KiB ahead for a large packet. A read that does not
        // fill that space does not grow the next reservation.
        assert_eq!(next_read_reserve(1024, 64 * 1024, 4096), 1024);
    }

    #[test]
    fn read_buffer_starts_without_allocation() {
        let read_buf = ReadBuffer::default();
        assert_eq!(read_buf.buf.capacity(), 0);
        assert_eq!(read_buf.reserve, MIN_READ_RESERVE);
    }

    #[test]
    fn read_buffer_releases_empty_allocation() {
        let mut read_buf = ReadBuffer::default();
        read_buf.buf.reserve(MAX_READ_RESERVE);
        read_buf.release_if_empty();
        assert_eq!(read_buf.buf.capacity(), 0);
    }

    #[test]
    fn read_buffer_keeps_partial_packet() {
        let mut read_buf = ReadBuffer::default();
        read_buf.buf.reserve(MAX_READ_RESERVE);
        read_buf.buf.extend_from_slice(&[0x30, 0x10, 0x00]);
        read_buf.release_if_empty();
        assert_eq!(&read_buf.buf[..], &[0x30, 0x10, 0x00]);
        assert!(read_buf.buf.capacity() >= MAX_READ_RESERVE);
    }
}
