//! The import file: one certificate per line, `ISSUER SERIAL good` or
//! `ISSUER SERIAL revoked TIME [REASON]` (see [`super::Presigner::import`]), parsed whole before
//! anything is recorded, so a bad line imports nothing.

use std::collections::HashMap;

use crate::error::Error;
use crate::issuers::Issuers;
use crate::record::{CertStatus, IssuerName, Serial};
use crate::response;

/// Parses an import file (see [`Presigner::import`]); `now` bounds revocation times.
pub fn parse_import(
    text: &str,
    path: &str,
    issuers: &Issuers,
    now: i64,
) -> Result<Vec<(IssuerName, Serial, CertStatus)>, Error> {
    let mut seen: HashMap<(IssuerName, Serial), (usize, CertStatus)> = HashMap::new();
    let mut items = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |detail: String| Error::Import {
            path: path.to_owned(),
            line,
            detail,
        };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let (issuer, serial_hex, kind, rest) = match fields.as_slice() {
            [issuer, serial, kind, rest @ ..] => (*issuer, *serial, *kind, rest),
            _ => {
                return Err(fail(format!(
                    "expected `<issuer> <serial hex> good` or `<issuer> <serial hex> revoked <time> [reason]`, got `{content}`"
                )));
            }
        };
        let issuer = IssuerName(issuer.to_owned());
        if issuers.get(&issuer).is_none() {
            return Err(fail(format!("unknown issuer `{}`", issuer.0)));
        }
        let serial = Serial::from_hex(serial_hex)
            .filter(|_| !serial_hex.is_empty())
            .ok_or_else(|| fail(format!("serial `{serial_hex}` is not hexadecimal")))?;
        response::serial_number(&serial).map_err(|e| fail(e.to_string()))?;
        let status = match (kind, rest) {
            ("good", []) => CertStatus::Good,
            ("good", extra) => {
                return Err(fail(format!(
                    "unexpected `{}` after `good`",
                    extra.join(" ")
                )));
            }
            ("revoked", [time, reason @ ..]) => {
                let at = parse_time(time).ok_or_else(|| {
                    fail(format!("revocation time `{time}` is neither RFC 3339 (2026-11-27T12:00:00Z) nor Unix seconds"))
                })?;
                if at > now + 300 {
                    return Err(fail(format!("revocation time `{time}` is in the future")));
                }
                response::generalized_time(at, "revocation time")
                    .map_err(|e| fail(e.to_string()))?;
                let reason = match reason {
                    [] => None,
                    [r] => Some(
                        r.parse::<u8>()
                            .ok()
                            .filter(|r| response::is_valid_reason(*r))
                            .ok_or_else(|| {
                                fail(format!("reason `{r}` is not a CRLReason code (0-6, 8-10)"))
                            })?,
                    ),
                    extra => {
                        return Err(fail(format!(
                            "unexpected `{}` after the reason",
                            extra[1..].join(" ")
                        )));
                    }
                };
                CertStatus::Revoked { at, reason }
            }
            ("revoked", []) => return Err(fail("`revoked` needs a revocation time".into())),
            (other, _) => {
                return Err(fail(format!(
                    "status `{other}` is neither `good` nor `revoked`"
                )));
            }
        };
        match seen.get(&(issuer.clone(), serial.clone())) {
            Some((first, s)) if *s != status => {
                return Err(fail(format!(
                    "{}/{serial} is already listed on line {first} with another status",
                    issuer.0
                )));
            }
            Some(_) => continue,
            None => {
                seen.insert((issuer.clone(), serial.clone()), (line, status));
            }
        }
        items.push((issuer, serial, status));
    }
    Ok(items)
}

/// Unix seconds (all digits) or an RFC 3339 date-time (`2026-11-27T12:00:00Z`, `...+01:00`,
/// fractional seconds truncated: OCSP times are whole seconds).
pub fn parse_time(s: &str) -> Option<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let r = rest.as_bytes();
            if r.len() != 6 || !matches!(r[0], b'+' | b'-') || r[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if r[0] == b'+' { 1 } else { -1 };
            sign * (h * 3600 + m * 60)
        }
    };
    let date = der07::DateTime::new(
        u16::try_from(year).ok()?,
        u8::try_from(month).ok()?,
        u8::try_from(day).ok()?,
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    i64::try_from(date.unix_duration().as_secs())
        .ok()
        .map(|t| t - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), Some(1_700_000_000));
        assert_eq!(
            parse_time("2023-11-14T21:13:20.999-01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_time("2023-11-14 22:13:20z"), Some(1_700_000_000));
        for bad in [
            "",
            "-5",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+1:00",
            "2023-11-14T22:13:20.Z",
            "yesterday",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
