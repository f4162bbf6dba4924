//! The one place with `unsafe` in this crate: receiving into memory that is
//! not initialized yet.
//!
//! socket2 receives into `MaybeUninit<u8>` buffers. The read path receives
//! into the spare capacity of the loop's pooled `BytesMut` and then tells it
//! how many bytes are now initialized (`set_len`); the urgent-byte read
//! takes its byte back with `assume_init`. Zero-filling the pool instead
//! (the safe alternative, tried first) cost 10% more server CPU per echo of
//! 4 KiB messages than the raw loop: it walks the whole buffer instead of
//! reusing the same hot memory (docs/BENCHMARKS.md, net layer).

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};

use bytes::BytesMut;
use socket2::{SockRef, Socket};

/// Receives from a stream socket into `buf`'s spare capacity; returns the
/// byte count (0: end of stream) and appends the bytes to `buf`.
#[inline]
pub(crate) fn recv_stream(socket: &Socket, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let n = socket.recv(spare)?;
    assert!(n <= room, "recv reported more bytes than the buffer holds");
    // SAFETY: `recv(2)` / `WSARecv` wrote `n` bytes at the start of the
    // spare capacity (socket2's `recv` returns the count the OS reported,
    // checked above against the room given), so the first `len + n` bytes of
    // `buf` are initialized.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Receives one datagram into `buf`'s spare capacity; returns its size and
/// sender and appends it to `buf`.
#[inline]
pub(crate) fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut BytesMut,
) -> io::Result<(usize, SocketAddr)> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let (n, from) = SockRef::from(socket).recv_from(spare)?;
    assert!(
        n <= room,
        "recvfrom reported more bytes than the buffer holds"
    );
    // SAFETY: as in `recv_stream`: the OS wrote `n` bytes at the start of
    // the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    let from = from
        .as_socket()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((n, from))
}

/// Receives one out-of-band (urgent) byte.
pub(crate) fn recv_oob(socket: &Socket) -> io::Result<u8> {
    let mut buf = [MaybeUninit::new(0u8)];
    let n = socket.recv_out_of_band(&mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no urgent byte: the stream ended",
        ));
    }
    // SAFETY: `buf[0]` was initialized with `MaybeUninit::new(0)` above, and
    // `recv` only ever writes initialized bytes into it.
    Ok(unsafe { buf[0].assume_init() })
}
