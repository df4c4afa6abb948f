//! Why a message head was refused, and what the client is told.
//!
//! Each variant maps to one status code; `detail` is a short, stable token
//! for logs and the `Cache-Status` detail parameter.

/// A message head that ringcache will not process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The head did not fit in `head_bytes_max`.
    HeadTooLarge,
    /// More field lines than `headers_count_max`.
    TooManyHeaders,
    /// A well-formed `HTTP/x.y` version other than 1.0 and 1.1.
    VersionNotSupported,
    /// `Content-Length` above `body_bytes_max`.
    BodyTooLarge,
    /// Valid HTTP that ringcache does not implement (e.g. a transfer coding
    /// other than `chunked`).
    NotImplemented(&'static str),
    /// Invalid syntax or ambiguous framing.
    Malformed(&'static str),
}

impl ParseError {
    /// The status code to answer with.
    pub fn status(self) -> u16 {
        match self {
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => 431,
            ParseError::VersionNotSupported => 505,
            ParseError::BodyTooLarge => 413,
            ParseError::NotImplemented(_) => 501,
            ParseError::Malformed(_) => 400,
        }
    }

    /// A short reason, e.g. `"te-and-content-length"`.
    pub fn detail(self) -> &'static str {
        match self {
            ParseError::HeadTooLarge => "head-too-large",
            ParseError::TooManyHeaders => "too-many-headers",
            ParseError::VersionNotSupported => "version-not-supported",
            ParseError::BodyTooLarge => "body-too-large",
            ParseError::NotImplemented(d) | ParseError::Malformed(d) => d,
        }
    }

    /// Map an httparse error that needs no further inspection.
    pub(crate) fn from_httparse(e: httparse::Error) -> ParseError {
        match e {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            httparse::Error::HeaderName => ParseError::Malformed("invalid-field-name"),
            httparse::Error::HeaderValue => ParseError::Malformed("invalid-field-value"),
            httparse::Error::NewLine => ParseError::Malformed("invalid-line-ending"),
            httparse::Error::Status => ParseError::Malformed("invalid-status-line"),
            httparse::Error::Token => ParseError::Malformed("invalid-request-line"),
            httparse::Error::Version => ParseError::Malformed("invalid-version"),
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail(), self.status())
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(ParseError::HeadTooLarge.status(), 431);
        assert_eq!(ParseError::TooManyHeaders.status(), 431);
        assert_eq!(ParseError::VersionNotSupported.status(), 505);
        assert_eq!(ParseError::BodyTooLarge.status(), 413);
        assert_eq!(ParseError::NotImplemented("x").status(), 501);
        assert_eq!(ParseError::Malformed("x").status(), 400);
    }

    #[test]
    fn details() {
        assert_eq!(ParseError::HeadTooLarge.detail(), "head-too-large");
        assert_eq!(
            ParseError::Malformed("te-and-content-length").detail(),
            "te-and-content-length"
        );
        assert_eq!(
            ParseError::NotImplemented("te-coding").detail(),
            "te-coding"
        );
        assert_eq!(
            ParseError::from_httparse(httparse::Error::TooManyHeaders),
            ParseError::TooManyHeaders
        );
    }
}
