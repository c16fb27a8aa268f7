//! `length_constraints:*`: counts of words, sentences and paragraphs, and the first word of
//! the n-th paragraph.

use std::sync::OnceLock;

use regex::Regex;

use super::instruction::Relation;
use super::{punkt, pystr};

/// NLTK's `RegexpTokenizer(r"\w+")` token count. NLTK 3.10 runs it on the `regex` engine,
/// whose `\w` is Rust's (combining marks included, so `हिन्दी` is one word).
pub(super) fn count_words(text: &str) -> usize {
    static WORD: OnceLock<Regex> = OnceLock::new();
    WORD.get_or_init(|| Regex::new(r"\w+").expect("valid regex"))
        .find_iter(text)
        .count()
}

/// `length_constraints:number_words`.
pub(super) fn number_words(response: &str, relation: Relation, num_words: usize) -> bool {
    relation.holds(count_words(response), num_words)
}

/// `length_constraints:number_sentences`: sentences as NLTK's English Punkt model splits them.
pub(super) fn number_sentences(response: &str, relation: Relation, num_sentences: usize) -> bool {
    relation.holds(punkt::count_sentences(response), num_sentences)
}

/// `length_constraints:number_paragraphs`: exactly `num_paragraphs` pieces between `***`
/// dividers (`re.split(r"\s?\*\*\*\s?", ...)`); an empty piece is allowed only at the
/// start or end.
pub(super) fn number_paragraphs(response: &str, num_paragraphs: usize) -> bool {
    static DIVIDER: OnceLock<Regex> = OnceLock::new();
    let divider = DIVIDER.get_or_init(|| {
        let space = pystr::RE_SPACE;
        Regex::new(&format!(r"{space}?\*\*\*{space}?")).expect("valid regex")
    });
    let paragraphs: Vec<&str> = divider.split(response).collect();
    let last = paragraphs.len() - 1;
    let mut count = paragraphs.len();
    for (index, paragraph) in paragraphs.iter().enumerate() {
        if pystr::strip(paragraph).is_empty() {
            if index == 0 || index == last {
                count -= 1;
            } else {
                return false;
            }
        }
    }
    count == num_paragraphs
}

/// `length_constraints:nth_paragraph_first_word`: `num_paragraphs` non-empty paragraphs
/// separated by blank lines (`\n\n`), the `nth_paragraph`-th (counting empty pieces, as the
/// reference indexes) starting with `first_word`, ignoring case, leading quotes and
/// anything from the first punctuation mark on.
pub(super) fn nth_paragraph_first_word(
    response: &str,
    num_paragraphs: usize,
    nth_paragraph: usize,
    first_word: &str,
) -> bool {
    let paragraphs: Vec<&str> = response.split("\n\n").collect();
    let count = paragraphs
        .iter()
        .filter(|p| !pystr::strip(p).is_empty())
        .count();
    if nth_paragraph > count {
        return false;
    }
    let paragraph = pystr::strip(paragraphs[nth_paragraph - 1]);
    let Some(word) = pystr::split_whitespace(paragraph).next() else {
        return false;
    };
    let word = word.trim_start_matches('\'').trim_start_matches('"');
    let actual: String = word
        .chars()
        .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
        .flat_map(char::to_lowercase)
        .collect();
    count == num_paragraphs && actual == first_word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_word_character_runs() {
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("Hello, world! It's 2024."), 5);
        assert_eq!(count_words("**bold** _under_ - x"), 3);
        assert_eq!(count_words("हिन्दी भाषा café"), 3);
        assert!(number_words("one two three", Relation::LessThan, 4));
        assert!(!number_words("one two three   \n", Relation::AtLeast, 4));
    }

    #[test]
    fn sentences() {
        assert!(number_sentences("One. Two. Three.", Relation::AtLeast, 3));
        assert!(number_sentences("One. Two. Three.", Relation::LessThan, 4));
        assert!(!number_sentences("", Relation::AtLeast, 1));
    }

    #[test]
    fn paragraphs_split_on_dividers() {
        assert!(number_paragraphs("A\n***\nB\n***\nC", 3));
        assert!(number_paragraphs("***\nA\n***\nB\n***", 2));
        assert!(!number_paragraphs("A\n***\n\n***\nB", 2));
        assert!(!number_paragraphs("A\n\nB", 2));
        assert!(number_paragraphs("A * * * B", 1));
        assert!(!number_paragraphs("", 1));
        assert!(number_paragraphs("Été\u{1c}***\u{1c}Ünïcode", 2));
    }

    #[test]
    fn nth_paragraph_first_word() {
        let text = "Intro here.\n\n\"Summer, they said.\n\nEnd.";
        assert!(super::nth_paragraph_first_word(text, 3, 2, "summer"));
        assert!(!super::nth_paragraph_first_word(text, 2, 2, "summer"));
        assert!(!super::nth_paragraph_first_word(text, 3, 1, "summer"));
        assert!(!super::nth_paragraph_first_word("", 1, 1, "a"));
        // An empty piece in the middle shifts the index but not the count.
        assert!(!super::nth_paragraph_first_word("A\n\n\n\nB", 2, 2, "b"));
        assert!(super::nth_paragraph_first_word(
            "**Bold** start\n\nx",
            2,
            1,
            "**bold**"
        ));
        assert!(super::nth_paragraph_first_word(
            "  ÉTÉ! done  \n\nx  ",
            2,
            1,
            "été"
        ));
    }
}
