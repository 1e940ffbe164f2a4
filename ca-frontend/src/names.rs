//! Which DNS names this CA issues for: the identifier policy every `newOrder` identifier, every
//! CSR name at finalization and every contact address's domain goes through.
//!
//! The Baseline Requirements allow only names that are globally unique in the public DNS:
//!
//! - BR §4.2.2: "CAs SHALL NOT issue Certificates containing Internal Names"; BR §1.6.1 defines an
//!   Internal Name as one that "cannot be verified as globally unique within the public DNS at
//!   the time of certificate issuance because it does not end with a Top Level Domain registered
//!   in IANA's Root Zone Database". So a name must end in an ICANN public suffix (the public
//!   suffix list's ICANN section — not its private section, and never its default `*` rule,
//!   which makes any unknown TLD look like a suffix), with a registrable label under it.
//! - BR §3.2.2.4: the CA validates "each Fully-Qualified Domain Name (FQDN) listed in the
//!   Certificate"; BR §3.2.2.6: a wildcard whose FQDN portion is a public suffix is refused.
//!   A wildcard is only the whole leftmost label (`*.example.com`).
//! - BR §7.1.2.7.12 (dNSName entries) and RFC 5890 §2.3.1: labels are P-Labels (valid A-labels,
//!   `xn--` and Punycode that round-trips through IDNA) or Non-Reserved LDH labels; a label with
//!   `--` in positions 3–4 that is not a valid A-label (`ab--c`, `xn--a`) is refused.
//!
//! Special-use names (RFC 6761 and IANA's Special-Use Domain Names registry) are never public:
//! `.test`, `.example`, `.invalid`, `.localhost` (RFC 6761 §6.2–6.5) and `example.com/.net/.org`
//! (RFC 6761 §6.5); `.local` (multicast DNS, RFC 6762); `.home.arpa` (RFC 8375) and the rest of
//! `.arpa` (RFC 3172: infrastructure, reverse look-ups); `.onion` (RFC 7686); `.alt` (RFC 9476);
//! `.internal` (reserved by ICANN for private use, 2024). Some of these are in the public suffix
//! list (`onion`, `home.arpa`), so they are refused by name, first. A deployment that validates
//! on a private DNS (the dev stack, the tests) names the TLDs it uses in
//! `ca.allowed_special_tlds`; only the RFC 6761/6762/9476 and `.internal` TLDs can be allowed.
//!
//! Numeric-looking names are refused: `127.1`, `0x7f.1`, `0177.0.0.1` are IPv4 addresses to
//! `inet_aton` and to WHATWG URL parsers (a name whose last label is a number is an address),
//! and no TLD is numeric (RFC 3696 §2).

use crate::{Problem, ProblemType};

/// The longest DNS name in text form (RFC 1035 §2.3.4: 255 octets on the wire).
const MAX_NAME: usize = 253;
/// RFC 1035 §2.3.4.
const MAX_LABEL: usize = 63;

/// Special-use TLDs: the name, why it is never public, and whether configuration may allow it.
const SPECIAL_TLDS: [(&str, &str, bool); 9] = [
    ("test", "reserved for testing (RFC 6761 §6.2)", true),
    ("localhost", "the local host (RFC 6761 §6.3)", true),
    ("invalid", "reserved to be invalid (RFC 6761 §6.4)", true),
    (
        "example",
        "reserved for documentation (RFC 6761 §6.5)",
        true,
    ),
    ("local", "multicast DNS on the local link (RFC 6762)", true),
    ("alt", "reserved for names outside the DNS (RFC 9476)", true),
    (
        "internal",
        "reserved by ICANN for private networks (2024)",
        true,
    ),
    (
        "onion",
        "Tor onion services (RFC 7686); this CA does not validate them",
        false,
    ),
    (
        "arpa",
        "infrastructure and reverse look-ups (RFC 3172), including home.arpa (RFC 8375)",
        false,
    ),
];

/// Second-level names reserved for documentation (RFC 6761 §6.5, RFC 2606 §3).
const EXAMPLE_DOMAINS: [&str; 3] = ["example.com", "example.net", "example.org"];

/// The special-use TLDs `ca.allowed_special_tlds` may name.
pub fn allowable_special_tlds() -> impl Iterator<Item = &'static str> {
    SPECIAL_TLDS
        .iter()
        .filter(|(_, _, allowable)| *allowable)
        .map(|(tld, _, _)| *tld)
}

/// A DNS identifier this CA will issue for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsName {
    /// Lower case, with the `*.` of a wildcard.
    pub name: String,
    pub wildcard: bool,
}

impl DnsName {
    /// The name without a wildcard's `*.`: what is validated and checked for CAA.
    pub fn base(&self) -> &str {
        if self.wildcard {
            &self.name[2..]
        } else {
            &self.name
        }
    }
}

/// Checks `value` as a `dns` identifier; `allowed_special` are the special-use TLDs this
/// deployment issues under (`ca.allowed_special_tlds`). A refusal is `rejectedIdentifier` whose
/// detail names the rule (an IP address in a `dns` identifier is `unsupportedIdentifier`:
/// this CA issues for no IP address).
pub fn check_dns_name(value: &str, allowed_special: &[String]) -> Result<DnsName, Problem> {
    let reject = |why: String| {
        Problem::new(
            ProblemType::RejectedIdentifier,
            format!("`{}`: {why}", printable(value)),
        )
    };
    let name = value.to_ascii_lowercase();
    let (base, wildcard) = match name.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (name.as_str(), false),
    };
    if base.parse::<std::net::IpAddr>().is_ok() {
        return Err(Problem::new(
            ProblemType::UnsupportedIdentifier,
            format!("`{value}`: IP addresses are not issued for"),
        ));
    }
    if base.is_empty() || base.len() > MAX_NAME {
        return Err(reject(format!("a DNS name is 1 to {MAX_NAME} characters")));
    }
    if base.contains('*') {
        return Err(reject(
            "a wildcard is only the whole leftmost label (`*.example.com`)".into(),
        ));
    }
    let labels: Vec<&str> = base.split('.').collect();
    for label in &labels {
        check_label(label).map_err(&reject)?;
    }
    let last = labels.last().copied().unwrap_or_default();
    if is_numeric(last) {
        return Err(reject(format!(
            "a name ending in the number `{last}` is an IPv4 address to many resolvers \
             (inet_aton: `127.1`, `0x7f.1`); no top-level domain is numeric (RFC 3696 §2)"
        )));
    }
    if labels.iter().any(|l| l.starts_with("xn--")) {
        check_idna(base).map_err(&reject)?;
    }
    // RFC 6761 §6.5: example.com/.net/.org and their subdomains are for documentation.
    if let Some(domain) = EXAMPLE_DOMAINS
        .iter()
        .find(|d| base == **d || base.ends_with(&format!(".{d}")))
    {
        return Err(reject(format!(
            "`{domain}` is reserved for documentation (RFC 6761 §6.5, RFC 2606 §3)"
        )));
    }
    if base == "home.arpa" || base.ends_with(".home.arpa") {
        return Err(reject(
            "`.home.arpa` is for residential home networks (RFC 8375); internal names are not \
             issued for (BR §4.2.2)"
                .into(),
        ));
    }
    let suffix_len = if let Some((tld, why, _)) = SPECIAL_TLDS.iter().find(|(t, _, _)| *t == last) {
        if !allowed_special.iter().any(|a| a == tld) {
            return Err(reject(format!(
                "`.{tld}` is {why}: not a public name, and internal names are not issued for \
                 (BR §4.2.2)"
            )));
        }
        // An allowed special-use TLD is its own suffix, as the list's default rule makes it.
        tld.len()
    } else {
        icann_suffix_len(base).map_err(&reject)?
    };
    if base.len() <= suffix_len {
        return Err(reject(if wildcard {
            "a wildcard over a public suffix is not issued for (BR §3.2.2.6)".into()
        } else {
            "a public suffix is not issued for: a name needs a registrable label under it".into()
        }));
    }
    // A private suffix (`github.io`) is registrable under its ICANN suffix, but everything below
    // it belongs to someone else: as the name itself, or under a wildcard, it is refused.
    if let Some(suffix) = psl::suffix(base.as_bytes())
        && suffix.as_bytes() == base.as_bytes()
    {
        return Err(reject(
            "a public suffix (of the list's private section) is not issued for".into(),
        ));
    }
    Ok(DnsName {
        wildcard,
        name: if wildcard {
            format!("*.{base}")
        } else {
            base.to_owned()
        },
    })
}

/// A label: 1 to 63 lower-case letters, digits and inner hyphens (RFC 1123 §2.1), and `--` in
/// positions 3–4 only in an `xn--` label (RFC 5890 §2.3.1: other such labels are reserved).
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("a name has no empty labels (nor a trailing dot)".into());
    }
    if label.len() > MAX_LABEL {
        return Err(format!("a label is at most {MAX_LABEL} characters"));
    }
    let ldh = label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ldh || label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "label `{}`: letters, digits and inner hyphens only (RFC 1123 §2.1; \
             internationalized names are sent as A-labels, RFC 8555 §7.1.4)",
            printable(label)
        ));
    }
    if label.get(2..4) == Some("--") && !label.starts_with("xn--") {
        return Err(format!(
            "label `{label}` has `--` in positions 3–4 and is not an A-label: such labels are \
             reserved (RFC 5890 §2.3.1, BR §7.1.2.7.12)"
        ));
    }
    Ok(())
}

/// The A-labels of `name` are valid: their Punycode decodes, and the Unicode form converts back
/// to exactly this name under IDNA's strict rules (UTS #46 with STD3 rules, hyphen checks, the
/// bidi and CONTEXTJ rules, NFC) — so `xn--a` (not Punycode of a valid U-label), an A-label of
/// upper-case or unnormalized text, and one that only spells ASCII are all refused.
fn check_idna(name: &str) -> Result<(), String> {
    for label in name.split('.').filter(|l| l.starts_with("xn--")) {
        let unicode = idna::punycode::decode_to_string(&label[4..])
            .ok_or_else(|| format!("label `{label}` is not valid Punycode (RFC 3492)"))?;
        match idna::domain_to_ascii_strict(&unicode) {
            Ok(ascii) if ascii == label => {}
            _ => {
                return Err(format!(
                    "label `{label}` is not a valid A-label: its Unicode form does not convert \
                     back to it under IDNA (RFC 5891 §5.4)"
                ));
            }
        }
    }
    let (unicode, decoded) = idna::domain_to_unicode(name);
    match (decoded, idna::domain_to_ascii_strict(&unicode)) {
        (Ok(()), Ok(ascii)) if ascii == name => Ok(()),
        _ => Err(
            "the internationalized name breaks IDNA's rules across its labels (the bidi \
                  rule, RFC 5893)"
                .into(),
        ),
    }
}

/// A label `inet_aton` reads as a number: decimal, `0x` hexadecimal, or `0`-led octal.
fn is_numeric(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
}

/// The length of the ICANN public suffix `name` ends in. The list's longest match may be a
/// private suffix (`github.io`): its ICANN suffix is then found above it. No match, or only the
/// default `*` rule's (an unknown TLD), is an internal name.
fn icann_suffix_len(name: &str) -> Result<usize, String> {
    let mut rest = name;
    loop {
        match psl::suffix(rest.as_bytes()) {
            Some(s) if s.typ() == Some(psl::Type::Icann) => return Ok(s.as_bytes().len()),
            Some(s) if s.typ() == Some(psl::Type::Private) => {
                // Climb above the private suffix (the list never nests ICANN under private).
                let private = s.as_bytes().len();
                let start = rest.len() - private;
                match rest[start..].split_once('.') {
                    Some((_, parent)) => rest = &name[name.len() - parent.len()..],
                    None => break,
                }
            }
            _ => break,
        }
    }
    let tld = name.rsplit('.').next().unwrap_or(name);
    Err(format!(
        "`.{tld}` is not a top-level domain of the public suffix list's ICANN section, so the \
         name is not public (an Internal Name, BR §4.2.2)"
    ))
}

/// `text` for a problem detail: control characters and non-ASCII escaped, at most 300 chars.
fn printable(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_default).collect();
    if escaped.len() > 300 {
        format!("{}…", &escaped[..300])
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str) -> Result<DnsName, Problem> {
        check_dns_name(name, &[])
    }

    /// The refusal's detail, for a name that must be refused as `rejectedIdentifier`.
    fn refused(name: &str, allowed: &[&str]) -> String {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        match check_dns_name(name, &allowed) {
            Ok(n) => panic!("`{name}` was accepted as {n:?}"),
            Err(p) => {
                assert_eq!(p.kind, ProblemType::RejectedIdentifier, "{name}: {p}");
                p.detail
            }
        }
    }

    #[test]
    fn public_names_pass_lower_cased() {
        assert_eq!(
            check("WWW.Example.co.UK"),
            Ok(DnsName {
                name: "www.example.co.uk".into(),
                wildcard: false
            })
        );
        let wild = check("*.Example.de").expect("wildcard");
        assert!(wild.wildcard);
        assert_eq!(wild.name, "*.example.de");
        assert_eq!(wild.base(), "example.de");
        for ok in [
            "a.b.c.example.de",
            "xn--mnchen-3ya.de", // münchen.de
            "www.xn--mnchen-3ya.de",
            "example.xn--p1ai", // .рф, an ICANN IDN TLD
            "foo.github.io",    // under a private suffix: its ICANN suffix is .io
            "ab-c.example.com.au",
            "1password.com",
            "x1.example.de",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn internal_and_special_use_names_are_refused() {
        for (name, says) in [
            ("printer.local", "RFC 6762"),
            ("db.internal", "private"),
            ("abc.home.arpa", "RFC 8375"),
            ("1.0.0.127.in-addr.arpa", "RFC 3172"),
            ("foo.onion", "RFC 7686"),
            ("x.alt", "RFC 9476"),
            ("localhost", "RFC 6761"),
            ("a.localhost", "RFC 6761"),
            ("a.invalid", "RFC 6761"),
            ("a.test", "RFC 6761"),
            ("a.example", "RFC 6761"),
            ("example.com", "documentation"),
            ("www.example.org", "documentation"),
            ("*.example.net", "documentation"),
            ("router.lan", "ICANN section"),
            ("nas.home", "ICANN section"),
            ("mail.corp", "ICANN section"),
            ("foo.notatld", "ICANN section"),
        ] {
            let detail = refused(name, &[]);
            assert!(detail.contains(says), "{name}: {detail}");
        }
    }

    #[test]
    fn configured_special_tlds_are_allowed_and_only_those() {
        let allowed = ["test".to_string()];
        assert!(check_dns_name("www.example.test", &allowed).is_ok());
        assert!(check_dns_name("*.example.test", &allowed).is_ok());
        assert!(refused("test", &["test"]).contains("registrable"));
        assert!(refused("*.test", &["test"]).contains("wildcard"));
        // Allowing .test allows nothing else.
        assert!(refused("printer.local", &["test"]).contains("RFC 6762"));
        assert!(refused("a.example", &["test"]).contains("RFC 6761"));
        // The other rules still apply under an allowed TLD.
        refused("ab--c.example.test", &["test"]);
        assert!(refused("1.127", &["test"]).contains("IPv4"));
        // onion and arpa can never be allowed.
        assert!(!allowable_special_tlds().any(|t| t == "onion" || t == "arpa"));
    }

    #[test]
    fn numeric_looking_names_are_refused() {
        for name in [
            "127.1",
            "0x7f.1",
            "0177.1",
            "1.0x7f",
            "10.0.0.0x1",
            "a.0x",
            "1.2.3.04",
        ] {
            assert!(refused(name, &[]).contains("IPv4"), "{name}");
        }
        // A real IP address is another kind of identifier.
        assert_eq!(
            check("127.0.0.1").map_err(|p| p.kind),
            Err(ProblemType::UnsupportedIdentifier)
        );
        assert_eq!(
            check("::1").map_err(|p| p.kind),
            Err(ProblemType::UnsupportedIdentifier)
        );
    }

    #[test]
    fn reserved_ldh_labels_are_refused_unless_valid_a_labels() {
        assert!(refused("ab--c.example.com", &[]).contains("RFC 5890"));
        assert!(refused("r3--x.example.com", &[]).contains("RFC 5890"));
        for bad in [
            "xn--a.example.com",    // Punycode of no valid U-label
            "xn--.example.com",     // empty
            "xn--abc-.example.com", // spells only ASCII `abc`
            "xn--Mnchen-3ya.de",    // upper case: lower-cased first, then valid → see below
            "xn--ls8h.example.com", // U+1F4A9: an emoji, disallowed by IDNA2008/UTS 46 strict
        ] {
            let result = check(bad);
            if bad == "xn--Mnchen-3ya.de" {
                // Lower-cased, this is münchen.de's A-label: accepted.
                assert!(result.is_ok(), "{bad}");
                continue;
            }
            assert!(
                result
                    .as_ref()
                    .is_err_and(|p| p.kind == ProblemType::RejectedIdentifier),
                "{bad}: {result:?}"
            );
        }
    }

    #[test]
    fn wildcards_only_as_the_whole_leftmost_label() {
        for bad in [
            "*.*.example.com",
            "a.*.example.com",
            "a*.example.com",
            "*a.example.com",
            "*",
        ] {
            refused(bad, &[]);
        }
        assert!(refused("*.com", &[]).contains("BR §3.2.2.6"));
        assert!(refused("*.co.uk", &[]).contains("BR §3.2.2.6"));
        assert!(refused("*.github.io", &[]).contains("private"));
    }

    #[test]
    fn syntax_and_suffixes() {
        for (bad, says) in [
            ("", "1 to 253"),
            ("a..example.com", "empty"),
            ("example.com.", "trailing dot"),
            ("-a.example.com", "hyphens"),
            ("a_b.example.com", "hyphens"),
            ("a b.example.com", "hyphens"),
            ("münchen.de", "A-labels"),
            ("com", "registrable"),
            ("co.uk", "public suffix"),
            ("github.io", "private section"),
        ] {
            assert!(
                refused(bad, &[]).contains(says),
                "{bad}: {}",
                refused(bad, &[])
            );
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(refused(&long_label, &[]).contains("63"));
        let long_name = format!("{}example.com", "abcdefghi.".repeat(25));
        assert!(refused(&long_name, &[]).contains("253"));
        // Control characters are escaped in the detail, not echoed.
        assert!(refused("a\u{1b}[31m.example.com", &[]).contains("\\u{1b}"));
    }
}
