//! Turning a verified body as the site sent it into the file a user asked
//! for: `fetch -o FILE` of a body with `Content-Encoding: gzip` (or
//! `deflate`) writes the decoded bytes, as a browser saving it would. The
//! bytes are verified against the hash as sent; decoding comes after and
//! streams (bounded memory whatever the ratio), into a temp file renamed only
//! when the whole body decoded.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use peercache_core::coding::Coding;

/// Why a body did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid for their coding (the site's fault: they were
    /// verified as the site sent them).
    #[error("the body is marked {coding} but does not decode: {source}")]
    Invalid {
        /// The coding named by the site.
        coding: &'static str,
        /// What the decoder said.
        source: std::io::Error,
    },
    /// Reading or writing the files failed.
    #[error("decoding into {path}: {source}")]
    Disk {
        /// The file being written.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Decodes `encoded` (whose coding is `coding`, Gzip or Deflate) into
/// `decoded`, synced. Returns the decoded length. Blocking.
pub fn decode_file(coding: &Coding, encoded: &Path, decoded: &Path) -> Result<u64, DecodeError> {
    let disk = |source| DecodeError::Disk {
        path: decoded.display().to_string(),
        source,
    };
    let input = BufReader::new(std::fs::File::open(encoded).map_err(disk)?);
    let file = std::fs::File::create(decoded).map_err(disk)?;
    let mut out = BufWriter::new(&file);
    let (name, copied) = match coding {
        Coding::Gzip => (
            "gzip",
            copy(&mut flate2::read::MultiGzDecoder::new(input), &mut out),
        ),
        Coding::Deflate => (
            "deflate",
            copy(&mut flate2::read::ZlibDecoder::new(input), &mut out),
        ),
        Coding::Identity | Coding::Other(_) => ("identity", copy(&mut { input }, &mut out)),
    };
    let n = copied.map_err(|e| match e {
        Copy::Read(source) => DecodeError::Invalid {
            coding: name,
            source,
        },
        Copy::Write(source) => disk(source),
    })?;
    out.flush().map_err(disk)?;
    drop(out);
    file.sync_all().map_err(disk)?;
    Ok(n)
}

/// Which side of a copy failed.
enum Copy {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// `std::io::copy` telling a bad input from a failing output.
fn copy(from: &mut impl std::io::Read, to: &mut impl Write) -> Result<u64, Copy> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(Copy::Write)?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pc-decode-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn gzip_and_deflate_decode_and_garbage_is_refused() {
        let d = dir("codings");
        let plain: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        std::fs::write(d.join("a.gz"), gz.finish().unwrap()).unwrap();
        let n = decode_file(&Coding::Gzip, &d.join("a.gz"), &d.join("a")).unwrap();
        assert_eq!(n, plain.len() as u64);
        assert_eq!(std::fs::read(d.join("a")).unwrap(), plain);

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&plain).unwrap();
        std::fs::write(d.join("b.z"), z.finish().unwrap()).unwrap();
        decode_file(&Coding::Deflate, &d.join("b.z"), &d.join("b")).unwrap();
        assert_eq!(std::fs::read(d.join("b")).unwrap(), plain);

        std::fs::write(d.join("c.gz"), b"not gzip at all").unwrap();
        let e = decode_file(&Coding::Gzip, &d.join("c.gz"), &d.join("c")).unwrap_err();
        assert!(
            matches!(e, DecodeError::Invalid { coding: "gzip", .. }),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
