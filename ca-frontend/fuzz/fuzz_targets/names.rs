//! Fuzzes `ca_frontend::check_dns_name`, the identifier policy every new-order
//! identifier, every CSR name at finalization and every contact's mail domain goes through.
//!
//! The input is the identifier's value (UTF-8; anything else cannot arrive in JSON). The
//! properties: never a panic; an accepted name is what a dNSName may hold — lower-case LDH
//! labels of 1 to 63 characters, at most 253 in all, at least two labels, `*.` only in front —
//! its last label is not a number, `--` in positions 3–4 only in an `xn--` label, and no
//! special-use TLD is accepted unless allowed; the check is idempotent (an accepted name
//! checks to itself) and allowing `.test` only ever adds names under `.test`.

#![no_main]

use ca_frontend::check_dns_name;
use libfuzzer_sys::fuzz_target;

const SPECIAL: [&str; 9] = [
    "test",
    "localhost",
    "invalid",
    "example",
    "local",
    "alt",
    "internal",
    "onion",
    "arpa",
];

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let strict = check_dns_name(value, &[]);
    let allowed = ["test".to_owned()];
    let lenient = check_dns_name(value, &allowed);
    if let Ok(checked) = &strict {
        assert_eq!(lenient.as_ref().ok(), Some(checked), "allowing .test refused {value:?}");
    }
    for (result, allowed) in [(&strict, &[][..]), (&lenient, &allowed[..])] {
        let Ok(checked) = result else {
            continue;
        };
        let name = &checked.name;
        let base = checked.base();
        assert_eq!(checked.wildcard, name.starts_with("*."), "{name}");
        assert!(!base.is_empty() && base.len() <= 253, "{name}");
        let labels: Vec<&str> = base.split('.').collect();
        assert!(labels.len() >= 2, "{name}");
        for label in &labels {
            assert!((1..=63).contains(&label.len()), "{name}");
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
            assert!(!label.starts_with('-') && !label.ends_with('-'), "{name}");
            if label.get(2..4) == Some("--") {
                assert!(label.starts_with("xn--"), "{name}");
            }
        }
        let last = labels[labels.len() - 1];
        assert!(!last.bytes().all(|b| b.is_ascii_digit()), "{name}");
        assert!(!last.starts_with("0x"), "{name}");
        if SPECIAL.contains(&last) {
            assert!(allowed.iter().any(|a| a == last), "{name}");
        }
        assert_eq!(
            check_dns_name(name, allowed).as_ref(),
            Ok(checked),
            "not idempotent"
        );
    }
});
