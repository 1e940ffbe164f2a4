//! An account's `contact` URLs (RFC 8555 §7.3): what is stored and echoed back to the client,
//! so bounded and checked before anything is written.
//!
//! Only `mailto:` is supported (anything else is `unsupportedContact`, as Boulder and Pebble
//! answer). Each URL holds one plain address (RFC 6068 §2 allows several, and header fields
//! after `?`; a contact is one mailbox): a dot-atom local part (RFC 5322 §3.4.1) of at most 64
//! characters and a domain that passes the same identifier policy as certificate names
//! ([`crate::names`]: public, not special-use — a contact at `printer.local` reaches nobody),
//! at most 254 characters in all (RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its
//! angle brackets). A bad address is `invalidContact`; more than [`MAX_CONTACTS`] is
//! `malformed` (as Boulder and Pebble answer). Details quote at most the start of a contact.

use crate::{Problem, ProblemType};

/// Contacts per account at most.
pub const MAX_CONTACTS: usize = 10;
/// An address's length at most (RFC 5321 §4.5.3.1.3).
pub const MAX_ADDRESS: usize = 254;
/// A local part's length at most (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;

/// Checks every contact of a new account or an account update.
pub fn check_contacts(contacts: &[String], allowed_special: &[String]) -> Result<(), Problem> {
    if contacts.len() > MAX_CONTACTS {
        return Err(Problem::malformed(format!(
            "at most {MAX_CONTACTS} contacts per account; this request has {}",
            contacts.len()
        )));
    }
    contacts
        .iter()
        .try_for_each(|c| check_contact(c, allowed_special))
}

fn check_contact(contact: &str, allowed_special: &[String]) -> Result<(), Problem> {
    let invalid = |why: &str| {
        Problem::new(
            ProblemType::InvalidContact,
            format!("contact `{}`: {why}", quoted(contact)),
        )
    };
    let Some((scheme, address)) = contact.split_once(':') else {
        return Err(invalid("not a URL; use mailto:address"));
    };
    if !scheme.eq_ignore_ascii_case("mailto") {
        return Err(Problem::new(
            ProblemType::UnsupportedContact,
            format!(
                "contact `{}`: only mailto: URLs are supported",
                quoted(contact)
            ),
        ));
    }
    if address.len() > MAX_ADDRESS {
        return Err(invalid(&format!(
            "an address is at most {MAX_ADDRESS} characters (RFC 5321 §4.5.3.1.3); this one has {}",
            address.len()
        )));
    }
    if !address.is_ascii() {
        return Err(invalid(
            "the address has non-ASCII characters (use the A-label of the domain)",
        ));
    }
    if address.contains(['?', '#', ',', '%']) {
        return Err(invalid(
            "one plain address per mailto: URL, without header fields (`?`), fragments, lists \
             or percent-encoding",
        ));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err(invalid("the address has no `@`"));
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART || !is_dot_atom(local) {
        return Err(invalid(&format!(
            "the local part is not 1 to {MAX_LOCAL_PART} characters of dot-atom text \
             (RFC 5322 §3.4.1)"
        )));
    }
    if domain.starts_with('*') {
        return Err(invalid("the mail domain is a wildcard"));
    }
    crate::names::check_dns_name(domain, allowed_special)
        .map_err(|p| invalid(&format!("the mail domain is refused: {}", p.detail)))?;
    Ok(())
}

/// RFC 5322 §3.2.3: `dot-atom-text = 1*atext *("." 1*atext)`.
fn is_dot_atom(text: &str) -> bool {
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(atext))
}

/// The start of a contact for a problem detail: 64 characters at most, escaped.
fn quoted(contact: &str) -> String {
    let mut out: String = contact
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if contact.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(contacts: &[&str]) -> Option<ProblemType> {
        let contacts: Vec<String> = contacts.iter().map(|s| s.to_string()).collect();
        check_contacts(&contacts, &["test".to_owned()])
            .err()
            .map(|p| p.kind)
    }

    #[test]
    fn plain_mailto_addresses_pass() {
        assert_eq!(kind(&[]), None);
        assert_eq!(
            kind(&[
                "mailto:admin@example.de",
                "MAILTO:ops+acme@mail.example.test"
            ]),
            None
        );
        assert_eq!(kind(&["mailto:first.last@sub.example.co.uk"]), None);
        let longest = format!("mailto:{}@{}.example.de", "a".repeat(64), "b".repeat(63));
        assert_eq!(kind(&[&longest]), None);
    }

    #[test]
    fn other_schemes_are_unsupported() {
        for c in ["tel:+15551234", "https://example.de", "xmpp:a@example.de"] {
            assert_eq!(kind(&[c]), Some(ProblemType::UnsupportedContact), "{c}");
        }
    }

    #[test]
    fn bad_addresses_are_invalid() {
        let huge = format!("mailto:{}@example.de", "a".repeat(30_000));
        let long = format!("mailto:a@{}.example.de", "b.".repeat(125));
        for c in [
            "admin@example.de",
            "mailto:",
            "mailto:admin",
            "mailto:@example.de",
            "mailto:a@@example.de",
            "mailto:a..b@example.de",
            "mailto:.a@example.de",
            "mailto:a b@example.de",
            "mailto:\"a\"@example.de",
            "mailto:a@example.de?subject=x",
            "mailto:a@example.de,b@example.de",
            "mailto:a%40b@example.de",
            "mailto:a@example.de#x",
            "mailto:ä@example.de",
            "mailto:a@printer.local",
            "mailto:a@example.com",
            "mailto:a@[127.0.0.1]",
            "mailto:a@127.0.0.1",
            "mailto:a@*.example.de",
            "mailto:a@localhost",
            huge.as_str(),
            long.as_str(),
        ] {
            assert_eq!(kind(&[c]), Some(ProblemType::InvalidContact), "{c}");
        }
        let detail = check_contacts(std::slice::from_ref(&huge), &[])
            .expect_err("huge")
            .detail;
        assert!(
            detail.len() < 400,
            "the detail quotes only the start: {detail}"
        );
    }

    #[test]
    fn too_many_contacts_are_malformed() {
        let many: Vec<String> = (0..=MAX_CONTACTS)
            .map(|i| format!("mailto:a{i}@example.de"))
            .collect();
        assert_eq!(
            check_contacts(&many, &[]).map_err(|p| p.kind),
            Err(ProblemType::Malformed)
        );
        assert!(check_contacts(&many[..MAX_CONTACTS], &[]).is_ok());
    }
}
