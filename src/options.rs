//! A small parser for cloud-hypervisor style `key=value,key=value` option strings.
//!
//! A flag such as `--cpus boot=2` or `--device path=/dev/vfio/12,iommu=on` carries one option
//! string per value. [`OptionSpec`] describes which keys a flag accepts; [`OptionSpec::parse`]
//! splits one string into an [`Options`] set, rejecting unknown and duplicate keys, and the typed
//! getters ([`Options::get_int`], [`Options::get_size`], [`Options::get_toggle`]) convert values.
//! Flags that take several values (`--device path=A path=B`) or that are repeated simply parse
//! each string on its own.
//!
//! Splitting happens on commas, except inside `[...]` (which may nest) or `"..."`, so
//! `path="/a,b",cpus=[0,1]` yields `path` = `/a,b` (surrounding quotes are removed) and
//! `cpus` = `[0,1]` (brackets are kept).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Why an option string, or one of its values, was rejected.
///
/// The messages do not repeat the flag or the whole option string; callers add that context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A `[` or `"` was opened but never closed, or a `]` appeared without a matching `[`.
    #[error("unbalanced {0}")]
    Unbalanced(&'static str),
    /// Two commas in a row, or a leading or trailing comma.
    #[error("empty option between commas")]
    EmptyOption,
    /// A piece without `=` where the flag has no default key.
    #[error("\"{token}\" is not of the form key=value (supported keys: {supported})")]
    NotKeyValue {
        /// The offending piece.
        token: String,
        /// The keys the flag accepts, comma separated.
        supported: String,
    },
    /// `=value` with nothing before the `=`.
    #[error("missing key before \"=\" in \"{token}\"")]
    EmptyKey {
        /// The offending piece.
        token: String,
    },
    /// A key this flag does not know at all.
    #[error("unknown key \"{key}\" (supported keys: {supported})")]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The keys the flag accepts, comma separated.
        supported: String,
    },
    /// A key cloud-hypervisor understands for this flag but viaduct does not implement.
    #[error(
        "key \"{key}\" is a cloud-hypervisor option that viaduct does not support \
         (supported keys: {supported})"
    )]
    UnsupportedKey {
        /// The unsupported key.
        key: String,
        /// The keys the flag accepts, comma separated.
        supported: String,
    },
    /// The same key given twice in one option string.
    #[error("key \"{key}\" is given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A value that is not an integer of the expected type.
    #[error("{key}: \"{value}\" is not a valid integer ({reason})")]
    InvalidInteger {
        /// The key whose value is wrong.
        key: String,
        /// The value as given.
        value: String,
        /// What the integer parser said.
        reason: String,
    },
    /// A value that is not a byte size.
    #[error("{key}: \"{value}\" is {error}")]
    InvalidSize {
        /// The key whose value is wrong.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it (part of this message, not a separate `source`).
        error: SizeError,
    },
    /// A value that is not one of on/off/true/false.
    #[error("{key}: \"{value}\" is not on, off, true or false")]
    InvalidToggle {
        /// The key whose value is wrong.
        key: String,
        /// The value as given.
        value: String,
    },
}

/// Why a byte size such as `512M` could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional suffix.
    #[error(
        "not a byte size (expected a whole number with an optional K, M, G or T suffix, \
         binary units, e.g. 512M)"
    )]
    Syntax,
    /// Does not fit in 64 bits.
    #[error("too large (more than 64 bits)")]
    Overflow,
}

/// Parses a byte size: a decimal number of bytes, optionally followed by one of the binary
/// suffixes `K` (KiB), `M` (MiB), `G` (GiB) or `T` (TiB), in either case.
///
/// ```
/// assert_eq!(viaduct::options::parse_size("512M"), Ok(512 << 20));
/// ```
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        Some(b't' | b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Syntax);
    }
    let number: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    number.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)
}

/// Formats a byte count the way people write it: `16 MiB`, `4 KiB`, `1536 bytes`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Splits an option string on commas that are not inside `[...]` or `"..."`.
///
/// Returns the pieces unchanged (quotes and brackets are kept). An empty input gives no pieces.
pub fn split_commas(s: &str) -> Result<Vec<&str>, OptionError> {
    let mut pieces = Vec::new();
    if s.is_empty() {
        return Ok(pieces);
    }
    let mut depth = 0usize;
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '[' if !in_quotes => depth += 1,
            ']' if !in_quotes => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(OptionError::Unbalanced("\"]\""))?;
            }
            ',' if !in_quotes && depth == 0 => {
                pieces.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(OptionError::Unbalanced("quote"));
    }
    if depth != 0 {
        return Err(OptionError::Unbalanced("\"[\""));
    }
    pieces.push(&s[start..]);
    Ok(pieces)
}

/// Removes one pair of surrounding double quotes, if present.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// The set of keys one flag accepts.
#[derive(Clone, Debug)]
pub struct OptionSpec {
    keys: &'static [&'static str],
    unsupported: &'static [&'static str],
    default_key: Option<&'static str>,
}

impl OptionSpec {
    /// A spec accepting exactly `keys`.
    pub const fn new(keys: &'static [&'static str]) -> Self {
        Self {
            keys,
            unsupported: &[],
            default_key: None,
        }
    }

    /// Keys that cloud-hypervisor accepts for this flag but viaduct does not; they are rejected
    /// with a message saying so instead of "unknown key".
    pub const fn unsupported(mut self, keys: &'static [&'static str]) -> Self {
        self.unsupported = keys;
        self
    }

    /// Lets a bare value without `key=` stand for `key=value` (e.g. `--cpus 4` for
    /// `--cpus boot=4`). Only applies when the whole option string is a single bare value.
    pub const fn default_key(mut self, key: &'static str) -> Self {
        self.default_key = Some(key);
        self
    }

    fn supported(&self) -> String {
        self.keys.join(", ")
    }

    /// Splits `input` into its keys and values and checks every key against this spec.
    pub fn parse(&self, input: &str) -> Result<Options, OptionError> {
        let pieces = split_commas(input)?;
        let mut values = BTreeMap::new();
        for piece in &pieces {
            if piece.is_empty() {
                return Err(OptionError::EmptyOption);
            }
            let (key, value) = match piece.split_once('=') {
                Some((key, value)) => (key, value),
                None => match self.default_key {
                    Some(key) if pieces.len() == 1 => (key, *piece),
                    _ => {
                        return Err(OptionError::NotKeyValue {
                            token: piece.to_string(),
                            supported: self.supported(),
                        })
                    }
                },
            };
            if key.is_empty() {
                return Err(OptionError::EmptyKey {
                    token: piece.to_string(),
                });
            }
            if !self.keys.contains(&key) {
                let key = key.to_string();
                let supported = self.supported();
                return Err(if self.unsupported.contains(&key.as_str()) {
                    OptionError::UnsupportedKey { key, supported }
                } else {
                    OptionError::UnknownKey { key, supported }
                });
            }
            if values
                .insert(key.to_string(), unquote(value).to_string())
                .is_some()
            {
                return Err(OptionError::DuplicateKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(Options { values })
    }
}

/// The keys and values of one parsed option string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    /// The raw value of `key` (surrounding quotes removed), if it was given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether `key` was given.
    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The value of `key` as an integer of type `T`, if it was given.
    pub fn get_int<T>(&self, key: &str) -> Result<Option<T>, OptionError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.get(key)
            .map(|value| {
                value
                    .parse()
                    .map_err(|e: T::Err| OptionError::InvalidInteger {
                        key: key.to_string(),
                        value: value.to_string(),
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    /// The value of `key` as a byte size (see [`parse_size`]), if it was given.
    pub fn get_size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get(key)
            .map(|value| {
                parse_size(value).map_err(|error| OptionError::InvalidSize {
                    key: key.to_string(),
                    value: value.to_string(),
                    error,
                })
            })
            .transpose()
    }

    /// The value of `key` as a toggle (`on`/`true` or `off`/`false`, any case), if it was given.
    pub fn get_toggle(&self, key: &str) -> Result<Option<bool>, OptionError> {
        self.get(key)
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "on" | "true" => Ok(true),
                "off" | "false" => Ok(false),
                _ => Err(OptionError::InvalidToggle {
                    key: key.to_string(),
                    value: value.to_string(),
                }),
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: OptionSpec = OptionSpec::new(&["path", "iommu", "size", "n", "list"]);

    #[test]
    fn split_plain() {
        assert_eq!(split_commas("a=1,b=2").unwrap(), ["a=1", "b=2"]);
        assert_eq!(split_commas("a=1").unwrap(), ["a=1"]);
        assert!(split_commas("").unwrap().is_empty());
    }

    #[test]
    fn split_keeps_brackets_and_quotes_together() {
        assert_eq!(
            split_commas("a=[0,1,[2,3]],b=\"x,y\",c=3").unwrap(),
            ["a=[0,1,[2,3]]", "b=\"x,y\"", "c=3"]
        );
        // Brackets inside quotes do not count.
        assert_eq!(split_commas("a=\"[,\",b=1").unwrap(), ["a=\"[,\"", "b=1"]);
    }

    #[test]
    fn split_rejects_unbalanced() {
        assert_eq!(
            split_commas("a=[0,1"),
            Err(OptionError::Unbalanced("\"[\""))
        );
        assert_eq!(split_commas("a=0]"), Err(OptionError::Unbalanced("\"]\"")));
        assert_eq!(
            split_commas("a=\"x,b=1"),
            Err(OptionError::Unbalanced("quote"))
        );
    }

    #[test]
    fn parse_values_and_unquote() {
        let o = SPEC.parse("path=\"/a,b\",list=[1,2],n=3").unwrap();
        assert_eq!(o.get("path"), Some("/a,b"));
        assert_eq!(o.get("list"), Some("[1,2]"));
        assert_eq!(o.get_int::<u32>("n"), Ok(Some(3)));
        assert!(!o.is_set("iommu"));
        assert_eq!(o.get_int::<u32>("iommu"), Ok(None));
        // Only the first '=' separates key from value.
        assert_eq!(SPEC.parse("path=a=b").unwrap().get("path"), Some("a=b"));
    }

    #[test]
    fn parse_rejects_unknown_key() {
        let err = SPEC.parse("path=a,foo=1").unwrap_err();
        assert_eq!(
            err,
            OptionError::UnknownKey {
                key: "foo".into(),
                supported: "path, iommu, size, n, list".into()
            }
        );
        assert!(err.to_string().contains("\"foo\""));
        assert!(err.to_string().contains("path, iommu"));
    }

    #[test]
    fn parse_rejects_unsupported_key() {
        let spec = OptionSpec::new(&["boot"]).unsupported(&["max"]);
        let err = spec.parse("boot=1,max=2").unwrap_err();
        assert!(matches!(err, OptionError::UnsupportedKey { ref key, .. } if key == "max"));
        assert!(err.to_string().contains("does not support"));
    }

    #[test]
    fn parse_rejects_duplicate_key() {
        assert_eq!(
            SPEC.parse("n=1,n=2"),
            Err(OptionError::DuplicateKey { key: "n".into() })
        );
    }

    #[test]
    fn parse_rejects_malformed_pieces() {
        assert_eq!(SPEC.parse("n=1,,path=a"), Err(OptionError::EmptyOption));
        assert_eq!(SPEC.parse("n=1,"), Err(OptionError::EmptyOption));
        assert!(matches!(
            SPEC.parse("=1"),
            Err(OptionError::EmptyKey { .. })
        ));
        assert!(matches!(
            SPEC.parse("n"),
            Err(OptionError::NotKeyValue { .. })
        ));
        assert_eq!(SPEC.parse("").unwrap(), Options::default());
    }

    #[test]
    fn default_key_only_for_a_single_bare_value() {
        let spec = OptionSpec::new(&["boot", "max"]).default_key("boot");
        assert_eq!(spec.parse("4").unwrap().get("boot"), Some("4"));
        assert!(matches!(
            spec.parse("4,max=4"),
            Err(OptionError::NotKeyValue { .. })
        ));
    }

    #[test]
    fn integer_getter_errors() {
        let o = SPEC.parse("n=abc").unwrap();
        let err = o.get_int::<u8>("n").unwrap_err();
        assert!(matches!(err, OptionError::InvalidInteger { .. }));
        assert!(err
            .to_string()
            .starts_with("n: \"abc\" is not a valid integer"));
        let o = SPEC.parse("n=256").unwrap();
        assert!(o.get_int::<u8>("n").is_err());
        assert_eq!(o.get_int::<u16>("n"), Ok(Some(256)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
    }

    #[test]
    fn size_syntax_errors() {
        for bad in [
            "", "abc", "M", "1.5G", "-1", "+1", " 1", "1 M", "1MB", "1KiB", "0x10",
        ] {
            assert_eq!(parse_size(bad), Err(SizeError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn size_overflow() {
        assert_eq!(parse_size("99999999999G"), Err(SizeError::Overflow));
        assert_eq!(parse_size("16777216T"), Err(SizeError::Overflow));
        assert_eq!(parse_size("16777215T"), Ok(16777215 << 40));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), Err(SizeError::Overflow));
    }

    #[test]
    fn size_getter() {
        let o = SPEC.parse("size=1G").unwrap();
        assert_eq!(o.get_size("size"), Ok(Some(1 << 30)));
        let err = SPEC
            .parse("size=abc")
            .unwrap()
            .get_size("size")
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("size: \"abc\" is not a byte size"));
    }

    #[test]
    fn toggles() {
        for (v, want) in [
            ("on", true),
            ("true", true),
            ("ON", true),
            ("off", false),
            ("false", false),
            ("False", false),
        ] {
            let o = SPEC.parse(&format!("iommu={v}")).unwrap();
            assert_eq!(o.get_toggle("iommu"), Ok(Some(want)), "{v}");
        }
        let o = SPEC.parse("iommu=yes").unwrap();
        assert!(matches!(
            o.get_toggle("iommu"),
            Err(OptionError::InvalidToggle { .. })
        ));
        assert_eq!(SPEC.parse("").unwrap().get_toggle("iommu"), Ok(None));
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(16 << 20), "16 MiB");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
        assert_eq!(format_size(1 << 40), "1 TiB");
        assert_eq!(format_size(1536), "1536 bytes");
        assert_eq!(format_size(0), "0 bytes");
    }
}
