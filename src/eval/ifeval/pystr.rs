//! Python `str` semantics that the reference evaluator relies on and Rust's `str` spells
//! differently: what counts as whitespace, `isupper`/`islower`, and the character classes
//! of Python's `re` module (used in regex patterns written for `regex`).

use std::sync::OnceLock;

use regex::Regex;

/// `str.isspace()` for one character: Unicode `White_Space` plus the four ASCII information
/// separators U+001C..U+001F, which Python also treats as whitespace.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `str.rstrip()`.
pub fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// `str.split()` without arguments: runs of whitespace separate, empty pieces are dropped.
pub fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|piece| !piece.is_empty())
}

/// `str.lower()`: full Unicode lower-casing, as `str::to_lowercase` does.
pub fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// The titlecase letters (general category Lt), which make both `isupper` and `islower` false.
fn is_titlecase(c: char) -> bool {
    matches!(c,
        '\u{01C5}' | '\u{01C8}' | '\u{01CB}' | '\u{01F2}'
        | '\u{1F88}'..='\u{1F8F}' | '\u{1F98}'..='\u{1F9F}' | '\u{1FA8}'..='\u{1FAF}'
        | '\u{1FBC}' | '\u{1FCC}' | '\u{1FFC}')
}

/// `str.isupper()`: no lowercase or titlecase character and at least one uppercase one.
pub fn is_upper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// `str.islower()`: no uppercase or titlecase character and at least one lowercase one.
pub fn is_lower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_uppercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_lowercase();
    }
    cased
}

/// `str.isalnum()` for one character: a letter or a number of any script (general
/// categories L and N); Rust's `char::is_alphanumeric` also admits combining vowel signs.
pub fn is_alphanumeric(c: char) -> bool {
    static ALNUM: OnceLock<Regex> = OnceLock::new();
    let alnum = ALNUM.get_or_init(|| Regex::new(r"^[\p{L}\p{N}]$").expect("valid regex"));
    let mut buf = [0u8; 4];
    alnum.is_match(c.encode_utf8(&mut buf))
}

/// Python `re`'s `\w` for one character (letters and numbers of any script, and `_`).
pub fn is_re_word(c: char) -> bool {
    c == '_' || is_alphanumeric(c)
}

/// Python `re`'s `\b` at byte offset `at` of `text`: a word character on exactly one side.
pub fn is_re_boundary(text: &str, at: usize) -> bool {
    let before = text[..at].chars().next_back().is_some_and(is_re_word);
    let after = text[at..].chars().next().is_some_and(is_re_word);
    before != after
}

/// Python `re`'s `\s` as a regex character class body (Rust's `\s` lacks U+001C..U+001F).
pub const RE_SPACE: &str = r"[\s\x1C-\x1F]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_includes_information_separators() {
        assert_eq!(strip("\u{1c} a b\u{3000}\n"), "a b");
        assert_eq!(rstrip("  a \t"), "  a");
        assert_eq!(strip("\u{200b}x\u{feff}"), "\u{200b}x\u{feff}");
        assert_eq!(
            split_whitespace(" a\u{a0}b\n\nc ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(split_whitespace("   ").count(), 0);
    }

    #[test]
    fn case_predicates_follow_python() {
        assert!(is_upper("HELLO, WORLD 123"));
        assert!(!is_upper("123 ,"));
        assert!(!is_upper(""));
        assert!(!is_upper("HELLO World"));
        assert!(is_upper("ÉTÉ Ⓐ"));
        assert!(is_lower("été ª"));
        assert!(!is_lower("ǅ"));
        assert!(!is_upper("ǅ"));
        assert!(is_lower("hello 世界"));
        assert!(!is_lower("世界"));
    }

    #[test]
    fn lower_is_full_mapping() {
        assert_eq!(lower("İSTANBUL ΟΔΟΣ"), "i\u{307}stanbul οδος");
    }

    #[test]
    fn re_word_boundaries() {
        assert!(is_re_word('½') && is_re_word('_') && is_re_word('ß'));
        assert!(!is_re_word('\u{301}') && !is_re_word('-'));
        assert!(
            is_re_boundary("ab cd", 2) && is_re_boundary("ab cd", 0) && !is_re_boundary("ab cd", 1)
        );
        assert!(!is_re_boundary("", 0));
    }
}
