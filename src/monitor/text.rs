//! Text for people in monitoring output: durations ("3d 2h"), byte counts
//! ("1.5 GiB"), and names made safe for one line of plugin output.

/// `secs` for people: "45s", "12m", "3h 5m", "2d 4h".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match () {
        _ if d > 0 && h > 0 => format!("{d}d {h}h"),
        _ if d > 0 => format!("{d}d"),
        _ if h > 0 && m > 0 => format!("{h}h {m}m"),
        _ if h > 0 => format!("{h}h"),
        _ if m > 0 => format!("{m}m"),
        _ => format!("{secs}s"),
    }
}

/// `bytes` for people: "64 MiB", "1.5 GiB", "512 bytes".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut unit = 0;
    let mut scale = 1024u64;
    while unit + 1 < UNITS.len() && bytes >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// `s` for one line of plugin output: control characters and line
/// separators written as escapes (`\n`), and `|` (which starts the
/// performance data) as `/`.
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '|' {
            out.push('/');
        } else if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_people() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(3600 + 300), "1h 5m");
        assert_eq!(human_duration(3 * 86_400 + 7200), "3d 2h");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(one_line("a|b\nc"), "a/b\\nc");
    }
}
