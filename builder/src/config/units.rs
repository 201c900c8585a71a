//! The value syntaxes of `kib.toml` and the flags: sizes (`20G`), durations (`15m`),
//! Kubernetes versions (`1.37`), `--var` pairs; and their serde adapters.

use std::time::Duration;

use serde::Deserialize;

use super::ValueError;

/// Checks a Kubernetes version (`1.37` or `1.37.1`, an optional leading `v` is dropped).
pub fn parse_kubernetes_version(s: &str) -> Result<String, ValueError> {
    let bad = || ValueError::KubernetesVersion {
        value: s.to_owned(),
    };
    let v = s.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let parts: Vec<&str> = v.split('.').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()))
        || parts[0] != "1"
        || parts
            .iter()
            .skip(1)
            .any(|p| p.len() > 1 && p.starts_with('0'))
    {
        return Err(bad());
    }
    Ok(v.to_owned())
}

/// Parses a size: a number with an optional unit `K`, `M`, `G`, `T` (powers of 1024, also
/// written `KiB`, `GB`…); a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Size {
        value: s.to_owned(),
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Writes a size with the largest exact unit (`20G`, `1536M`, `1000`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a duration: one or more `<number><unit>` with units `h`, `m`, `s`, `ms`
/// (`15m`, `90s`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration {
        value: s.to_owned(),
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "m" | "min" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// [`parse_duration`], and a bare number of seconds (`900`) too: what command-line timeouts such
/// as `kib conformance --timeout` accept (in `kib.toml` a bare number is refused as ambiguous).
pub fn parse_duration_or_seconds(s: &str) -> Result<Duration, ValueError> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| ValueError::Duration {
                value: s.to_owned(),
            });
    }
    parse_duration(s)
}

/// Writes a duration as [`parse_duration`] reads it (`15m`, `1h30m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses `--var KEY=VALUE`: the value is JSON if it parses as JSON (`3`, `true`,
/// `["a"]`, `{"k": 1}`, `"quoted"`), else the text as a string.
pub fn parse_var(s: &str) -> Result<(String, serde_json::Value), ValueError> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(ValueError::Var {
            value: s.to_owned(),
        });
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(ValueError::Var {
            value: s.to_owned(),
        });
    }
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

pub(super) fn de_kubernetes_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_kubernetes_version(&s).map_err(serde::de::Error::custom)
}

pub(super) mod size_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_size(*v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(t) => super::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

pub(super) mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let t = String::deserialize(d)?;
        super::parse_duration(&t).map_err(serde::de::Error::custom)
    }
}
