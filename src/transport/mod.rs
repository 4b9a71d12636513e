//! The byte stream to the broker: opening it, and a write buffer that batches packets
//! into as few write calls as possible.
//!
//! Only plain TCP exists today. [`Stream`] is an enum so that TLS, WebSocket and Unix
//! sockets can be added as variants without touching the layers above. This layer knows
//! bytes only: no packets, no session, no actix.

mod write_buffer;

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

pub use write_buffer::WriteBuffer;

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
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

    /// Waits until the stream may have bytes to read.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.readable().await,
        }
    }

    /// Reads what is available into `buf` without waiting; returns 0 at end of stream
    /// and `WouldBlock` when nothing is available.
    ///
    /// A read that does not fill the free space of `buf` has drained the socket, as
    /// epoll reports it. It therefore also clears tokio's readiness flag, so the next
    /// [`readable`](Self::readable) waits for new bytes. Without that, the wait would
    /// end at once and cost a read call that finds nothing. tokio's own `AsyncRead`
    /// does the same.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => {
                let spare = buf.capacity() - buf.len();
                let mut count = 0;
                // Returning `WouldBlock` from the closure clears the flag. Only the
                // readiness seen before the read is cleared, so bytes that arrived
                // since still wake the next wait.
                let drained = stream.try_io(Interest::READABLE, || {
                    count = stream.try_read_buf(buf)?;
                    if count > 0 && count < spare {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match drained {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock && count > 0 => {
                        Ok(count)
                    }
                    Err(error) => Err(error),
                    Ok(()) => Ok(count),
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
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port: listener.local_addr().unwrap().port(),
        };
        let (client, accepted) = tokio::join!(Stream::connect(&endpoint), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Polls `readable` once, without waiting.
    fn readable_now(stream: &Stream) -> bool {
        let readable = pin!(stream.readable());
        let mut cx = Context::from_waker(Waker::noop());
        matches!(readable.poll(&mut cx), Poll::Ready(Ok(())))
    }

    #[tokio::test]
    async fn partial_read_waits_for_new_bytes() {
        let (stream, mut peer) = pair().await;
        peer.write_all(b"0123456789").await.unwrap();
        stream.readable().await.unwrap();
        let mut buf = BytesMut::with_capacity(1024);
        assert_eq!(stream.try_read_buf(&mut buf).unwrap(), 10);
        assert!(!readable_now(&stream), "a partial read drains the readiness");

        peer.write_all(b"ab").await.unwrap();
        stream.readable().await.unwrap();
        assert_eq!(stream.try_read_buf(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..], b"0123456789ab");
    }

    #[tokio::test]
    async fn full_read_keeps_readiness() {
        let (stream, mut peer) = pair().await;
        peer.write_all(&[7; 64]).await.unwrap();
        stream.readable().await.unwrap();
        let mut buf = BytesMut::with_capacity(16);
        let spare = buf.capacity();
        assert_eq!(stream.try_read_buf(&mut buf).unwrap(), spare);
        assert!(readable_now(&stream), "more bytes may wait after a full read");
        buf.clear();
        assert!(stream.try_read_buf(&mut buf).unwrap() > 0);
    }

    #[tokio::test]
    async fn empty_read_is_would_block() {
        let (stream, _peer) = pair().await;
        let mut buf = BytesMut::with_capacity(16);
        let error = stream.try_read_buf(&mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
