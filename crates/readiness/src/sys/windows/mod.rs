//! Windows backends (being written).
