//! The one place with `unsafe` in this crate: reading the urgent byte.
//!
//! socket2 receives into `MaybeUninit<u8>` buffers; reading the byte back
//! needs `assume_init`. Everything else (the read path included) is safe.

use std::io;
use std::mem::MaybeUninit;

use socket2::Socket;

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
