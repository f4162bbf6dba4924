//! OS-specific extras, as extension traits on the portable types.
//!
//! The portable API is the same everywhere; what only one OS can offer lives
//! here, behind a `cfg`, so code that uses it says so.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub mod linux;
#[cfg(windows)]
pub mod windows;
