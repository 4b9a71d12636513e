//! The socket actor: owns the byte stream of one connection. It opens the stream, hands
//! its read side to the session actor as a [`PacketReader`], and encodes the session's
//! packets into one write buffer that is flushed with as few write calls as possible.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use actix::WeakAddr;
use bytes::BytesMut;

use crate::codec::{self, ClientId, Decoder, ProtocolVersion};
use crate::error::{ClientError, ClosedBy, DisconnectCause};
use crate::store::RequestToken;
use crate::transport::{Endpoint, Stream, WriteBuffer};

use super::client::ClientActor;
use super::group::{
    actor_started, actor_stopped, Counters, Outbound, TransportConnected, Wire, Written,
};
use super::link::{stop_with_link, Link};
use super::session::SessionActor;

/// Smallest free space reserved before a read from the stream, in bytes.
const MIN_READ_RESERVE: usize = 1024;

/// Largest free space reserved before a read from the stream, in bytes. The decoder may
/// reserve more for a large packet that has not fully arrived.
const MAX_READ_RESERVE: usize = 8 * 1024;

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
    client: WeakAddr<ClientActor>,
    counters: Rc<Counters>,
    stream: Option<Rc<Stream>>,
    write: Rc<RefCell<WriteBuffer<RequestToken>>>,
    flushing: Option<SpawnHandle>,
    /// Shared with the session: its queued packets, and the reader handed over.
    wire: Rc<Wire>,
}

impl SocketActor {
    pub fn new(
        settings: SocketSettings,
        link: Link,
        session: Addr<SessionActor>,
        client: WeakAddr<ClientActor>,
        counters: Rc<Counters>,
        wire: Rc<Wire>,
    ) -> Self {
        Self {
            settings,
            link,
            session,
            client,
            counters,
            stream: None,
            write: Rc::new(RefCell::new(WriteBuffer::default())),
            flushing: None,
            wire,
        }
    }

    fn on_connected(&mut self, stream: Stream, ctx: &mut Context<Self>) {
        tracing::info!(
            client_id = %self.settings.client_id,
            host = %self.settings.endpoint.host,
            port = self.settings.endpoint.port,
            "tcp connected"
        );
        let stream = Rc::new(stream);
        self.stream = Some(Rc::clone(&stream));
        let decoder = Decoder::for_client(self.settings.protocol)
            .with_max_packet_size(self.settings.max_packet_size);
        *self.wire.reader.borrow_mut() = Some(PacketReader::new(stream, decoder));
        self.session.do_send(TransportConnected);
        self.start_flush(ctx);
    }

    fn fail(&mut self, error: ClientError, ctx: &mut Context<Self>) {
        self.link.take_down(DisconnectCause::Failed(error));
        ctx.stop();
    }

    /// Starts writing the buffer unless a flush runs already; a running flush picks up
    /// packets appended while it waits, so many packets leave in one write call.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing.is_some() || self.link.is_down() {
            return;
        }
        let Some(stream) = self.stream.clone() else {
            return;
        };
        let write = Rc::clone(&self.write);
        let client = self.client.clone();
        let counters = Rc::clone(&self.counters);
        let flush = async move {
            loop {
                if write.borrow().is_empty() {
                    return Ok(());
                }
                stream.writable().await?;
                let written = write.borrow_mut().write_to(&stream);
                match written {
                    Ok((count, tokens)) => {
                        Counters::add(&counters.bytes_out, count as u64);
                        report_written(&client, tokens);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error),
                }
            }
        };
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
                    Ok(stream) => actor.on_connected(stream, ctx),
                    Err(error) => {
                        tracing::info!(
                            client_id = %actor.settings.client_id,
                            host = %actor.settings.endpoint.host,
                            port = actor.settings.endpoint.port,
                            %error,
                            "tcp connect failed"
                        );
                        actor.fail(ClientError::ConnectFailed(Arc::new(error)), ctx);
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // One last write without waiting, so that a DISCONNECT queued as the group went
        // down reaches the broker when the socket has room; the stream closes on drop.
        if let Some(stream) = &self.stream {
            let _ = self.write.borrow_mut().write_to(stream);
        }
        actor_stopped();
        self.link
            .take_down(DisconnectCause::Failed(ClientError::Stopped));
    }
}

impl Handler<Outbound> for SocketActor {
    type Result = ();

    /// Encodes the packets even when the group is going down, so `stopped` can still
    /// write a final DISCONNECT.
    fn handle(&mut self, Outbound: Outbound, ctx: &mut Self::Context) {
        let wire = Rc::clone(&self.wire);
        for transmit in wire.outbox.borrow_mut().drain(..) {
            let encoded = {
                let mut write = self.write.borrow_mut();
                // The session checked user packets against the broker's Maximum Packet
                // Size already; acknowledgements it builds are never larger than needed.
                let result = codec::encode(
                    &transmit.packet,
                    self.settings.protocol,
                    u32::MAX,
                    write.buf_mut(),
                );
                result.map(|()| write.commit(transmit.written))
            };
            match encoded {
                Ok(_) => {
                    Counters::add(&self.counters.packets_out, 1);
                    tracing::trace!(
                        client_id = %self.settings.client_id,
                        packet_type = ?transmit.packet.packet_type(),
                        "packet encoded"
                    );
                }
                Err(error) => {
                    tracing::warn!(client_id = %self.settings.client_id, %error, "encode failed");
                    let closed = ClosedBy::EncodeFailed(error.to_string());
                    return self.fail(ClientError::ConnectionClosed(closed), ctx);
                }
            }
        }
        self.start_flush(ctx);
    }
}

/// The read side of one connection: the stream, its read buffer and the decoder. The
/// socket builds it once connected, and the session actor drives it: wait with
/// [`readable`](Self::readable), [`read`](Self::read) once, take packets with
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

    /// Returns a future that resolves once the stream may have bytes to read. It
    /// borrows nothing, so the caller can keep using the reader meanwhile.
    pub fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + 'static {
        let stream = Rc::clone(&self.stream);
        async move { stream.readable().await }
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
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            reserve: MIN_READ_RESERVE,
            filled: false,
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
        let count = stream.try_read_buf(&mut self.buf)?;
        self.reserve = next_read_reserve(self.reserve, spare, count);
        self.filled = count >= spare;
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

fn report_written(client: &WeakAddr<ClientActor>, tokens: Vec<RequestToken>) {
    if tokens.is_empty() {
        return;
    }
    if let Some(client) = client.upgrade() {
        client.do_send(Written(tokens));
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
