//! The library behind the `readiness` command: what its subcommands run,
//! shared with their tests.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod explore;
