//! `change_case:*`: all-capital or all-lowercase English, and the number of all-capital words.

use super::instruction::Relation;
use super::{langdetect, pystr, word_tokenize};

/// `value.isupper()`/`islower()` and `langdetect.detect(value) == "en"`, where text
/// langdetect finds no features in passes (the reference catches the exception and returns
/// True); the case test comes first and short-circuits.
fn english_with(response: &str, case_ok: fn(&str) -> bool) -> bool {
    case_ok(response) && langdetect::detect(response).map_or(true, |language| language == "en")
}

/// `change_case:english_capital`.
pub(super) fn english_capital(response: &str) -> bool {
    english_with(response, pystr::is_upper)
}

/// `change_case:english_lowercase`.
pub(super) fn english_lowercase(response: &str) -> bool {
    english_with(response, pystr::is_lower)
}

/// `change_case:capital_word_frequency`: `nltk.word_tokenize` tokens that are `isupper()`.
pub(super) fn capital_word_frequency(response: &str, relation: Relation, frequency: usize) -> bool {
    let capitals = word_tokenize::word_tokenize(response)
        .iter()
        .filter(|token| pystr::is_upper(token))
        .count();
    relation.holds(capitals, frequency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capital_english() {
        assert!(english_capital(
            "THIS IS A SHORT ANSWER WRITTEN IN ENGLISH, AS REQUESTED."
        ));
        assert!(!english_capital("THIS IS MOSTLY CAPITALS but not all."));
        assert!(!english_capital(
            "CECI EST UNE RÉPONSE ÉCRITE EN FRANÇAIS, PAS EN ANGLAIS."
        ));
        assert!(!english_capital(""));
        // isupper() holds but langdetect finds no features: passes, as in the reference.
        assert!(english_capital("123 \u{24b6}"));
        // A lone capital is a feature, and langdetect reads it as Tagalog.
        assert!(!english_capital("123 A"));
    }

    #[test]
    fn lowercase_english() {
        assert!(english_lowercase(
            "this is a short answer written in english, as requested.\n"
        ));
        assert!(!english_lowercase("this is mostly lowercase but I am not."));
        assert!(!english_lowercase(
            "ceci est une réponse écrite en français, pas en anglais."
        ));
        assert!(!english_lowercase("12345"));
        assert!(english_lowercase("\u{24d0}\u{24d1} 1"));
    }

    #[test]
    fn capital_words() {
        assert!(capital_word_frequency(
            "I LOVE NASA and the USA.",
            Relation::AtLeast,
            4
        ));
        assert!(!capital_word_frequency(
            "I LOVE NASA and the USA.",
            Relation::AtLeast,
            5
        ));
        // `DON'T` is two capital tokens: `DO` and `N'T`.
        assert!(capital_word_frequency("DON'T", Relation::AtLeast, 2));
        assert!(capital_word_frequency("", Relation::LessThan, 1));
        assert!(capital_word_frequency("**WOW** ÉTÉ", Relation::AtLeast, 2));
    }
}
