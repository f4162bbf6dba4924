//! A ready-made echo handler.

use std::io;

use bytes::Bytes;

use crate::{Conn, Handler};

/// Writes back everything it reads, without copying, with back-pressure:
/// when a write is refused (the queue is at the high-water mark) it keeps
/// the data, pauses reading, and goes on at `on_drained`. So a peer that
/// sends but never reads holds at most the high-water mark of the server's
/// memory, and loses nothing.
#[derive(Debug, Default)]
pub struct Echo {
    // Boxed: 8 bytes per connection; the box is made only when a write is
    // refused.
    held: Option<Box<Bytes>>,
}

impl Echo {
    /// A new echo handler.
    pub fn new() -> Echo {
        Echo::default()
    }

    fn send(&mut self, conn: &mut Conn<'_>, mut data: Bytes) {
        loop {
            match conn.write(data) {
                Ok(()) => return,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::InvalidInput => {
                        data = e.into_data();
                        let room = conn.write_room();
                        if room == 0 || room >= data.len() {
                            self.held = Some(Box::new(data));
                            conn.pause_reading();
                            return;
                        }
                        let head = data.split_to(room);
                        if conn.write(head).is_err() {
                            conn.abort();
                            return;
                        }
                    }
                    // Closed or reset: the loop reports it.
                    _ => return,
                },
            }
        }
    }
}

impl Handler for Echo {
    #[inline]
    fn on_data(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        self.send(conn, data);
    }

    fn on_drained(&mut self, conn: &mut Conn<'_>) {
        if let Some(data) = self.held.take() {
            self.send(conn, *data);
            if self.held.is_none() {
                conn.resume_reading();
            }
        }
    }
}
