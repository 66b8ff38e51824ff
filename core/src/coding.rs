//! What a response's `Content-Encoding` says about its body (RFC 9110
//! section 8.4): which decoding turns the bytes as sent (the ones hashed and
//! verified) into the representation a user wants written to a file.

/// How a body was encoded, as far as a reader of it cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coding {
    /// No coding (no header, empty, or `identity`): the bytes are the file.
    Identity,
    /// `gzip` (or its old name `x-gzip`).
    Gzip,
    /// `deflate`: the zlib format (RFC 1950), as HTTP defines it.
    Deflate,
    /// A coding without a decoder here (`br`, `zstd`, several codings in a
    /// row, or an unknown name): the value as sent, lowercased.
    Other(String),
}

/// The coding named by a `Content-Encoding` value (`None`: no header).
pub fn content_coding(value: Option<&str>) -> Coding {
    let Some(value) = value else {
        return Coding::Identity;
    };
    let codings: Vec<String> = value
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Coding::Identity,
        [one] if one == "gzip" || one == "x-gzip" => Coding::Gzip,
        [one] if one == "deflate" => Coding::Deflate,
        _ => Coding::Other(codings.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings_are_read_as_the_rfc_names_them() {
        assert_eq!(content_coding(None), Coding::Identity);
        assert_eq!(content_coding(Some("")), Coding::Identity);
        assert_eq!(content_coding(Some("identity")), Coding::Identity);
        assert_eq!(content_coding(Some("GZip")), Coding::Gzip);
        assert_eq!(content_coding(Some(" x-gzip ")), Coding::Gzip);
        assert_eq!(content_coding(Some("identity, gzip")), Coding::Gzip);
        assert_eq!(content_coding(Some("deflate")), Coding::Deflate);
        assert_eq!(content_coding(Some("br")), Coding::Other("br".into()));
        // Two codings applied in turn: not decoded here.
        assert_eq!(
            content_coding(Some("gzip, br")),
            Coding::Other("gzip, br".into())
        );
    }
}
