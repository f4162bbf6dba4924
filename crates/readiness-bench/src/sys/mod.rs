//! The crate's only `unsafe` code.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod epoll_floor;
pub(crate) mod polling_reg;
