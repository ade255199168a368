//! Byte sizes on the command line: a plain count (`536870912`) or a count with a unit, binary
//! (`KiB`, `MiB`, `GiB`, `TiB`, also written `K`, `M`, `G`, `T`) or decimal (`kB`, `MB`, `GB`,
//! `TB`), case-insensitive. Shown back in the largest binary unit that divides exactly.

use std::fmt;
use std::str::FromStr;

/// A byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) u64);

/// A byte limit, or none (`none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit(pub(crate) Option<u64>);

const BINARY: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

fn multiplier(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let text = text.trim();
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        if number.is_empty() {
            return Err(format!(
                "`{text}` is not a byte size (like 1048576 or 64MiB)"
            ));
        }
        let unit = unit.trim_start();
        let multiplier = multiplier(unit).ok_or_else(|| {
            format!("unknown unit `{unit}` (use KiB, MiB, GiB, TiB, kB, MB, GB or TB)")
        })?;
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(Size)
            .ok_or_else(|| format!("`{text}` is more than 2^64 bytes"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match BINARY
            .iter()
            .find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m))
        {
            Some((unit, m)) => write!(f, "{}{unit}", self.0 / m),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(text: &str) -> Result<Limit, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            Ok(Limit(None))
        } else {
            Ok(Limit(Some(text.parse::<Size>()?.0)))
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => Size(bytes).fmt(f),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        let cases = [
            ("0", 0),
            ("1048576", 1 << 20),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("64 M", 64 << 20),
            ("2GiB", 2 << 30),
            ("1t", 1 << 40),
            ("500MB", 500_000_000),
            ("3kB", 3_000),
            ("7B", 7),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<Size>(), Ok(Size(bytes)), "{text}");
        }
        assert_eq!("none".parse::<Limit>(), Ok(Limit(None)));
        assert_eq!("4GiB".parse::<Limit>(), Ok(Limit(Some(4 << 30))));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a byte size"),
            ("MiB", "not a byte size"),
            ("-1", "not a byte size"),
            ("12 parsecs", "unknown unit"),
            ("1.5GiB", "unknown unit"),
            ("99999999999999999999", "more than 2^64"),
            ("17179869184GiB", "more than 2^64"),
        ] {
            let err = text.parse::<Size>().expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_show_in_the_largest_exact_unit_and_read_back() {
        for (bytes, shown) in [
            (0, "0"),
            (1000, "1000"),
            (512 << 20, "512MiB"),
            (4 << 30, "4GiB"),
            (1536 << 10, "1536KiB"),
        ] {
            assert_eq!(Size(bytes).to_string(), shown);
            assert_eq!(shown.parse::<Size>(), Ok(Size(bytes)));
        }
        assert_eq!(Limit(None).to_string(), "none");
    }
}
