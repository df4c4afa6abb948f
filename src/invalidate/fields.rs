//! Reading a stored response head: the status line and fields exactly as
//! the proxy stored them (`Name: value\r\n` lines, no blank line at the
//! end). Used off the hot path (bans that match fields, tag checks) and by
//! the hit path's tag-field strip, which looks at the last line only.

/// Field lines of a stored head, after the status line: `(name, value)`
/// with the value's surrounding whitespace trimmed.
pub fn fields(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], trim(&line[colon + 1..])))
    })
}

/// The value of the first field called `name` (ASCII case-insensitive).
pub fn field_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    fields(head)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Tags in a tag field value: separated by spaces, tabs and commas.
pub fn tags(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b' ' || b == b',' || b == b'\t')
        .filter(|t| !t.is_empty())
}

/// Does any `header` field of `head` carry `tag`?
pub fn has_tag(head: &[u8], header: &[u8], tag: &[u8]) -> bool {
    fields(head)
        .filter(|(n, _)| n.eq_ignore_ascii_case(header))
        .any(|(_, v)| tags(v).any(|t| t == tag))
}

/// Length of the last field line of `head` (with its CRLF) when that field
/// is called `name`, else 0. The proxy stores the tag field last so that
/// the hit path can cut it with this look at the tail alone.
#[inline]
pub fn last_field_len(head: &[u8], name: &[u8]) -> usize {
    let Some(body) = head.strip_suffix(b"\r\n") else {
        return 0;
    };
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = &body[start..];
    if start == 0
        || line.len() <= name.len()
        || line[name.len()] != b':'
        || !line[..name.len()].eq_ignore_ascii_case(name)
    {
        return 0;
    }
    head.len() - start
}

/// Gather every `name` field line of a stored head (status line, then
/// `Name: value\r\n` lines) into one line at its end, values joined by
/// ", " in order, under the name as the first line wrote it: the form the
/// store keeps the tag field in, so that [`last_field_len`] finds it.
/// Returns that line's length with its CRLF (0: no such field).
pub fn put_field_last(head: &mut Vec<u8>, name: &[u8]) -> usize {
    let line_end = |from: usize, head: &[u8]| {
        head[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(head.len(), |i| from + i + 2)
    };
    let named = |line: &[u8]| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    };
    let mut pos = line_end(0, head);
    let mut kept = Vec::with_capacity(head.len());
    kept.extend_from_slice(&head[..pos]);
    let mut field: Vec<u8> = Vec::new();
    while pos < head.len() {
        let end = line_end(pos, head);
        let line = &head[pos..end];
        if named(line) {
            let value = trim(line[name.len() + 1..].strip_suffix(b"\r\n").unwrap_or(line));
            if field.is_empty() {
                field.extend_from_slice(&line[..name.len()]);
                field.extend_from_slice(b": ");
            } else {
                field.extend_from_slice(b", ");
            }
            field.extend_from_slice(value);
        } else {
            kept.extend_from_slice(line);
        }
        pos = end;
    }
    if field.is_empty() {
        return 0;
    }
    field.extend_from_slice(b"\r\n");
    kept.extend_from_slice(&field);
    *head = kept;
    field.len()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .unwrap_or(start);
    &v[start..=end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_tags_and_the_last_line() {
        let head = b"HTTP/1.1 200 OK\r\nA: 1\r\nSurrogate-Key:  x y,z \r\n";
        assert_eq!(field_value(head, b"a"), Some(&b"1"[..]));
        assert_eq!(field_value(head, b"surrogate-key"), Some(&b"x y,z"[..]));
        assert!(has_tag(head, b"surrogate-key", b"z"));
        assert!(!has_tag(head, b"surrogate-key", b"x y"));
        assert_eq!(last_field_len(head, b"surrogate-key"), 24);
        assert_eq!(last_field_len(head, b"a"), 0);
        assert_eq!(last_field_len(b"HTTP/1.1 200 OK\r\n", b"surrogate-key"), 0);
        assert_eq!(last_field_len(b"", b"a"), 0);
    }

    #[test]
    fn field_lines_gathered_last() {
        let mut head =
            b"HTTP/1.1 200 OK\r\nSurrogate-Key: a b\r\nX: 1\r\nsurrogate-key:  c \r\nY: 2\r\n"
                .to_vec();
        let n = put_field_last(&mut head, b"surrogate-key");
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nX: 1\r\nY: 2\r\nSurrogate-Key: a b, c\r\n"
        );
        assert_eq!(n, last_field_len(&head, b"surrogate-key"));
        // Already in place: unchanged.
        let before = head.clone();
        assert_eq!(put_field_last(&mut head, b"surrogate-key"), n);
        assert_eq!(head, before);
        let mut plain = b"HTTP/1.1 200 OK\r\nX: 1\r\n".to_vec();
        assert_eq!(put_field_last(&mut plain, b"surrogate-key"), 0);
        assert_eq!(plain, b"HTTP/1.1 200 OK\r\nX: 1\r\n");
    }
}
