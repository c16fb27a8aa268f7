//! Text inputs as their readers need them: UTF-8 with the line of the first bad byte
//! named, and JSON read the way Python's `json.loads` reads it.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::path::Path;

/// The file's text; bytes that are not UTF-8 fail with `FILE:LINE:` and the byte's
/// column.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_utf8(bytes, &path.display().to_string())
}

/// `bytes` as text; errors name `source` and the line and column of the first bad byte.
pub fn decode_utf8(bytes: Vec<u8>, source: &str) -> Result<String> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(err) => {
            let good = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            bail!(
                "{source}:{line}: not valid UTF-8 (byte {} of the line)",
                column + 1
            )
        }
    }
}

/// Parses JSON as Python's `json.loads` accepts it where serde_json does not: a lone
/// surrogate escape (`"\ud800"`, a high one not followed by a low one, or a low one
/// alone) is read as U+FFFD. A Rust string cannot hold a lone surrogate; Python keeps it
/// in its `str` but cannot write it as UTF-8 either (`surrogates not allowed`), so the
/// replacement character is what the text can become in either language. Everything
/// else parses exactly as `serde_json::from_str`.
pub fn from_json_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    serde_json::from_str(&replace_lone_surrogates(text))
}

/// `text` with every lone surrogate `\uXXXX` escape replaced by `\ufffd`; borrowed when
/// there is none. Escapes are found outside strings too, where JSON has none, so no
/// string tracking is needed; `\\` is skipped as a pair so `\\ud800` stays literal.
fn replace_lone_surrogates(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let escape_at = |i: usize| -> Option<u16> {
        let hex = bytes.get(i + 2..i + 6)?;
        (bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            .flatten()
    };
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(i) else {
            // `\\`, `\n`, ...: the escaped character is never the start of an escape.
            i += 2;
            continue;
        };
        let high = (0xD800..0xDC00).contains(&unit);
        let low = (0xDC00..0xE000).contains(&unit);
        if high && escape_at(i + 6).is_some_and(|next| (0xDC00..0xE000).contains(&next)) {
            i += 12;
        } else if high || low {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..i]);
            out.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let parse = |t: &str| from_json_str::<String>(t).unwrap();
        assert_eq!(parse(r#""a\ud800b""#), "a\u{fffd}b");
        assert_eq!(parse(r#""\udc00""#), "\u{fffd}");
        assert_eq!(parse(r#""\ud800\ud800\udc00""#), "\u{fffd}\u{10000}");
        assert_eq!(parse(r#""\ud83d\ude00""#), "😀");
        assert_eq!(parse(r#""\\ud800""#), "\\ud800");
        assert_eq!(parse(r#""\ud800""#), "\u{fffd}");
        assert!(matches!(
            replace_lone_surrogates(r#"{"a": "\u00e9\n"}"#),
            Cow::Borrowed(_)
        ));
        assert!(from_json_str::<String>(r#""\ud8"#).is_err());
    }

    #[test]
    fn bad_utf8_names_line_and_byte() {
        let err = decode_utf8(b"ok\nab\xffc\n".to_vec(), "f.jsonl").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.jsonl:2: not valid UTF-8 (byte 3 of the line)"
        );
        assert_eq!(decode_utf8(b"ok".to_vec(), "f").unwrap(), "ok");
    }
}
