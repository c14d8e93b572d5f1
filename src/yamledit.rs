//! Rewriting path values in the top-level file without touching anything
//! else: comments, order, quoting and spacing stay byte for byte.
//!
//! serde-saphyr reports where each scalar sits in the text (quotes
//! included); an edit replaces exactly those bytes with the new value,
//! written in the same quoting style. This module only locates; whether the
//! result is a valid configuration is decided by the same loader a reload
//! uses.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Which path of which certificate entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `listeners[l].tls.certificates[c].cert`
    Cert(usize, usize),
    /// `listeners[l].tls.certificates[c].key`
    Key(usize, usize),
    /// `listeners[l].tls.client_ca`
    ClientCa(usize),
}

/// One path scalar as written in the file.
#[derive(Debug, Clone)]
pub struct PathScalar {
    pub slot: Slot,
    pub listener: String,
    pub value: String,
    start: usize,
    end: usize,
    line: u64,
    /// Why this scalar cannot be rewritten in place, if it cannot.
    blocked: Option<&'static str>,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Deserialize)]
struct Listener {
    name: String,
    tls: Tls,
}

#[derive(Deserialize)]
struct Tls {
    #[serde(default)]
    certificates: Vec<Cert>,
    #[serde(default)]
    client_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct Cert {
    cert: Spanned<String>,
    key: Spanned<String>,
}

/// Every certificate, key and CA path scalar in `text`, in file order of
/// listeners. `text` must already be a configuration `Config::parse`
/// accepts; this is only about where the values are.
pub fn locate(text: &str) -> Result<Vec<PathScalar>, String> {
    let doc: Doc = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (li, l) in doc.listeners.iter().enumerate() {
        for (ci, c) in l.tls.certificates.iter().enumerate() {
            out.push(scalar(text, Slot::Cert(li, ci), &l.name, &c.cert)?);
            out.push(scalar(text, Slot::Key(li, ci), &l.name, &c.key)?);
        }
        if let Some(ca) = &l.tls.client_ca {
            out.push(scalar(text, Slot::ClientCa(li), &l.name, ca)?);
        }
    }
    Ok(out)
}

fn scalar(
    text: &str,
    slot: Slot,
    listener: &str,
    s: &Spanned<String>,
) -> Result<PathScalar, String> {
    let span = s.referenced.span();
    let (Some(start), Some(len)) = (span.byte_offset(), span.byte_len()) else {
        return Err(format!(
            "line {}: the parser gave no byte position for this value",
            s.referenced.line()
        ));
    };
    let (start, end) = (start as usize, (start + len) as usize);
    if end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
        return Err(format!(
            "line {}: the parser gave an impossible position for this value",
            s.referenced.line()
        ));
    }
    let raw = &text[start..end];
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let before = text[line_start..start].trim_end();
    let blocked = if s.referenced != s.defined || raw.starts_with('*') {
        Some("it is an alias of a value defined elsewhere")
    } else if before
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .is_some_and(|t| t.starts_with('&') || t.starts_with('!'))
    {
        Some("it carries a YAML anchor or tag")
    } else if raw.contains('\n') || raw.starts_with('|') || raw.starts_with('>') {
        Some("it spans several lines")
    } else {
        None
    };
    Ok(PathScalar {
        slot,
        listener: listener.to_string(),
        value: s.value.clone(),
        start,
        end,
        line: s.referenced.line(),
        blocked,
    })
}

/// A path a plain YAML scalar can hold as is.
fn plain_ok(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@%~".contains(&b))
        && !v.starts_with(['-', '~', '@', '%'])
}

/// `value` written in the quoting style of `original` (plain becomes
/// double-quoted when the value needs it).
fn render(original: &str, value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?} contains control characters"));
    }
    Ok(if original.starts_with('\'') {
        format!("'{}'", value.replace('\'', "''"))
    } else if original.starts_with('"') || !plain_ok(value) {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        value.to_string()
    })
}

/// Replaces the listed scalars' values; every other byte is kept. The
/// result is re-read to make sure each value reads back as intended.
pub fn rewrite(text: &str, edits: &[(Slot, String)]) -> Result<String, String> {
    let scalars = locate(text)?;
    let mut chosen: Vec<(&PathScalar, &str)> = Vec::new();
    for (slot, value) in edits {
        let s = scalars
            .iter()
            .find(|s| s.slot == *slot)
            .ok_or_else(|| format!("no value for {slot:?} in the file"))?;
        if let Some(why) = s.blocked {
            return Err(format!(
                "line {}: cannot rewrite {:?} in place because {why}; write it as a one-line value",
                s.line, s.value
            ));
        }
        chosen.push((s, value));
    }
    chosen.sort_by_key(|(s, _)| s.start);
    chosen.dedup_by_key(|(s, _)| s.start);
    let mut out = String::with_capacity(text.len() + 64 * chosen.len());
    let mut at = 0;
    for (s, value) in &chosen {
        out.push_str(&text[at..s.start]);
        out.push_str(&render(&text[s.start..s.end], value)?);
        at = s.end;
    }
    out.push_str(&text[at..]);
    let check = locate(&out)?;
    for (slot, value) in edits {
        let got = check.iter().find(|s| s.slot == *slot).map(|s| &s.value);
        if got != Some(value) {
            return Err(format!(
                "rewriting {slot:?} to {value:?} read back as {got:?}"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# top comment é\nlisteners:\n  - name: web   # the site\n    bind: \"127.0.0.1:1\"\n    backend: \"127.0.0.1:2\"\n    tls:\n      certificates:\n        - cert: certs/a.pem    # keep me\n          key: 'certs/a.key'\n        - {cert: \"certs/b.pem\", key: certs/b.key}\n      client_ca: ca.pem\n";

    #[test]
    fn only_the_scalars_change() {
        let out = rewrite(
            DOC,
            &[
                (Slot::Cert(0, 0), "store/x.pem".into()),
                (Slot::Key(0, 0), "store/it's.key".into()),
                (Slot::Cert(0, 1), "store/y.pem".into()),
                (Slot::Key(0, 1), "store/y z.key".into()),
            ],
        )
        .unwrap();
        let expected = DOC
            .replace("certs/a.pem", "store/x.pem")
            .replace("'certs/a.key'", "'store/it''s.key'")
            .replace("\"certs/b.pem\"", "\"store/y.pem\"")
            .replace("certs/b.key", "\"store/y z.key\"");
        assert_eq!(out, expected);
    }

    #[test]
    fn aliases_are_refused() {
        let doc = DOC.replace("ca.pem", "&p ca.pem");
        let e = rewrite(&doc, &[(Slot::ClientCa(0), "x".into())]).unwrap_err();
        assert!(e.contains("anchor"), "{e}");
    }
}
