//! HTTP/1.1 message syntax and caching decisions: pure code, bytes in,
//! structs out. No I/O, no allocation on the request path.
