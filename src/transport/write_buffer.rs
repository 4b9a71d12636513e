//! Bytes waiting to be written, with marks that report when the bytes of a packet have
//! left.

use std::collections::VecDeque;
use std::io;

use bytes::{Buf, BytesMut};

use super::Stream;

/// A byte buffer that many packets are appended to and one write call drains.
///
/// Each appended chunk may carry a mark `T`; [`WriteBuffer::write_to`] returns the marks
/// of the chunks whose last byte it wrote.
#[derive(Debug)]
pub struct WriteBuffer<T> {
    buf: BytesMut,
    /// Total bytes ever appended.
    appended: u64,
    /// Total bytes ever written.
    written: u64,
    /// Marks with the value of `appended` at the end of their chunk, in order.
    marks: VecDeque<(u64, T)>,
}

impl<T> Default for WriteBuffer<T> {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            appended: 0,
            written: 0,
            marks: VecDeque::new(),
        }
    }
}

impl<T> WriteBuffer<T> {
    /// Returns the buffer to append one chunk to; call [`WriteBuffer::commit`] afterwards.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Records that the buffer grew to its current length, and marks the end of that
    /// chunk with `mark` if given. Returns the size of the chunk in bytes.
    pub fn commit(&mut self, mark: Option<T>) -> usize {
        let total = self.written + self.buf.len() as u64;
        let chunk = total.saturating_sub(self.appended);
        self.appended = total;
        if let Some(mark) = mark {
            self.marks.push_back((total, mark));
        }
        usize::try_from(chunk).unwrap_or(usize::MAX)
    }

    /// Returns `true` when no bytes wait to be written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes as many waiting bytes as `stream` accepts in one call. Returns the number of
    /// bytes written and the marks of the chunks now written completely.
    pub fn write_to(&mut self, stream: &Stream) -> io::Result<(usize, Vec<T>)> {
        let count = stream.try_write(&self.buf)?;
        self.buf.advance(count);
        self.written += count as u64;

        let mut done = Vec::new();
        while let Some((end, _)) = self.marks.front() {
            if *end > self.written {
                break;
            }
            if let Some((_, mark)) = self.marks.pop_front() {
                done.push(mark);
            }
        }
        Ok((count, done))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use bytes::BufMut;

    use super::*;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = super::super::Endpoint {
            host: "127.0.0.1".to_owned(),
            port: listener.local_addr().unwrap().port(),
        };
        let (client, accepted) = tokio::join!(Stream::connect(&endpoint), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn marks_returned_once_chunk_written() {
        let (stream, mut peer) = pair().await;
        let mut buffer = WriteBuffer::default();
        buffer.buf_mut().put_slice(b"abc");
        assert_eq!(buffer.commit(Some(1)), 3);
        buffer.buf_mut().put_slice(b"de");
        assert_eq!(buffer.commit(None), 2);
        buffer.buf_mut().put_slice(b"f");
        assert_eq!(buffer.commit(Some(2)), 1);

        stream.writable().await.unwrap();
        let (count, marks) = buffer.write_to(&stream).unwrap();
        assert_eq!(count, 6, "one write call takes every chunk");
        assert_eq!(marks, [1, 2]);
        assert!(buffer.is_empty());

        let mut received = [0; 6];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut received)
            .await
            .unwrap();
        assert_eq!(&received, b"abcdef");
    }
}
