//! Refused writes that give the data back.

use std::fmt;
use std::io;

use bytes::Bytes;

/// A write or datagram send that was refused. The data was not written and
/// not queued: it is given back ([`into_data`](Self::into_data)).
///
/// Kinds: [`WouldBlock`](io::ErrorKind::WouldBlock) when the queue (the
/// connection's high-water mark or the loop's cap) has no room now: wait for
/// `on_drained`; [`InvalidInput`](io::ErrorKind::InvalidInput) when the data
/// is larger than the high-water mark and can never be queued whole;
/// [`NotConnected`](io::ErrorKind::NotConnected) when the connection is
/// closing, closed or not connected yet; [`NotFound`](io::ErrorKind::NotFound)
/// for an id that names no live connection.
pub struct WriteError {
    kind: io::ErrorKind,
    reason: &'static str,
    data: Bytes,
}

impl WriteError {
    pub(crate) fn new(kind: io::ErrorKind, reason: &'static str, data: Bytes) -> WriteError {
        WriteError { kind, reason, data }
    }

    /// Why the write was refused.
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    /// The data that was not written.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Takes the data that was not written back.
    pub fn into_data(self) -> Bytes {
        self.data
    }
}

impl fmt::Debug for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteError")
            .field("kind", &self.kind)
            .field("reason", &self.reason)
            .field("len", &self.data.len())
            .finish()
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write of {} bytes refused: {}",
            self.data.len(),
            self.reason
        )
    }
}

impl std::error::Error for WriteError {}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        io::Error::new(e.kind, e.reason)
    }
}
