//! `startend:*`: the closing phrase and wrapping quotation marks.

use super::pystr;

/// `startend:end_checker`: the response, stripped of whitespace and then of `"`, ends with
/// the phrase, ignoring case.
pub(super) fn end_checker(response: &str, end_phrase: &str) -> bool {
    let response = pystr::lower(pystr::strip(response).trim_matches('"'));
    response.ends_with(&pystr::lower(pystr::strip(end_phrase)))
}

/// `startend:quotation`: the stripped response is at least two characters, first and last `"`.
pub(super) fn quotation(response: &str) -> bool {
    let response = pystr::strip(response);
    response.chars().count() > 1 && response.starts_with('"') && response.ends_with('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending() {
        assert!(end_checker(
            "Text.\nIs there anything else I can help with?  \n",
            "Is there anything else I can help with?"
        ));
        assert!(end_checker(
            "\"Quoted answer. any other questions?\"",
            "Any other questions?"
        ));
        assert!(!end_checker(
            "Any other questions? Thanks.",
            "Any other questions?"
        ));
        assert!(!end_checker("", "Bye."));
        assert!(end_checker("**Ünïcode ÉND**", "ünïcode énd**"));
    }

    #[test]
    fn quotes() {
        assert!(quotation("\"Hello.\""));
        assert!(quotation("  \"a\"\n"));
        assert!(!quotation("\""));
        assert!(!quotation("“Curly”"));
        assert!(!quotation(""));
        assert!(quotation("\"\""));
    }
}
