//! Reading a configuration: TOML text into a [`Config`], then the whole-file checks
//! (`checks`). Kept apart from the schema so that the types do not depend on their validation:
//! `load → schema, checks`, and `checks → schema`.

use std::path::{Path, PathBuf};

use crate::checks;
use crate::error::Error;
use crate::schema::Config;

impl Config {
    /// Reads and validates a file. Relative paths inside it resolve against its directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, base_dir)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path, base_dir: PathBuf) -> Result<Self, Error> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_owned(),
            message: parse_message(text, e),
        })?;
        config.base_dir = base_dir;
        let errors = checks::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid {
                path: origin.to_owned(),
                errors,
            })
        }
    }
}

/// toml's rendering of a parse error, which quotes the offending line of the file, with every
/// `pin` value in the file blanked out: that line may hold an inline PIN (`hsms = [{ ...,
/// pin = "1234" }, { modle = ... }]` puts a typo and a PIN on one line), and errors end up in
/// logs. When the text is not even TOML, so its PINs cannot be located, no line is quoted.
fn parse_message(text: &str, mut e: toml::de::Error) -> String {
    let masked = toml::de::DeTable::parse(text).ok().and_then(|doc| {
        let mut bytes = text.as_bytes().to_vec();
        let mut spans = Vec::new();
        pin_spans(doc.get_ref(), &mut spans);
        for span in spans {
            let end = span.end.min(bytes.len());
            let start = span.start.min(end);
            // Byte for byte, so toml's offsets still point at the same places.
            for b in &mut bytes[start..end] {
                if *b != b'\n' {
                    *b = b'*';
                }
            }
        }
        String::from_utf8(bytes).ok()
    });
    let shown = match masked {
        Some(masked) => {
            e.set_input(Some(&masked));
            e.to_string()
        }
        None => {
            let message = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let mut start = span.start.min(text.len());
                    while !text.is_char_boundary(start) {
                        start -= 1;
                    }
                    let before = &text[..start];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("TOML parse error at line {line}, column {column}: {message}")
                }
                None => message,
            }
        }
    };
    shown.trim_end().to_owned()
}

/// The spans of the values of every key named `pin`, wherever it is.
fn pin_spans(table: &toml::de::DeTable<'_>, spans: &mut Vec<std::ops::Range<usize>>) {
    use toml::de::DeValue;
    fn walk(value: &DeValue<'_>, spans: &mut Vec<std::ops::Range<usize>>) {
        match value {
            DeValue::Table(t) => pin_spans(t, spans),
            DeValue::Array(a) => a.iter().for_each(|v| walk(v.get_ref(), spans)),
            _ => {}
        }
    }
    for (key, value) in table.iter() {
        if key.get_ref() == "pin" {
            spans.push(value.span());
        }
        walk(value.get_ref(), spans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/` (config_parse): a schema error on the line of an inline PIN quoted the
    /// line, PIN included. Here a typo in the second HSM of a one-line `hsms` array.
    #[test]
    fn parse_errors_do_not_quote_an_inline_pin() {
        let text = r#"gateway = { listen = "127.0.0.1:0", local_datacenter = "dc", insecure_plaintext = { client = "t" } }
audit = { dir = "audit" }
datacenters = [{ name = "dc", hsms = [{ name = "h1", module = "m.so", token_label = "H1", pin = "2741-secret" }, { name = "h2", modele = "m.so", token_label = "H2", pin = { env = "P" } }] }]
"#;
        let err = Config::parse(text, Path::new("c.toml"), PathBuf::from("."))
            .expect_err("unknown field `modele`");
        let shown = err.to_string();
        assert!(!shown.contains("2741"), "the PIN was echoed: {shown}");
        assert!(!format!("{err:?}").contains("2741"));
        // Still says what and where, with the line quoted.
        assert!(shown.contains("unknown field `modele`"), "{shown}");
        assert!(shown.contains("line 3, column"), "{shown}");
        assert!(
            shown.contains(r#"{ name = "h2", modele = "m.so""#),
            "{shown}"
        );

        // Not TOML at all: the PINs cannot be located, so no line is quoted.
        let text = text.replace("modele", "= =");
        let err =
            Config::parse(&text, Path::new("c.toml"), PathBuf::from(".")).expect_err("not TOML");
        let shown = err.to_string();
        assert!(!shown.contains("2741"), "the PIN was echoed: {shown}");
        assert!(shown.contains("line 3, column"), "{shown}");
    }
}
