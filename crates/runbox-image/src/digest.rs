//! `sha256:<hex>` digests and a reader that hashes what passes through it, so a layer is
//! verified in the same single pass that applies it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::ImportError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    /// 64 lowercase hex digits.
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 hex>`; other algorithms are refused rather than left unverified.
    pub(crate) fn parse(text: &str) -> Result<Digest, ImportError> {
        let unsupported = || ImportError::UnsupportedDigest {
            digest: text.to_owned(),
        };
        let hex = text.strip_prefix("sha256:").ok_or_else(unsupported)?;
        Digest::from_hex(hex).ok_or_else(unsupported)
    }

    /// A bare hex string, as in docker-save file names (`<hex>.json`, `blobs/sha256/<hex>`).
    pub(crate) fn from_hex(hex: &str) -> Option<Digest> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest {
            hex: hex.to_owned(),
        })
    }

    /// Where an OCI layout keeps this blob.
    pub(crate) fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex)
    }

    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let hex = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest { hex }
    }

    /// Errors unless `actual` is this digest.
    pub(crate) fn verify(
        &self,
        actual: &Digest,
        what: impl Into<String>,
    ) -> Result<(), ImportError> {
        if self == actual {
            Ok(())
        } else {
            Err(ImportError::DigestMismatch {
                what: what.into(),
                expected: self.to_string(),
                actual: actual.to_string(),
            })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes and counts every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (a tar reader stops at the end-of-archive blocks and a
    /// gzip decoder may leave trailing bytes) and returns the digest and byte count of all of it.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hashes() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of(b"").to_string(), empty);
        assert_eq!(Digest::parse(empty).ok(), Some(Digest::of(b"")));
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:E3B0").is_err());
        let mut r = HashingReader::new(&b"abc"[..]);
        let mut first = [0u8; 1];
        r.read_exact(&mut first).expect("read");
        let (d, n) = r.finish().expect("finish");
        assert_eq!((d, n), (Digest::of(b"abc"), 3));
    }
}
