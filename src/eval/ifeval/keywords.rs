//! `keywords:*`: required keywords, keyword frequency, forbidden words, letter frequency.
//! Keywords are regular expressions matched case-insensitively, as the reference passes
//! them to `re.search(keyword, response, re.IGNORECASE)`.

use regex::Regex;

use super::instruction::Relation;
use super::pystr;

/// `keywords:existence`: every keyword occurs somewhere (also inside longer words).
pub(super) fn existence(response: &str, keywords: &[Regex]) -> bool {
    keywords.iter().all(|keyword| keyword.is_match(response))
}

/// `keywords:frequency`: the number of non-overlapping occurrences compared with `frequency`.
pub(super) fn frequency(
    response: &str,
    keyword: &Regex,
    relation: Relation,
    frequency: usize,
) -> bool {
    relation.holds(keyword.find_iter(response).count(), frequency)
}

/// `keywords:forbidden_words`: no word occurs as a whole word (`\bword\b`, ignoring case).
/// Matches may overlap: each occurrence is tried in turn, as a backtracking search would.
pub(super) fn forbidden_words(response: &str, words: &[Regex]) -> bool {
    !words.iter().any(|word| {
        let mut from = 0;
        while let Some(m) = word.find_at(response, from) {
            if pystr::is_re_boundary(response, m.start())
                && pystr::is_re_boundary(response, m.end())
            {
                return true;
            }
            from = m.start()
                + response[m.start()..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
            if from > response.len() {
                break;
            }
        }
        false
    })
}

/// `keywords:letter_frequency`: occurrences of `letter` in the lower-cased response.
pub(super) fn letter_frequency(
    response: &str,
    letter: char,
    relation: Relation,
    frequency: usize,
) -> bool {
    let count = pystr::lower(response)
        .chars()
        .filter(|&c| c == letter)
        .count();
    relation.holds(count, frequency)
}

#[cfg(test)]
mod tests {
    use super::super::instruction::user_pattern;
    use super::*;

    fn patterns(words: &[&str]) -> Vec<Regex> {
        words.iter().map(|w| user_pattern(w, true)).collect()
    }

    #[test]
    fn existence_is_substring_and_case_insensitive() {
        assert!(existence(
            "The BRAND is trusted.",
            &patterns(&["brand", "trust"])
        ));
        assert!(!existence("The brand.", &patterns(&["brand", "law"])));
        assert!(existence("Ünïcode", &patterns(&["ünï"])));
        assert!(!existence("", &patterns(&["a"])));
    }

    #[test]
    fn frequency_counts_non_overlapping() {
        let keyword = user_pattern("aa", true);
        assert!(frequency("aaaa AA", &keyword, Relation::AtLeast, 3));
        assert!(!frequency("aaa", &keyword, Relation::AtLeast, 2));
        assert!(frequency("", &keyword, Relation::LessThan, 1));
    }

    #[test]
    fn forbidden_words_are_whole_words() {
        let words = patterns(&["law", "bad"]);
        assert!(forbidden_words("Lawyers are badgers.", &words));
        assert!(!forbidden_words("It's the LAW.", &words));
        assert!(!forbidden_words("**bad**", &words));
        assert!(forbidden_words("bad_idea lawful", &words));
        assert!(forbidden_words("", &words));
        // A letter with a combining accent is a word character on neither side in Python.
        assert!(!forbidden_words("bad\u{301}", &words));
        assert!(forbidden_words("badé", &words));
    }

    #[test]
    fn letters() {
        assert!(letter_frequency("Banana", 'a', Relation::AtLeast, 3));
        assert!(letter_frequency("BANANA", 'n', Relation::LessThan, 3));
        assert!(letter_frequency(
            "#tag #two #three #four",
            '#',
            Relation::AtLeast,
            4
        ));
        assert!(!letter_frequency("", 'a', Relation::AtLeast, 1));
    }
}
