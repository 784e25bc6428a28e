//! Byte sizes as people write them (`64M`, `1g`, `4096`), for the mount options and the
//! launcher's limits alike.

/// The bytes `s` stands for: a number, or one with K, M, G or T (powers of 1024) or B. The
/// error says what is wrong with it, for the caller to put after the text it names.
pub fn parse(s: &str) -> Result<u64, &'static str> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("a size cannot be negative, e.g. 64M or 1G");
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err("unknown size suffix, use K, M, G or T"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "not a size: write e.g. 64M or 1073741824")?;
    n.checked_mul(mult).ok_or("too large for 64 bits")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn suffixes_zero_and_bad_sizes() {
        assert_eq!(parse("64M"), Ok(64 << 20));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse(" 4096 "), Ok(4096));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("2T"), Ok(2 << 40));
        for bad in ["12Q", "M", "-5M", "", "99999999999G", "1.5M"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
