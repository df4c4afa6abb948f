//! HTTP/1.1 message syntax and caching decisions: pure code, bytes in,
//! structs out. No I/O, no allocation on the request path.
//!
//! - [`request`], [`response`]: strict heads and their body framing
//!   (RFC 9112); slices borrow the receive buffer, fields land in a
//!   caller-owned scratch array
//! - [`chunked`]: incremental chunked-body decoder with bounded lines
//! - [`headers`], [`framing`]: field lookups, `Content-Length`,
//!   `Transfer-Encoding` and `Connection`
//! - [`cache_control`], [`date`], [`freshness`]: RFC 9111 decisions;
//!   [`freshness::decide`] on each origin response head (storable? with
//!   which [`freshness::Stored`] numbers)
//! - [`targeted`], [`sf`]: `Ringcache-Cache-Control` / `CDN-Cache-Control`
//!   (RFC 9213) over a strict RFC 8941 dictionary parser
//! - [`reuse`]: on a hit, Fresh / stale variants / revalidate / 504
//! - [`validation`]: conditional requests to the origin, 304 merging,
//!   client preconditions answered from cache
//! - [`vary`], [`invalidation`], [`range`], [`cache_status`]: secondary
//!   keys, invalidation after writes, byte ranges, `Cache-Status`
//! - [`policy`]: the operator's switches; [`sink`]: where writers write
//! - [`error`]: [`ParseError`], one status code per variant

pub mod cache_control;
pub mod cache_status;
pub mod chunked;
pub mod date;
pub mod error;
pub mod framing;
pub mod freshness;
pub mod headers;
pub mod invalidation;
pub mod policy;
#[cfg(test)]
mod proptests;
pub mod range;
pub mod request;
pub mod response;
pub mod reuse;
pub mod sf;
pub mod sink;
pub mod targeted;
pub mod validation;
pub mod vary;

pub use cache_control::CacheControl;
pub use chunked::{ChunkedDecoder, ChunkedError};
pub use date::{format_http_date, parse_http_date};
pub use error::ParseError;
pub use freshness::{storable, Storable};
pub use request::{parse_request, BodyFraming, Method, Parsed, RequestHead, RequestLimits};
pub use response::{parse_response, ResponseFraming, ResponseHead};
