//! The byte stream to the broker: opening it, and a write buffer that batches packets
//! into as few write calls as possible.
//!
//! Only plain TCP exists today. [`Stream`] is an enum so that TLS, WebSocket and Unix
//! sockets can be added as variants without touching the layers above. This layer knows
//! bytes only: no packets, no session, no actix.

mod write_buffer;

use std::fmt;
use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

pub use write_buffer::WriteBuffer;

/// Returns `true` when a read of `count` bytes into `spare` bytes of free space emptied
/// the socket: it read something, fewer than `drained_below` bytes, and left free space.
pub(crate) fn empties_socket(count: usize, spare: usize, drained_below: usize) -> bool {
    count > 0 && count < spare && count < drained_below
}

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    /// Writes `host:port`, with an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An open byte stream to the broker.
///
/// All methods take `&self`, so a reader and a writer can share one stream without
/// splitting it.
// NOTE: only plain TCP is implemented. TLS and WebSocket would be further variants; a
// TLS stream has no `&self` read and write, so it will need an adapter that owns the
// halves behind this same interface.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP with Nagle's algorithm off, so small packets such as PINGREQ and
    /// acknowledgements leave at once.
    Tcp(TcpStream),
}

impl Stream {
    /// Opens a TCP connection to `endpoint` and turns on `TCP_NODELAY`.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<Self> {
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self::Tcp(stream))
    }

    /// Returns `Ready` once the stream may have bytes to read. Until then the waker
    /// of `cx` is stored, and only the waker of the latest call gets woken, so one
    /// reader at a time may call this.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(stream) => stream.poll_read_ready(cx),
        }
    }

    /// Reads what is available into `buf` without waiting; returns 0 at end of stream
    /// and `WouldBlock` when nothing is available.
    ///
    /// A read of fewer than `drained_below` bytes that leaves free space in `buf` has
    /// emptied the socket, so it also clears tokio's readiness flag. The next read then
    /// returns `WouldBlock` without a system call, and
    /// [`poll_read_ready`](Self::poll_read_ready) waits for bytes that arrive after the read.
    ///
    /// A larger read keeps the flag, because on a busy connection more bytes often
    /// arrive while the packets are handled. Clearing it after every partial read cost
    /// the inbound QoS 1 benchmark about a tenth of its rate.
    pub fn try_read_buf(&self, buf: &mut BytesMut, drained_below: usize) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => {
                let spare = buf.capacity() - buf.len();
                let mut count = 0;
                // Returning `WouldBlock` from the closure is what clears the flag.
                let read = stream.try_io(Interest::READABLE, || {
                    count = stream.try_read_buf(buf)?;
                    if empties_socket(count, spare, drained_below) {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match read {
                    Ok(()) => Ok(count),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock && count > 0 => {
                        Ok(count)
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Waits until the stream may accept bytes.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.writable().await,
        }
    }

    /// Writes as much of `buf` as the stream accepts without waiting; returns
    /// `WouldBlock` when it accepts nothing.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.try_write(buf),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::time::timeout;

    use super::*;

    #[test]
    fn endpoint_display_brackets_ipv6() {
        let endpoint = |host: &str| Endpoint {
            host: host.to_owned(),
            port: 1883,
        };
        assert_eq!(
            endpoint("broker.example").to_string(),
            "broker.example:1883"
        );
        assert_eq!(endpoint("127.0.0.1").to_string(), "127.0.0.1:1883");
        assert_eq!(endpoint("::1").to_string(), "[::1]:1883");
    }

    /// Bound on each wait for bytes the test itself wrote over loopback.
    const ARRIVAL_BOUND: Duration = Duration::from_secs(10);

    /// Connects a [`Stream`] to a listener on loopback and returns it with the
    /// accepted peer.
    async fn connected_pair() -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port: listener.local_addr().unwrap().port(),
        };
        let (stream, accepted) = tokio::join!(Stream::connect(&endpoint), listener.accept());
        (stream.unwrap(), accepted.unwrap().0)
    }

    /// Sends `bytes` from the peer and waits until the stream reports them.
    async fn arrive(stream: &Stream, peer: &mut TcpStream, bytes: &[u8]) {
        peer.write_all(bytes).await.unwrap();
        timeout(ARRIVAL_BOUND, readable(stream))
            .await
            .expect("written bytes reach the stream")
            .unwrap();
    }

    /// Waits until the stream may have bytes to read.
    async fn readable(stream: &Stream) -> io::Result<()> {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
    }

    /// Returns whether tokio still counts the stream as readable, without waiting.
    fn still_readable(stream: &Stream) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(stream.poll_read_ready(&mut cx), Poll::Ready(Ok(())))
    }

    #[test]
    fn empties_socket_only_for_small_partial_reads() {
        // (bytes read, free space, threshold, empties the socket)
        let cases = [
            (10, 1024, 64, true),
            (63, 1024, 64, true),
            (64, 1024, 64, false),
            (16, 16, 64, false),
            (0, 1024, 64, false),
        ];
        for (count, spare, drained_below, expected) in cases {
            assert_eq!(
                empties_socket(count, spare, drained_below),
                expected,
                "{count} bytes into {spare} with threshold {drained_below}"
            );
        }
    }

    #[tokio::test]
    async fn small_read_clears_readiness() {
        let (stream, mut peer) = connected_pair().await;
        arrive(&stream, &mut peer, b"0123456789").await;
        let mut buf = BytesMut::with_capacity(1024);

        assert_eq!(stream.try_read_buf(&mut buf, 64).unwrap(), 10);
        assert!(!still_readable(&stream));
        let error = stream.try_read_buf(&mut buf, 64).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);

        arrive(&stream, &mut peer, b"ab").await;
        assert_eq!(stream.try_read_buf(&mut buf, 64).unwrap(), 2);
        assert_eq!(&buf[..], b"0123456789ab");
    }

    #[tokio::test]
    async fn read_at_threshold_keeps_readiness() {
        let (stream, mut peer) = connected_pair().await;
        arrive(&stream, &mut peer, &[7; 64]).await;
        let mut buf = BytesMut::with_capacity(1024);

        assert_eq!(stream.try_read_buf(&mut buf, 64).unwrap(), 64);
        assert!(still_readable(&stream));
    }

    #[tokio::test]
    async fn read_that_fills_buffer_keeps_readiness() {
        let (stream, mut peer) = connected_pair().await;
        arrive(&stream, &mut peer, &[7; 64]).await;
        let mut buf = BytesMut::with_capacity(16);
        let spare = buf.capacity();

        assert_eq!(stream.try_read_buf(&mut buf, 1024).unwrap(), spare);
        assert!(still_readable(&stream));
        let mut rest = BytesMut::with_capacity(1024);
        assert_eq!(stream.try_read_buf(&mut rest, 1024).unwrap(), 64 - spare);
    }

    #[tokio::test]
    async fn end_of_stream_reads_zero() {
        let (stream, peer) = connected_pair().await;
        drop(peer);
        timeout(ARRIVAL_BOUND, readable(&stream))
            .await
            .expect("the close reaches the stream")
            .unwrap();
        let mut buf = BytesMut::with_capacity(16);
        assert_eq!(stream.try_read_buf(&mut buf, 1024).unwrap(), 0);
    }
}
