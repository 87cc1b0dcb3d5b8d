//! Kafka framing: every request and response is a 4-byte big-endian size, then that many bytes.

use bytes::BytesMut;
use futures::io::{AsyncRead, AsyncReadExt};

/// Default bound on one request frame, as Kafka's `socket.request.max.bytes`.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size_bytes} bytes exceeds socket.request.max.bytes={max_bytes}")]
    TooLarge { size_bytes: i64, max_bytes: usize },
    #[error("frame size {0} is negative or too small to hold a request header")]
    Invalid(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Smallest valid request: api key, api version, correlation id.
const REQUEST_HEADER_BYTES_MIN: i32 = 8;

/// The buffer of a frame starts this large (or at the frame's size, if smaller) and doubles as
/// bytes arrive: memory follows what a client has sent, never what it declared.
pub const FRAME_BUFFER_FIRST_BYTES: usize = 8 * 1024;

/// Up to this size a frame's buffer is reserved whole up front (address space, not memory: its
/// pages are touched only as the buffer grows), so growing it never copies what arrived — a
/// copy of every produced byte (issue 23). Beyond it the buffer is reallocated as it doubles.
/// The size of a client's usual produce request (librdkafka's `message.max.bytes` is 1 MB);
/// small enough that a swarm of connections declaring huge frames maps little (200 of them:
/// 200 MiB of address space at most).
pub const FRAME_RESERVE_BYTES_MAX: usize = 1024 * 1024;

/// Reads one frame. `Ok(None)` is a clean end of stream between frames. The frame's capacity
/// is its size exactly, so the zero-copy pieces carved out of it pin nothing else.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    request_bytes_max: usize,
) -> Result<Option<BytesMut>, FrameError> {
    let mut size = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = reader.read(&mut size[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let size_bytes = i32::from_be_bytes(size);
    if size_bytes < REQUEST_HEADER_BYTES_MIN {
        return Err(FrameError::Invalid(size_bytes));
    }
    if size_bytes as usize > request_bytes_max {
        return Err(FrameError::TooLarge {
            size_bytes: size_bytes as i64,
            max_bytes: request_bytes_max,
        });
    }
    let size = size_bytes as usize;
    let mut frame: Vec<u8> = Vec::with_capacity(size.min(FRAME_RESERVE_BYTES_MAX));
    let mut filled = 0;
    while filled < size {
        if filled == frame.len() {
            let grown = (2 * frame.len()).clamp(FRAME_BUFFER_FIRST_BYTES.min(size), size);
            if grown > frame.capacity() {
                frame.reserve_exact(grown - frame.len());
            }
            frame.resize(grown, 0);
        }
        let n = reader.read(&mut frame[filled..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        filled += n;
    }
    debug_assert_eq!(frame.len(), size);
    Ok(Some(BytesMut::from(bytes::Bytes::from(frame))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reads_frames_and_clean_eof() {
        let mut input = framed(b"12345678");
        input.extend(framed(b"abcdefghij"));
        let mut r = &input[..];
        assert_eq!(
            &block_on(read_frame(&mut r, 100)).unwrap().unwrap()[..],
            b"12345678"
        );
        assert_eq!(
            &block_on(read_frame(&mut r, 100)).unwrap().unwrap()[..],
            b"abcdefghij"
        );
        assert!(block_on(read_frame(&mut r, 100)).unwrap().is_none());
    }

    /// Gives `data`, then EOF, and records the largest buffer it was asked to fill.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        largest_read_bytes: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.largest_read_bytes = self.largest_read_bytes.max(buf.len());
            let n = buf.len().min(self.data.len() - self.at).min(1000);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_declared_size_is_not_allocated_before_its_bytes_arrive() {
        // 100 MiB declared, 5000 bytes sent, then the client goes away.
        let mut data = (100i32 << 20).to_be_bytes().to_vec();
        data.extend(std::iter::repeat_n(7u8, 5000));
        let mut r = Trickle {
            data,
            at: 0,
            largest_read_bytes: 0,
        };
        assert!(matches!(
            block_on(read_frame(&mut r, 100 << 20)),
            Err(FrameError::Truncated)
        ));
        assert!(
            r.largest_read_bytes <= 2 * FRAME_BUFFER_FIRST_BYTES,
            "asked to fill {} bytes after 5000 arrived",
            r.largest_read_bytes
        );
        // A whole frame grows to exactly its size, bytes intact.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = Trickle {
            data: framed(&payload),
            at: 0,
            largest_read_bytes: 0,
        };
        let frame = block_on(read_frame(&mut r, 1 << 20)).unwrap().unwrap();
        assert_eq!(&frame[..], &payload[..]);
        assert_eq!(frame.capacity(), payload.len());
        assert!(r.largest_read_bytes < payload.len());
    }

    #[test]
    fn refuses_bad_sizes_and_truncation() {
        let mut r = &framed(&[0u8; 200])[..];
        assert!(matches!(
            block_on(read_frame(&mut r, 100)),
            Err(FrameError::TooLarge { .. })
        ));
        let mut r = &(-1i32).to_be_bytes()[..];
        assert!(matches!(
            block_on(read_frame(&mut r, 100)),
            Err(FrameError::Invalid(-1))
        ));
        let input = framed(b"12345678");
        let mut r = &input[..7];
        assert!(matches!(
            block_on(read_frame(&mut r, 100)),
            Err(FrameError::Truncated)
        ));
        let mut r = &input[..2];
        assert!(matches!(
            block_on(read_frame(&mut r, 100)),
            Err(FrameError::Truncated)
        ));
    }
}
