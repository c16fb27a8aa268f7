//! `nltk.word_tokenize` (NLTK 3.10): Punkt sentences, each split by `NLTKWordTokenizer`, the
//! improved Penn Treebank tokenizer. IFEval counts the all-capital tokens it returns
//! (`change_case:capital_word_frequency`), so `DON'T` is two tokens (`DO`, `N'T`) and
//! `"U.S.A."` keeps its periods.
//!
//! The substitutions run in NLTK's order. Most are plain regular expressions; the three
//! with look-around or a possessive quantifier are written out by hand.

use std::sync::OnceLock;

use regex::Regex;

use super::{punkt, pystr};

/// The tokens of `text`.
pub fn word_tokenize(text: &str) -> Vec<String> {
    punkt::sentences(text)
        .into_iter()
        .flat_map(tokenize_sentence)
        .collect()
}

/// A regex substitution step; `$0`, `$1`... in the replacement as in `Regex::replace_all`.
struct Rule {
    re: Regex,
    replacement: &'static str,
}

fn rule(pattern: &str, replacement: &'static str) -> Rule {
    Rule {
        re: Regex::new(pattern).expect("valid tokenizer regex"),
        replacement,
    }
}

struct Rules {
    starting_quotes: Vec<Rule>,
    /// NLTK's `PUNCTUATION` after its first rule (see [`split_final_period`]).
    punctuation: Vec<Rule>,
    parens_brackets: Rule,
    double_dashes: Rule,
    ending_quotes: Vec<Rule>,
    contractions: Vec<Contraction>,
}

/// One of MacIntyre's contractions, split as `(?i)\b(can)(not)\b` → ` can not `. NLTK
/// compiles these with Python's `re`, whose `\b` knows only letters, numbers and `_` as
/// word characters, so the boundaries are checked by hand.
struct Contraction {
    re: Regex,
    boundary_before: bool,
    boundary_after: bool,
}

fn contraction(pattern: &str, boundary_before: bool, boundary_after: bool) -> Contraction {
    let re = Regex::new(&format!("(?i){pattern}")).expect("valid contraction regex");
    Contraction {
        re,
        boundary_before,
        boundary_after,
    }
}

impl Contraction {
    /// Every leftmost match whose boundaries hold becomes ` group1 group2 ` (plus the
    /// whitespace a look-ahead matched).
    fn apply(&self, text: String) -> String {
        let mut out = String::new();
        let (mut copied, mut from) = (0, 0);
        while let Some(caps) = self.re.captures_at(&text, from) {
            let whole = caps.get(0).expect("group 0");
            let holds = (!self.boundary_before || pystr::is_re_boundary(&text, whole.start()))
                && (!self.boundary_after || pystr::is_re_boundary(&text, whole.end()));
            if holds {
                out.push_str(&text[copied..whole.start()]);
                caps.expand(" ${1} ${2} ${3}", &mut out);
                copied = whole.end();
                from = whole.end();
            } else {
                from = whole.start()
                    + text[whole.start()..]
                        .chars()
                        .next()
                        .map_or(1, char::len_utf8);
            }
            if from > text.len() {
                break;
            }
        }
        if copied == 0 {
            return text;
        }
        out.push_str(&text[copied..]);
        out
    }
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        starting_quotes: vec![
            rule(r"([«“‘„]|`+)", " ${1} "),
            rule(r#"^""#, "``"),
            rule(r"(``)", " ${1} "),
            rule(r#"([ (\[{<])("|'')"#, "${1} `` "),
        ],
        punctuation: vec![
            rule(r"([:,])([^\d])", " ${1} ${2}"),
            // Python's `$` also matches before a final newline.
            rule(r"([:,])(\n?)\z", " ${1} ${2}"),
            rule(r"\.{2,}", " ${0} "),
            rule(r"[;@#$%&]", " ${0} "),
            rule(r"[\x{2012}-\x{2015}]", " ${0} "),
            rule(r#"([^.])(\.)([\])}>"']*)\s*\z"#, "${1} ${2}${3} "),
            rule(r"[?!]", " ${0} "),
            rule(r"([^'])' ", "${1} ' "),
            rule(r"[*]", " ${0} "),
        ],
        parens_brackets: rule(r"[\]\[(){}<>]", " ${0} "),
        double_dashes: rule(r"--", " -- "),
        ending_quotes: vec![
            rule(r"([»”’])", " ${1} "),
            rule(r"''", " '' "),
            rule(r#"""#, " '' "),
            rule(r"\s+", " "),
            rule(r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} "),
            rule(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "${1} ${2} "),
        ],
        contractions: vec![
            contraction(r"(can)(not)", true, true),
            contraction(r"(d)('ye)", true, true),
            contraction(r"(gim)(me)", true, true),
            contraction(r"(gon)(na)", true, true),
            contraction(r"(got)(ta)", true, true),
            contraction(r"(lem)(me)", true, true),
            contraction(r"(more)('n)", true, true),
            // `(?=\s)` in NLTK: the whitespace is matched and put back.
            contraction(r"(wan)(na)([\s\x1C-\x1F])", true, false),
            contraction(r" ('t)(is)", false, true),
            contraction(r" ('t)(was)", false, true),
        ],
    })
}

fn apply(text: String, rule: &Rule) -> String {
    match rule.re.replace_all(&text, rule.replacement) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(changed) => changed,
    }
}

/// `NLTKWordTokenizer.tokenize(sentence)`.
fn tokenize_sentence(sentence: &str) -> Vec<String> {
    let rules = rules();
    let mut text = sentence.to_string();
    for rule in &rules.starting_quotes {
        text = apply(text, rule);
    }
    text = split_opening_apostrophes(&text);
    text = split_final_period(&text);
    for rule in &rules.punctuation {
        text = apply(text, rule);
    }
    text = apply(text, &rules.parens_brackets);
    text = apply(text, &rules.double_dashes);
    text = format!(" {text} ");
    for rule in &rules.ending_quotes {
        text = apply(text, rule);
    }
    for contraction in &rules.contractions {
        text = contraction.apply(text);
    }
    pystr::split_whitespace(&text).map(str::to_string).collect()
}

/// `\w` of the `regex` engine NLTK 3.10 uses, which is Rust's: Unicode word characters
/// including combining marks.
fn is_word_char(c: char) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^\w$").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// `(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)` → `' `: an apostrophe that opens a
/// quotation (not a contraction such as `'s` or `'re`) is split from the word after it.
fn split_opening_apostrophes(text: &str) -> String {
    const SUFFIXES: [&str; 8] = ["re", "ve", "ll", "m", "t", "s", "d", "n"];
    let mut out = String::with_capacity(text.len());
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        out.push(c);
        if c == '\'' && !previous.is_some_and(is_word_char) {
            let rest = &text[i + 1..];
            let starts_word = rest.chars().next().is_some_and(is_word_char);
            let contraction = SUFFIXES.iter().any(|suffix| {
                rest.get(..suffix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(suffix))
                    && !rest[suffix.len()..]
                        .chars()
                        .next()
                        .is_some_and(is_word_char)
            });
            if starts_word && !contraction {
                out.push(' ');
            }
        }
        previous = Some(c);
    }
    out
}

/// `([^\.])(\.)([\]\)}>"\'»”’ ]*+)\s*$` → `\1 \2 \3 `: the period that ends the sentence,
/// followed only by closing punctuation and whitespace, becomes its own token.
fn split_final_period(text: &str) -> String {
    let closing = |c: char| {
        matches!(
            c,
            ']' | ')' | '}' | '>' | '"' | '\'' | '»' | '”' | '’' | ' '
        )
    };
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        if c == '.' && previous.is_some_and(|p| p != '.') {
            let after = &text[i + 1..];
            let run = after.len() - after.trim_start_matches(closing).len();
            if after[run..].chars().all(char::is_whitespace) {
                let before = &text[..i];
                return format!("{before} . {} ", &after[..run]);
            }
        }
        previous = Some(c);
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        word_tokenize(text)
    }

    #[test]
    fn splits_contractions_and_punctuation() {
        assert_eq!(
            tokens("I'M HAPPY, U.S.A. isn't 'quoted' (DONE)."),
            [
                "I", "'M", "HAPPY", ",", "U.S.A.", "is", "n't", "'", "quoted", "'", "(", "DONE",
                ")", "."
            ]
        );
        assert_eq!(
            tokens("Good muffins cost $3.88 in New York.  Please buy me two of them. Thanks."),
            [
                "Good", "muffins", "cost", "$", "3.88", "in", "New", "York", ".", "Please", "buy",
                "me", "two", "of", "them", ".", "Thanks", "."
            ]
        );
    }

    #[test]
    fn quotes_become_treebank_quotes() {
        assert_eq!(
            tokens("\"Hi,\" she said -- wanna go?"),
            ["``", "Hi", ",", "''", "she", "said", "--", "wan", "na", "go", "?"]
        );
    }

    #[test]
    fn empty_and_markdown() {
        assert!(tokens("").is_empty());
        assert!(tokens("  \n ").is_empty());
        assert_eq!(
            tokens("**BOLD** text"),
            ["*", "*", "BOLD", "*", "*", "text"]
        );
    }
}
