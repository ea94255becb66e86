//! Byte counts on the command line: `65536`, `4K`, `64M`, `2G`, `1T`
//! (powers of 1024; `KiB`/`MiB`/… and a trailing `B` are accepted too).

/// Parse a SIZE: a byte count, or a number followed by K, M, G or T
/// (powers of 1024, case-insensitive, optionally followed by `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size '{s}' (expected a byte count or a number with K, M, G or T, e.g. 64M)"
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// [`parse_size`] for values stored as `u32` (block and log sizes).
pub fn parse_size_u32(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n).map_err(|_| format!("size '{s}' is too large (at most 4G - 1)"))
}

/// A sector size: 512 or 4096.
pub fn parse_sector_size(s: &str) -> Result<u32, String> {
    match parse_size(s)? {
        512 => Ok(512),
        4096 => Ok(4096),
        _ => Err(format!("invalid sector size '{s}' (must be 512 or 4096)")),
    }
}

/// `bytes` for people: "64 MiB", "1.5 GiB", "512 bytes" (the library's
/// [`ckpt::monitor::human_bytes`]).
pub fn human(bytes: u64) -> String {
    ckpt::monitor::human_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("512B"), Ok(512));
        for bad in [
            "",
            "M",
            "12X",
            "-1",
            "1.5G",
            "1 G",
            "0x10",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("17000000T").is_err());
        assert!(parse_size_u32("4G").is_err());
        assert_eq!(parse_size_u32("256M"), Ok(256 << 20));
        assert_eq!(parse_sector_size("4K"), Ok(4096));
        assert!(parse_sector_size("1024").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
