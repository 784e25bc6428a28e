//! The content digest of captured files: a function of the bytes only, cheap on big and sparse
//! files.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::OnceLock;

use crate::{Error, Result};
use unionfs::sys;

/// File content kept literally up to this size; larger files are compared by digest.
pub(super) const KEEP_BYTES: u64 = 64 * 1024;

/// The unit of the content digest: a block wholly inside a hole is not read.
const BLOCK: usize = 64 * 1024;

fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// Digest of one block: word by word, which keeps debug builds fast on big files.
fn block_digest(b: &[u8]) -> u64 {
    let mut h = mix(0xcbf2_9ce4_8422_2325, b.len() as u64);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        h = mix(
            h,
            u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        );
    }
    for x in words.remainder() {
        h = mix(h, *x as u64);
    }
    h
}

/// The digest of a block of zeros, which is what a block inside a hole holds.
fn zero_block_digest() -> u64 {
    static ZERO: OnceLock<u64> = OnceLock::new();
    *ZERO.get_or_init(|| block_digest(&[0u8; BLOCK]))
}

/// The digest of a content: a function of the bytes and their length only, so a sparse file
/// and a dense one with the same bytes agree (a file's holes are skipped, not read).
pub fn digest_bytes(data: &[u8]) -> u64 {
    let mut h = mix(0x100_0000_01b3, data.len() as u64);
    for (i, b) in data.chunks(BLOCK).enumerate() {
        h = mix(mix(h, i as u64), block_digest(b));
    }
    h
}

/// Digest (as [`digest_bytes`]) and, up to [`KEEP_BYTES`], the content of the open file `fd`
/// of `len` bytes. Blocks wholly inside a hole are not read.
pub(super) fn file_digest(
    fd: BorrowedFd<'_>,
    len: u64,
    path: &Path,
) -> Result<(u64, Option<Vec<u8>>)> {
    let err = |e: sys::Errno| Error::at("read", path, e.desc());
    // The data extents; a filesystem that cannot say has one extent, the whole file.
    let mut extents = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < len {
        let data = match sys::lseek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(sys::Errno::ENXIO) => break,
            Err(_) => {
                extents = vec![(pos, len as i64)];
                break;
            }
        };
        let hole = sys::lseek(fd, data, libc::SEEK_HOLE).unwrap_or(len as i64);
        extents.push((data, hole));
        pos = hole.max(data + 1);
    }
    let mut h = mix(0x100_0000_01b3, len);
    let mut buf = vec![0u8; BLOCK];
    let mut keep = (len <= KEEP_BYTES).then(Vec::new);
    let mut off = 0u64;
    let mut i = 0u64;
    while off < len {
        let n = (len - off).min(BLOCK as u64) as usize;
        let (a, b) = (off as i64, (off + n as u64) as i64);
        let in_hole = !extents.iter().any(|&(x, y)| x < b && a < y);
        let d = if in_hole && n == BLOCK && keep.is_none() {
            zero_block_digest()
        } else {
            let mut got = 0;
            while got < n {
                match sys::pread(fd, &mut buf[got..n], off + got as u64).map_err(err)? {
                    0 => break,
                    r => got += r,
                }
            }
            if let Some(k) = keep.as_mut() {
                k.extend_from_slice(&buf[..got]);
            }
            block_digest(&buf[..got])
        };
        h = mix(mix(h, i), d);
        off += n as u64;
        i += 1;
    }
    Ok((h, keep))
}
