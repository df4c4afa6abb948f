//! io_uring backend (to be written).
