//! Body compression, wire-compatible with kombu's `kombu.compression`.
//!
//! A producer serializes the body first, then compresses it, and names the method in the
//! message's `compression` header. The header carries the method's **MIME type**
//! (`application/x-gzip`), never the alias (`zlib`); both are accepted when decoding, as
//! kombu does. The content type and content encoding of the message stay the serializer's.
//!
//! | Names | MIME type (header value) | Codec | Cargo feature |
//! |---|---|---|---|
//! | `zlib`, `gzip` | `application/x-gzip` | a zlib stream, as Python's `zlib.compress` makes (not the gzip file format) | `zlib` (default) |
//! | `bzip2`, `bzip` | `application/x-bz2` | bzip2 (concatenated streams accepted) | `bzip2` |
//! | `lzma`, `xz` | `application/x-lzma` | the xz container, as Python's `lzma.compress` makes; decoding also takes legacy `.lzma` | `lzma` |
//! | `brotli` | `application/x-brotli` | brotli | `brotli` |
//! | `zstd`, `zstandard` | `application/zstd` | a zstd frame with its content size | `zstd` |
//!
//! [`compress`] uses kombu's (that is, Python's) default levels: zlib 6, bzip2 9, xz preset 6,
//! brotli quality 11 with a 4 MiB window, zstd 3. Brotli at quality 11 is slow on large
//! bodies; that is what kombu sends too.
//!
//! [`decompress`] is bounded: it inflates in chunks and stops with
//! [`Error::DecompressedTooLarge`] as soon as the output would pass the caller's limit, so a
//! small body that inflates to gigabytes (a compression bomb) costs at most the limit plus one
//! chunk of memory. xz streams are further limited to 256 MiB of decoder memory (xz's
//! dictionary is chosen by the sender; kombu's default preset needs 9 MiB).
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "zlib")] {
//! use lepus_messaging::compression;
//!
//! let (body, mime) = compression::compress("zlib", b"hello hello hello").unwrap();
//! assert_eq!(mime, "application/x-gzip");
//! let plain = compression::decompress(mime, &body, 1 << 20).unwrap();
//! assert_eq!(plain, b"hello hello hello");
//! # }
//! ```

use std::io::Read;

use crate::{BoxError, Error, Result};

/// Compresses `body` with a method given by name (`zlib`) or MIME type
/// (`application/x-gzip`), and returns the compressed body with the MIME type to put in the
/// message's `compression` header.
///
/// # Errors
///
/// [`Error::CompressionNotInstalled`] if the method is unknown or its cargo feature is off;
/// [`Error::Compression`] if the codec fails.
pub fn compress(method: &str, body: &[u8]) -> Result<(Vec<u8>, &'static str)> {
    let entry = lookup(method).ok_or_else(|| Error::CompressionNotInstalled(method.to_owned()))?;
    let out = compress_with(entry.codec, body).map_err(|source| Error::Compression {
        operation: "compress",
        method: entry.mime.to_owned(),
        source,
    })?;
    Ok((out, entry.mime))
}

/// Decompresses `body` with a method given by name or MIME type (the value of a message's
/// `compression` header), refusing to produce more than `limit` bytes.
///
/// The output grows chunk by chunk and never beyond `limit` bytes of capacity (plus one
/// 64 KiB read buffer), whatever the body claims.
///
/// # Errors
///
/// [`Error::CompressionNotInstalled`] if the method is unknown or its cargo feature is off;
/// [`Error::DecompressedTooLarge`] once the output would exceed `limit`;
/// [`Error::Compression`] if the body is not a valid stream of that method.
pub fn decompress(method: &str, body: &[u8], limit: usize) -> Result<Vec<u8>> {
    let entry = lookup(method).ok_or_else(|| Error::CompressionNotInstalled(method.to_owned()))?;
    let reader = decoder(entry.codec, body).map_err(|source| Error::Compression {
        operation: "decompress",
        method: entry.mime.to_owned(),
        source,
    })?;
    read_bounded(reader, limit, body.len()).map_err(|e| match e {
        Bounded::TooLarge => Error::DecompressedTooLarge {
            method: entry.mime.to_owned(),
            limit,
        },
        Bounded::Io(e) => Error::Compression {
            operation: "decompress",
            method: entry.mime.to_owned(),
            source: Box::new(e),
        },
    })
}

/// Resolves a method's name or MIME type to its MIME type, if that method is compiled in.
///
/// ```
/// # #[cfg(feature = "zlib")]
/// assert_eq!(lepus_messaging::compression::resolve("gzip"), Some("application/x-gzip"));
/// assert_eq!(lepus_messaging::compression::resolve("snappy"), None);
/// ```
pub fn resolve(method: &str) -> Option<&'static str> {
    lookup(method).map(|entry| entry.mime)
}

/// The compiled-in methods, as `(name, MIME type)` pairs: `("zlib", "application/x-gzip")`,
/// `("bzip2", "application/x-bz2")`, `("lzma", "application/x-lzma")`,
/// `("brotli", "application/x-brotli")`, `("zstd", "application/zstd")`, each present when
/// its cargo feature is on.
pub fn methods() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE
        .iter()
        .filter(|entry| entry.compiled)
        .map(|entry| (entry.name, entry.mime))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Zlib,
    Bzip2,
    Lzma,
    Brotli,
    Zstd,
}

struct Entry {
    name: &'static str,
    alias: &'static str,
    mime: &'static str,
    codec: Codec,
    compiled: bool,
}

/// kombu's registry (`kombu/compression.py`), in its registration order.
const TABLE: [Entry; 5] = [
    Entry {
        name: "zlib",
        alias: "gzip",
        mime: "application/x-gzip",
        codec: Codec::Zlib,
        compiled: cfg!(feature = "zlib"),
    },
    Entry {
        name: "bzip2",
        alias: "bzip",
        mime: "application/x-bz2",
        codec: Codec::Bzip2,
        compiled: cfg!(feature = "bzip2"),
    },
    Entry {
        name: "lzma",
        alias: "xz",
        mime: "application/x-lzma",
        codec: Codec::Lzma,
        compiled: cfg!(feature = "lzma"),
    },
    Entry {
        name: "brotli",
        alias: "brotli",
        mime: "application/x-brotli",
        codec: Codec::Brotli,
        compiled: cfg!(feature = "brotli"),
    },
    Entry {
        name: "zstd",
        alias: "zstandard",
        mime: "application/zstd",
        codec: Codec::Zstd,
        compiled: cfg!(feature = "zstd"),
    },
];

/// The size of one read from a decoder, and so the most [`decompress`] can overshoot its limit
/// by in transient memory.
const CHUNK: usize = 64 * 1024;

/// The most memory an xz decoder may use (its dictionary is the sender's choice).
#[cfg(feature = "lzma")]
const XZ_MEMLIMIT: u64 = 256 * 1024 * 1024;

fn lookup(method: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|entry| {
        entry.compiled && (entry.mime == method || entry.name == method || entry.alias == method)
    })
}

#[allow(unreachable_patterns, unused_variables)] // the arms present depend on the features
fn compress_with(codec: Codec, body: &[u8]) -> Result<Vec<u8>, BoxError> {
    #[cfg(any(
        feature = "zlib",
        feature = "bzip2",
        feature = "lzma",
        feature = "brotli"
    ))]
    use std::io::Write;
    match codec {
        #[cfg(feature = "zlib")]
        Codec::Zlib => {
            // Python's zlib.compress: level -1, which zlib maps to 6.
            let mut enc = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(body.len() / 2 + 64),
                flate2::Compression::new(6),
            );
            enc.write_all(body)?;
            Ok(enc.finish()?)
        }
        #[cfg(feature = "bzip2")]
        Codec::Bzip2 => {
            // Python's bz2.compress: compresslevel 9.
            let mut enc = bzip2::write::BzEncoder::new(
                Vec::with_capacity(body.len() / 2 + 64),
                bzip2::Compression::new(9),
            );
            enc.write_all(body)?;
            Ok(enc.finish()?)
        }
        #[cfg(feature = "lzma")]
        Codec::Lzma => {
            // Python's lzma.compress: FORMAT_XZ, CHECK_CRC64, preset 6 (= xz's easy encoder).
            let mut enc =
                liblzma::write::XzEncoder::new(Vec::with_capacity(body.len() / 2 + 64), 6);
            enc.write_all(body)?;
            Ok(enc.finish()?)
        }
        #[cfg(feature = "brotli")]
        Codec::Brotli => {
            // Python's brotli.compress: quality 11, lgwin 22, generic mode.
            let mut enc = brotli::CompressorWriter::new(
                Vec::with_capacity(body.len() / 2 + 64),
                4096,
                11,
                22,
            );
            enc.write_all(body)?;
            enc.flush()?;
            Ok(enc.into_inner())
        }
        #[cfg(feature = "zstd")]
        Codec::Zstd => {
            // Python's zstd.compress: level 3; the one-shot API records the content size in
            // the frame header, which the older `zstandard` package needs to decompress.
            Ok(zstd::bulk::compress(body, 3)?)
        }
        _ => Err("compression method not compiled in".into()),
    }
}

#[allow(unreachable_patterns, unused_variables)] // the arms present depend on the features
fn decoder<'a>(codec: Codec, body: &'a [u8]) -> Result<Box<dyn Read + 'a>, BoxError> {
    match codec {
        #[cfg(feature = "zlib")]
        Codec::Zlib => Ok(Box::new(flate2::read::ZlibDecoder::new(body))),
        #[cfg(feature = "bzip2")]
        Codec::Bzip2 => Ok(Box::new(bzip2::read::MultiBzDecoder::new(body))),
        #[cfg(feature = "lzma")]
        Codec::Lzma => {
            // Python's lzma.decompress: FORMAT_AUTO (xz or legacy .lzma), all concatenated
            // streams.
            let stream = liblzma::stream::Stream::new_auto_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )?;
            Ok(Box::new(liblzma::read::XzDecoder::new_stream(body, stream)))
        }
        #[cfg(feature = "brotli")]
        Codec::Brotli => Ok(Box::new(brotli::Decompressor::new(body, 4096))),
        #[cfg(feature = "zstd")]
        Codec::Zstd => Ok(Box::new(zstd::stream::read::Decoder::new(body)?)),
        _ => Err("compression method not compiled in".into()),
    }
}

#[derive(Debug)]
enum Bounded {
    TooLarge,
    Io(std::io::Error),
}

/// Reads `reader` to its end into a vector of at most `limit` bytes, growing the vector
/// geometrically but never past `limit`.
fn read_bounded(mut reader: impl Read, limit: usize, size_hint: usize) -> Result<Vec<u8>, Bounded> {
    // A first guess at the output size, bounded so that a large garbage body does not reserve
    // much up front.
    let initial = size_hint.saturating_mul(4).min(limit).min(16 * CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(initial);
    let mut chunk = vec![0_u8; CHUNK.min(limit.saturating_add(1))];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        let needed = out.len().saturating_add(n);
        if needed > limit {
            return Err(Bounded::TooLarge);
        }
        if needed > out.capacity() {
            let target = out.capacity().saturating_mul(2).max(needed).min(limit);
            out.reserve_exact(target - out.len());
        }
        let read = chunk.get(..n).ok_or_else(|| {
            Bounded::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the decoder reported more bytes than it was given room for",
            ))
        })?;
        out.extend_from_slice(read);
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    // Generated by kombu 5.7 on Python 3.11 (brotli 1.2.1, backports.zstd 1.8.0):
    // `kombu.compression.compress(PLAIN, alias)`.
    const PLAIN: &[u8] = b"{\"hello\": \"kombu\", \"n\": [1, 2, 3]} {\"hello\": \"kombu\", \"n\": [1, 2, 3]} {\"hello\": \"kombu\", \"n\": [1, 2, 3]} {\"hello\": \"kombu\", \"n\": [1, 2, 3]} ";
    #[cfg(feature = "zlib")]
    const ZLIB_FIXTURE: &[u8] = b"x\x9c\xabV\xcaH\xcd\xc9\xc9W\xb2RP\xca\xce\xcfM*U\xd2QP\xca\x03\xf2\xa2\x0du\x14\x8ct\x14\x8cck\x15\xaa\xe9\xa5\x04\x00\xa0\x9a%\xa9";
    #[cfg(feature = "bzip2")]
    const BZIP2_FIXTURE: &[u8] = b"BZh91AY&SYQ\xa0\xdaP\x00\x00C\x9b\x80P\x048\x10\x00\x0a\x12O\x82\x0a \x00P\xa6\x13M\x01\xa6 USL\x83FC57&i\"\x0c\x992A\xc0\xe4\xa9\xd1b\x82\x82E\x880P`\x82\xc4\xcdH \xa9\x07\xe2\xeeH\xa7\x0a\x12\x0a4\x1bJ\x00";
    #[cfg(feature = "lzma")]
    const LZMA_FIXTURE: &[u8] = b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4F\x02\x00!\x01\x16\x00\x00\x00t/\xe5\xa3\xe0\x00\x8b\x00(]\x00=\x88\x89\x06\x94\"\xbb\xda\x03>\xdcn\xf7qa\x8c\xd4\xbb\xda\xd31|\xddi\xd1\x94\xa9\xd5B,\xc8\xb3\x7f\xfbE\x16\x05U\x80\x00\x00\x07a\xf8b\x8b\xf5U\x82\x00\x01D\x8c\x01\x00\x00\x00Q\xa66\x9b\xb1\xc4g\xfb\x02\x00\x00\x00\x00\x04YZ";
    #[cfg(feature = "brotli")]
    const BROTLI_FIXTURE: &[u8] = b"\x1b\x8b\x00\xf8\xad\x0axs\xe0\x95\xd4Nf0\x874\"F\xbff\xd1\xe9\xda\xdb\"23[r\xcd\xad\xafEb\xda\xde\x06H\x89\xd5\xd5$\x19\x96\x0c\xc9\xb8\xaf\x86\xf0\x09\xe9\xa8\x0d";
    #[cfg(feature = "zstd")]
    const ZSTD_FIXTURE: &[u8] =
        b"(\xb5/\xfd \x8c]\x01\x004\x02{\"hello\": \"kombu\", \"n\": [1, 2, 3]} \x01\x003&UO";

    const LIMIT: usize = 1 << 20;

    fn fixtures() -> Vec<(&'static str, &'static str, &'static [u8])> {
        vec![
            #[cfg(feature = "zlib")]
            ("zlib", "application/x-gzip", ZLIB_FIXTURE),
            #[cfg(feature = "bzip2")]
            ("bzip2", "application/x-bz2", BZIP2_FIXTURE),
            #[cfg(feature = "lzma")]
            ("lzma", "application/x-lzma", LZMA_FIXTURE),
            #[cfg(feature = "brotli")]
            ("brotli", "application/x-brotli", BROTLI_FIXTURE),
            #[cfg(feature = "zstd")]
            ("zstd", "application/zstd", ZSTD_FIXTURE),
        ]
    }

    #[test]
    fn decodes_kombu_fixtures_by_name_and_mime() {
        for (name, mime, body) in fixtures() {
            assert_eq!(decompress(name, body, LIMIT).unwrap(), PLAIN, "{name}");
            assert_eq!(decompress(mime, body, LIMIT).unwrap(), PLAIN, "{mime}");
            // Exactly at the limit is fine; one byte less is not.
            assert_eq!(
                decompress(mime, body, PLAIN.len()).unwrap(),
                PLAIN,
                "{mime}"
            );
            assert!(
                matches!(
                    decompress(mime, body, PLAIN.len() - 1),
                    Err(Error::DecompressedTooLarge { ref method, limit }) if method == mime && limit == PLAIN.len() - 1
                ),
                "{mime}"
            );
        }
    }

    #[test]
    fn round_trips_every_method() {
        let big: Vec<u8> = (0..200_000_u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (name, mime) in methods() {
            for body in [&b""[..], &b"x"[..], PLAIN, &big] {
                let (packed, got_mime) = compress(name, body).unwrap();
                assert_eq!(got_mime, mime);
                assert_eq!(
                    decompress(mime, &packed, body.len()).unwrap(),
                    body,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn aliases_resolve_as_kombu() {
        let expected = [
            ("zlib", "application/x-gzip", cfg!(feature = "zlib")),
            ("gzip", "application/x-gzip", cfg!(feature = "zlib")),
            ("bzip2", "application/x-bz2", cfg!(feature = "bzip2")),
            ("bzip", "application/x-bz2", cfg!(feature = "bzip2")),
            ("lzma", "application/x-lzma", cfg!(feature = "lzma")),
            ("xz", "application/x-lzma", cfg!(feature = "lzma")),
            ("brotli", "application/x-brotli", cfg!(feature = "brotli")),
            ("zstd", "application/zstd", cfg!(feature = "zstd")),
            ("zstandard", "application/zstd", cfg!(feature = "zstd")),
        ];
        for (alias, mime, on) in expected {
            assert_eq!(resolve(alias), on.then_some(mime), "{alias}");
            assert_eq!(resolve(mime), on.then_some(mime), "{mime}");
        }
        assert_eq!(resolve("snappy"), None);
        assert!(
            matches!(compress("snappy", b"x"), Err(Error::CompressionNotInstalled(m)) if m == "snappy")
        );
        assert!(matches!(
            decompress("snappy", b"x", 10),
            Err(Error::CompressionNotInstalled(_))
        ));
        let mut compiled: Vec<&str> = expected.iter().filter(|e| e.2).map(|e| e.1).collect();
        compiled.dedup();
        assert_eq!(methods().map(|m| m.1).collect::<Vec<_>>(), compiled);
    }

    #[test]
    fn garbage_is_a_compression_error() {
        for (name, mime) in methods() {
            let err = decompress(name, b"this is not compressed at all", LIMIT).unwrap_err();
            assert!(
                matches!(&err, Error::Compression { operation: "decompress", method, .. } if method == mime),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn bounded_reader_never_grows_past_the_limit() {
        // An endless stream of zeros: refused after reading just over the limit.
        let err = read_bounded(std::io::repeat(0), LIMIT, 10).unwrap_err();
        assert!(matches!(err, Bounded::TooLarge));
        // Exactly `limit` bytes: accepted, with no capacity beyond the limit.
        let out = read_bounded(std::io::repeat(7).take(LIMIT as u64), LIMIT, 10).unwrap();
        assert_eq!(out.len(), LIMIT);
        assert!(out.capacity() <= LIMIT, "{}", out.capacity());
        // A zero limit accepts only the empty stream.
        assert!(read_bounded(&b""[..], 0, 0).unwrap().is_empty());
        assert!(matches!(
            read_bounded(&b"x"[..], 0, 0),
            Err(Bounded::TooLarge)
        ));
    }

    /// Concatenates `copies` copies of one compressed frame of 1 MiB of zeros: formats whose
    /// decoders read concatenated streams (bzip2, xz, zstd) inflate that to `copies` MiB.
    #[cfg(any(feature = "bzip2", feature = "lzma", feature = "zstd"))]
    fn concatenated_bomb(method: &str, copies: usize) -> Vec<u8> {
        let (frame, _) = compress(method, &vec![0_u8; 1 << 20]).unwrap();
        frame.repeat(copies)
    }

    /// A zlib stream that inflates to `mib` MiB of zeros without compressing that much: after a
    /// full flush, deflate blocks stand alone, so one flushed block of 1 MiB of zeros can be
    /// repeated. The stream is never finished; the limit must stop the reader first.
    #[cfg(feature = "zlib")]
    fn zlib_bomb(mib: usize) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let zeros = vec![0_u8; 1 << 20];
        let mut c = Compress::new(Compression::new(9), true);
        let mut first = Vec::with_capacity(1 << 16);
        c.compress_vec(&zeros, &mut first, FlushCompress::Full)
            .unwrap();
        let mut block = Vec::with_capacity(1 << 16);
        c.compress_vec(&zeros, &mut block, FlushCompress::Full)
            .unwrap();
        assert!(c.total_in() == 2 << 20, "the encoder took all the input");
        let mut out = first;
        for _ in 1..mib {
            out.extend_from_slice(&block);
        }
        out
    }

    /// Brotli has no concatenation: 16 MiB of zeros at the fastest quality.
    #[cfg(feature = "brotli")]
    fn brotli_bomb() -> Vec<u8> {
        use std::io::Write;
        let mut enc = brotli::CompressorWriter::new(Vec::new(), 4096, 0, 22);
        let zeros = vec![0_u8; 1 << 20];
        for _ in 0..16 {
            enc.write_all(&zeros).unwrap();
        }
        enc.flush().unwrap();
        enc.into_inner()
    }

    #[test]
    fn compression_bombs_are_refused_at_the_limit() {
        let started = std::time::Instant::now();
        let bombs: Vec<(&str, Vec<u8>)> = vec![
            // Each of these inflates to 1 GiB.
            #[cfg(feature = "zlib")]
            ("zlib", zlib_bomb(1024)),
            #[cfg(feature = "bzip2")]
            ("bzip2", concatenated_bomb("bzip2", 1024)),
            #[cfg(feature = "lzma")]
            ("lzma", concatenated_bomb("lzma", 1024)),
            #[cfg(feature = "zstd")]
            ("zstd", concatenated_bomb("zstd", 1024)),
            #[cfg(feature = "brotli")]
            ("brotli", brotli_bomb()),
        ];
        for (name, bomb) in &bombs {
            // deflate cannot do better than about 1:1032, so the zlib one is about 1 MiB.
            assert!(
                bomb.len() < 2 * LIMIT,
                "{name} bomb is {} bytes",
                bomb.len()
            );
            let err = decompress(name, bomb, LIMIT).unwrap_err();
            assert!(
                matches!(err, Error::DecompressedTooLarge { limit: LIMIT, .. }),
                "{name}: {err:?}"
            );
        }
        // Sanity check of the generators: below the limit, the bombs do inflate.
        #[cfg(feature = "zlib")]
        {
            let err = decompress("zlib", &zlib_bomb(3), 2 << 20).unwrap_err();
            assert!(matches!(err, Error::DecompressedTooLarge { .. }), "{err:?}");
        }
        #[cfg(feature = "zstd")]
        assert_eq!(
            decompress("zstd", &concatenated_bomb("zstd", 3), 3 << 20)
                .unwrap()
                .len(),
            3 << 20
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }
}
