//! BSD and Apple `kqueue` (being written).
