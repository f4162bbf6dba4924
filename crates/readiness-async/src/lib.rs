#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod driver;
mod io;
mod reactor;
mod timer;

pub use driver::block_on;
pub use io::{Async, Incoming, Readable, Writable};
pub use reactor::Reactor;
pub use timer::Timer;
