//! HTTP/1.1 message syntax and caching decisions: pure code, bytes in,
//! structs out. No I/O, no allocation on the request path.
//!
//! - [`request`] / [`response`]: strict heads and body framing (RFC 9112)
//! - [`chunked`]: incremental chunked-body decoder
//! - [`headers`], [`framing`]: field lookups and framing fields
//! - [`cache_control`], [`date`], [`freshness`]: RFC 9111 decisions

pub mod cache_control;
pub mod chunked;
pub mod date;
pub mod error;
pub mod framing;
pub mod freshness;
pub mod headers;
pub mod request;
pub mod response;

pub use error::ParseError;
pub use response::{parse_response, ResponseFraming, ResponseHead};

pub use request::{parse_request, BodyFraming, Method, Parsed, RequestHead, RequestLimits};
