//! Disk sizes as users write them: `8G`, `8GiB`, `3584M`, `10737418240`.
//! Suffixes are binary (like qemu-img): K/M/G/T = KiB/MiB/GiB/TiB.

/// Parse `s` into bytes, rounded up to a whole MiB (partition alignment). The error
/// says what is wrong with it.
pub fn parse(s: &str) -> Result<u64, String> {
    let bad = |m: &str| format!("invalid disk size {s:?}: {m}");
    let t = s.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(bad("expected a number with an optional K, M, G or T suffix"));
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad("number too large"))?;
    let shift = match t[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("unknown suffix (use K, M, G or T)")),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("must be positive"));
    }
    let bytes = bytes.div_ceil(1 << 20).checked_mul(1 << 20).ok_or_else(|| bad("too large"))?;
    if bytes > MAX_BYTES {
        return Err(bad("larger than 2 PiB, the most a qcow2 image qemu opens can address"));
    }
    Ok(bytes)
}

/// The largest disk: what a qcow2 L1 table within qemu's 32 MiB limit addresses with
/// 64 KiB clusters (4 Mi entries × 8 Ki clusters × 64 KiB).
pub const MAX_BYTES: u64 = 1 << 51;

/// Human form for messages: whole GiB when exact, else MiB.
pub fn human(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes.div_ceil(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("8G").unwrap(), 8 << 30);
        assert_eq!(parse("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse("3584M").unwrap(), 3584 << 20);
        assert_eq!(parse("1").unwrap(), 1 << 20);
        assert!(parse("G").is_err());
        assert!(parse("8X").is_err());
        assert!(parse("0").is_err());
        assert!(parse("99999999999T").is_err());
        assert!(parse("2048T").is_ok() && parse("2049T").unwrap_err().contains("2 PiB"));
        assert_eq!(human(8 << 30), "8G");
        assert_eq!(human(1536 << 20), "1536M");
    }
}
