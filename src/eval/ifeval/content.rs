//! `detectable_content:*`: square-bracket placeholders and the postscript.

use std::sync::OnceLock;

use regex::Regex;

use super::{instruction, pystr};

/// `detectable_content:number_placeholders`: at least `num_placeholders` `[...]` spans
/// within a line (shortest match, so `[a] [b]` is two).
pub(super) fn number_placeholders(response: &str, num_placeholders: usize) -> bool {
    static PLACEHOLDER: OnceLock<Regex> = OnceLock::new();
    let placeholder = PLACEHOLDER.get_or_init(|| Regex::new(r"\[.*?\]").expect("valid regex"));
    placeholder.find_iter(response).count() >= num_placeholders
}

/// The reference's postscript pattern for a marker: `P.P.S` and `P.S.` tolerate a space
/// after each period; any other marker is used, lower-cased, as a regular expression.
pub(super) fn postscript_pattern(marker: &str) -> Regex {
    let space = pystr::RE_SPACE;
    let body = match marker {
        "P.P.S" => format!(r"p\.{space}?p\.{space}?s"),
        "P.S." => format!(r"p\.{space}?s\."),
        _ => instruction::user_pattern(&pystr::lower(marker), false)
            .as_str()
            .to_string(),
    };
    Regex::new(&format!(r"(?m){space}*(?:{body}).*$")).expect("valid regex")
}

/// `detectable_content:postscript`: the lower-cased response contains the marker.
pub(super) fn postscript(response: &str, pattern: &Regex) -> bool {
    pattern.is_match(&pystr::lower(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert!(number_placeholders("Dear [name], at [address] [x]", 3));
        assert!(!number_placeholders("[across\nlines]", 1));
        assert!(number_placeholders("[]", 1));
        assert!(!number_placeholders("", 1));
        assert!(number_placeholders("[名前]", 1));
    }

    #[test]
    fn postscripts() {
        let ps = postscript_pattern("P.S.");
        assert!(postscript("Body.\n\nP.S. More.", &ps));
        assert!(postscript("body p. s. more", &ps));
        assert!(!postscript("Body. PS more", &ps));
        assert!(!postscript("", &ps));
        let pps = postscript_pattern("P.P.S");
        assert!(postscript("Text\nP.P.S note", &pps));
        assert!(!postscript("Text\nP.S. note", &pps));
        let other = postscript_pattern("Note:");
        assert!(postscript("**NOTE:** ünïcode", &other));
    }
}
