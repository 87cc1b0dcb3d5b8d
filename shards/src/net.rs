//! Network types of the shard runtime, and the vectored send the fetch path uses.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures::io::AsyncWriteExt;
pub use glommio::net::{TcpListener, TcpStream};

/// Most buffers handed to one `sendmsg` (Linux's UIO_MAXIOV).
const IOVECS_MAX: usize = 1024;

/// Writes all of `bufs`, in order, straight from the buffers: `sendmsg` with one iovec per
/// buffer, so nothing is copied in user space however many buffers a response has. When the
/// socket buffer is full, it waits for the socket through glommio (writing part of the next
/// buffer the usual way once the socket is writable) and carries on vectored.
///
/// `None` if the socket took no byte for `stall` (a peer that stopped reading): the bound is
/// on a stall, not on the whole write, so a slow but steady reader gets any size of answer.
pub async fn write_all_vectored<B: AsRef<[u8]>>(
    stream: &mut TcpStream,
    bufs: &[B],
    stall: Duration,
) -> Option<io::Result<()>> {
    let written = write_all_vectored_or_stall(stream, bufs, stall).await;
    match written {
        Ok(()) => Some(Ok(())),
        Err(Stalled::Stalled) => None,
        Err(Stalled::Io(e)) => Some(Err(e)),
    }
}

enum Stalled {
    Stalled,
    Io(io::Error),
}

impl From<io::Error> for Stalled {
    fn from(e: io::Error) -> Stalled {
        Stalled::Io(e)
    }
}

async fn write_all_vectored_or_stall<B: AsRef<[u8]>>(
    stream: &mut TcpStream,
    bufs: &[B],
    stall: Duration,
) -> Result<(), Stalled> {
    let fd = stream.as_raw_fd();
    let mut first = 0; // index of the first buffer not fully written
    let mut skip = 0; // bytes of it already written
    loop {
        while first < bufs.len() && skip == bufs[first].as_ref().len() {
            first += 1;
            skip = 0;
        }
        if first == bufs.len() {
            return Ok(());
        }
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let b = if i == 0 {
                    &b.as_ref()[skip..]
                } else {
                    b.as_ref()
                };
                libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                }
            })
            .filter(|v| v.iov_len > 0)
            .take(IOVECS_MAX)
            .collect();
        // SAFETY: every iovec points into a buffer borrowed for this whole call; the kernel only
        // reads from them, and `msg` lives across the syscall.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        let mut advance = if sent >= 0 {
            sent as usize
        } else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => 0,
                io::ErrorKind::WouldBlock => {
                    // Full: let glommio wait for the socket, and write what fits; the only
                    // wait, so the only place a stall is timed.
                    let write = stream.write(&bufs[first].as_ref()[skip..]);
                    let n = crate::timeout(stall, write)
                        .await
                        .ok_or(Stalled::Stalled)??;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    n
                }
                _ => return Err(e.into()),
            }
        };
        while advance > 0 {
            let left = bufs[first].as_ref().len() - skip;
            if advance < left {
                skip += advance;
                advance = 0;
            } else {
                advance -= left;
                first += 1;
                skip = 0;
            }
        }
    }
}

/// Accepts connections for as long as the future lives, handing each to `accepted`. A failed
/// accept (out of file descriptors, say) goes to `failed` and is retried after `retry`, so that
/// an exhausted process does not spin.
pub async fn accept_loop(
    listener: &TcpListener,
    mut accepted: impl FnMut(TcpStream),
    mut failed: impl FnMut(io::Error),
    retry: Duration,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => accepted(stream),
            Err(e) => {
                failed(e.into());
                crate::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncReadExt;

    #[test]
    fn vectored_writes_deliver_every_byte_in_order_past_a_full_socket() {
        // 3000 buffers (more than one sendmsg takes), 12 MB (more than the socket buffers hold),
        // some empty.
        let bufs: Vec<Vec<u8>> = (0..3000usize)
            .map(|i| (0..(i * 37) % 8000).map(|j| (i + j) as u8).collect())
            .collect();
        let expected: Vec<u8> = bufs.iter().flatten().copied().collect();
        let got = crate::block_on(1 << 20, move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let writer = crate::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let stall = std::time::Duration::from_secs(10);
                write_all_vectored(&mut s, &bufs, stall)
                    .await
                    .unwrap()
                    .unwrap();
                s.close().await.unwrap();
            });
            let mut conn = listener.accept().await.unwrap();
            // Let the writer fill the socket before reading, so the would-block path runs.
            crate::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            writer.await;
            got
        })
        .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrive in order");
    }
}
