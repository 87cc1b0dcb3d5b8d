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

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
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
    let mut frame = BytesMut::zeroed(size_bytes as usize);
    reader
        .read_exact(&mut frame)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    Ok(Some(frame))
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
