//! The byte stream to the broker: opening it, and a write buffer that batches packets
//! into as few write calls as possible.
//!
//! Only plain TCP exists today. [`Stream`] is an enum so that TLS, WebSocket and Unix
//! sockets can be added as variants without touching the layers above. This layer knows
//! bytes only: no packets, no session, no actix.

mod write_buffer;

use std::io;

use bytes::BytesMut;
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
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.try_read_buf(buf),
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
