//! Content digests (`sha256:HEX`, `sha512:HEX`) and a reader that checks one while it reads.
//!
//! A digest names a blob's file (`blobs/ALG/HEX`), so a digest string is only accepted when its
//! algorithm is known and its hex part has the exact length and lower-case hex digits: anything
//! else could walk out of the blob directory.

use std::fmt;
use std::io::Read;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::Error;

/// The hash functions of OCI digests we can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm every OCI tool writes.
    Sha256,
    /// SHA-512, which the image spec allows.
    Sha512,
}

impl Algorithm {
    /// The name in a digest string and in the blob directory.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: `ALG:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `ALG:HEX`; the error says what is wrong with it.
    pub fn parse(s: &str) -> crate::error::Result<Digest> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| Error::new(format!("{s:?} is not a digest (expected sha256:HEX)")))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => {
                return Err(Error::new(format!(
                    "digest {s:?} uses the algorithm {alg:?}, which unionfs cannot check \
                     (sha256 and sha512 only)"
                )))
            }
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(Error::new(format!(
                "digest {s:?} is malformed: {alg} needs {} lower-case hex digits",
                algorithm.hex_len()
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The digest of `data`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The hash function.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A file name for it: `ALG-HEX` (no ':', which `lowerdir=` lists would split on).
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.algorithm.name(), self.hex)
    }

    /// Parses a name made by [`Digest::file_name`].
    pub fn from_file_name(name: &str) -> Option<Digest> {
        let (alg, hex) = name.split_once('-')?;
        Digest::parse(&format!("{alg}:{hex}")).ok()
    }

    /// The first 12 hex digits, as listings show it.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// A running hash of either algorithm.
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(a: Algorithm) -> Hasher {
        match a {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Digest {
        let (algorithm, bytes): (Algorithm, Vec<u8>) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Digest { algorithm, hex }
    }
}

/// Why a stream did not match what its descriptor says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Fewer bytes than the declared size.
    Short {
        /// Bytes read.
        got: u64,
        /// Bytes declared.
        want: u64,
    },
    /// More bytes than the declared size.
    Long {
        /// Bytes declared.
        want: u64,
    },
    /// The content hashes to another digest.
    Digest {
        /// What the content hashes to.
        got: Digest,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Short { got, want } => {
                write!(f, "is truncated: {got} bytes where {want} were declared")
            }
            Mismatch::Long { want } => write!(f, "is longer than the {want} bytes declared"),
            Mismatch::Digest { got } => {
                write!(f, "does not match its digest (its content is {got})")
            }
        }
    }
}

/// A reader that hashes (and counts) everything read through it; [`Verify::finish`] reads
/// the rest and compares with the expected digest and size.
pub struct Verify<R> {
    inner: R,
    hasher: Option<Hasher>,
    want: Digest,
    size: Option<u64>,
    read: u64,
}

impl<R: Read> Verify<R> {
    /// Checks `inner` against `want` and, when given, the size `size`.
    pub fn new(inner: R, want: &Digest, size: Option<u64>) -> Verify<R> {
        Verify {
            inner,
            hasher: Some(Hasher::new(want.algorithm())),
            want: want.clone(),
            size,
            read: 0,
        }
    }

    /// Reads what is left, then says whether the whole stream was what was declared.
    pub fn finish(mut self) -> std::io::Result<Result<(), Mismatch>> {
        let drained = std::io::copy(&mut self, &mut std::io::sink());
        if let Some(want) = self.size {
            if self.read > want {
                return Ok(Err(Mismatch::Long { want }));
            }
        }
        drained?;
        if let Some(want) = self.size {
            if self.read < want {
                return Ok(Err(Mismatch::Short {
                    got: self.read,
                    want,
                }));
            }
        }
        let got = match self.hasher.take() {
            Some(h) => h.finish(),
            None => {
                return Ok(Err(Mismatch::Long {
                    want: self.size.unwrap_or(0),
                }))
            }
        };
        Ok(if got == self.want {
            Ok(())
        } else {
            Err(Mismatch::Digest { got })
        })
    }
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.size.is_some_and(|s| self.read > s) {
            // Past the declared size the content cannot be the declared blob, whatever it
            // hashes to; stop feeding the tar reader more of it.
            self.hasher = None;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the blob is longer than its declared size",
            ));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_accepts_only_well_formed_digests() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of(Algorithm::Sha256, b""), d);
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d.clone()));
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let s512 = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(&s512.to_string()).unwrap(), s512);
    }

    #[test]
    fn verify_reports_short_long_and_wrong_content() {
        let want = Digest::of(Algorithm::Sha256, b"hello");
        let ok = Verify::new(&b"hello"[..], &want, Some(5));
        assert_eq!(ok.finish().unwrap(), Ok(()));
        let short = Verify::new(&b"hell"[..], &want, Some(5));
        assert_eq!(
            short.finish().unwrap(),
            Err(Mismatch::Short { got: 4, want: 5 })
        );
        let long = Verify::new(&b"hello!"[..], &want, Some(5));
        assert_eq!(long.finish().unwrap(), Err(Mismatch::Long { want: 5 }));
        let wrong = Verify::new(&b"jello"[..], &want, Some(5));
        assert!(matches!(
            wrong.finish().unwrap(),
            Err(Mismatch::Digest { .. })
        ));
        // Without a size (a diff id), only the content counts.
        let nosize = Verify::new(&b"hello"[..], &want, None);
        assert_eq!(nosize.finish().unwrap(), Ok(()));
    }
}
