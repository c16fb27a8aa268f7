//! NLTK's Punkt sentence tokenizer with its pretrained English parameters, as
//! `nltk.data.load("tokenizers/punkt/english.pickle")` (NLTK >= 3.9: `punkt_tab/english`)
//! splits text. IFEval counts sentences with it (`length_constraints:number_sentences`) and
//! `nltk.word_tokenize` splits text into sentences with it first.
//!
//! This follows NLTK 3.10's `PunktSentenceTokenizer.span_tokenize` step by step: candidate
//! sentence ends found by the period-context pattern, each decided by annotating the tokens
//! around it (first pass: abbreviations, ellipses; second pass: collocations, the
//! orthographic heuristic, frequent sentence starters, initials and ordinals), then closing
//! quotes and brackets realigned onto the sentence they end. The patterns NLTK writes as
//! regular expressions with look-ahead are scanned by hand here. All offsets are byte
//! offsets into the text.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use regex::Regex;

use super::pystr;

/// The learned parameters (NLTK `PunktParameters`).
pub struct PunktParameters {
    abbrev_types: HashSet<String>,
    collocations: HashSet<(String, String)>,
    sent_starters: HashSet<String>,
    ortho_context: HashMap<String, u32>,
}

const ORTHO_BEG_UC: u32 = 1 << 1;
const ORTHO_MID_UC: u32 = 1 << 2;
const ORTHO_UNK_UC: u32 = 1 << 3;
const ORTHO_BEG_LC: u32 = 1 << 4;
const ORTHO_MID_LC: u32 = 1 << 5;
const ORTHO_UNK_LC: u32 = 1 << 6;
const ORTHO_UC: u32 = ORTHO_BEG_UC | ORTHO_MID_UC | ORTHO_UNK_UC;
const ORTHO_LC: u32 = ORTHO_BEG_LC | ORTHO_MID_LC | ORTHO_UNK_LC;

const ENGLISH_DATA: &str = include_str!("data/punkt_english.txt");

impl PunktParameters {
    /// Parses the `[section]`-headed text format written by `data/regenerate.py`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut params = PunktParameters {
            abbrev_types: HashSet::new(),
            collocations: HashSet::new(),
            sent_starters: HashSet::new(),
            ortho_context: HashMap::new(),
        };
        let mut section = "";
        for (number, line) in text.split('\n').enumerate() {
            if line.is_empty() || line.starts_with("# ") {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = &line[1..line.len() - 1];
                continue;
            }
            let bad = || {
                format!(
                    "punkt_english.txt line {}: malformed {section} entry",
                    number + 1
                )
            };
            match section {
                "abbrev_types" => {
                    params.abbrev_types.insert(line.to_string());
                }
                "sent_starters" => {
                    params.sent_starters.insert(line.to_string());
                }
                "collocations" => {
                    let (a, b) = line.split_once('\t').ok_or_else(bad)?;
                    params.collocations.insert((a.to_string(), b.to_string()));
                }
                "ortho_context" => {
                    let (word, flags) = line.split_once('\t').ok_or_else(bad)?;
                    let flags = flags.parse().map_err(|_| bad())?;
                    params.ortho_context.insert(word.to_string(), flags);
                }
                _ => return Err(bad()),
            }
        }
        Ok(params)
    }

    /// NLTK's pretrained English model.
    pub fn english() -> &'static PunktParameters {
        static ENGLISH: OnceLock<PunktParameters> = OnceLock::new();
        ENGLISH.get_or_init(|| {
            PunktParameters::parse(ENGLISH_DATA).expect("the embedded Punkt data is well formed")
        })
    }

    fn ortho(&self, typ: &str) -> u32 {
        self.ortho_context.get(typ).copied().unwrap_or(0)
    }
}

/// Splits `text` into sentences with the English model.
pub fn sentences(text: &str) -> Vec<&str> {
    sentence_spans(text)
        .into_iter()
        .map(|(start, end)| &text[start..end])
        .collect()
}

/// `len(tokenizer.tokenize(text))`: the sentence count IFEval compares against.
pub fn count_sentences(text: &str) -> usize {
    sentence_spans(text).len()
}

/// `PunktSentenceTokenizer.span_tokenize(text)` with boundary realignment.
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let params = PunktParameters::english();
    let slices = slices_from_text(params, text);
    realign_boundaries(text, &slices)
}

// ---------------------------------------------------------------------------------------
// Character classes of NLTK's `PunktLanguageVars`.

/// Characters that cannot appear within words (`_re_non_word_chars`): closing and opening
/// brackets and quotes (the curly quotes and guillemets since NLTK 3.10), `*:@;`, and the
/// sentence enders other than `.`.
const NON_WORD: &str = ")\";}]*:@'({[\u{2018}\u{2019}\u{201c}\u{201d}\u{ab}\u{bb}?!";

/// Characters that cannot start a word token (`_re_word_start` excludes them).
const NON_WORD_START: &str = "(\"`{[:;&#*@)}]-,";

/// Closing punctuation that realignment moves onto the sentence it follows.
const CLOSING: &str = "\"')]}\u{2018}\u{2019}\u{201c}\u{201d}\u{ab}\u{bb}";

fn is_non_word(c: char) -> bool {
    NON_WORD.contains(c)
}

fn is_non_word_start(c: char) -> bool {
    NON_WORD_START.contains(c)
}

fn is_closing(c: char) -> bool {
    CLOSING.contains(c)
}

fn is_sent_end(c: char) -> bool {
    matches!(c, '.' | '?' | '!')
}

/// Length in bytes of the multi-character punctuation (`--...`, `...`, `. . .`) that
/// starts `s`, if any: `-{2,}|\.{2,}|(?:\.\s){2,}\.` with its greedy backtracking.
fn multi_char_punct(s: &str) -> Option<usize> {
    let run = |ch: char| s.chars().take_while(|&c| c == ch).count();
    if run('-') >= 2 {
        return Some(run('-'));
    }
    if run('.') >= 2 {
        return Some(run('.'));
    }
    // (?:\.\s){2,}\. : count maximal ". " pairs, then need a final '.'.
    let mut pairs = Vec::new(); // byte offset after each pair
    let mut chars = s.char_indices().peekable();
    while let Some((_, '.')) = chars.peek().copied() {
        chars.next();
        match chars.next() {
            Some((i, c)) if c.is_whitespace() => pairs.push(i + c.len_utf8()),
            _ => break,
        }
    }
    // Backtrack from the most pairs to the fewest (>= 2) until a '.' follows.
    pairs
        .iter()
        .enumerate()
        .rev()
        .find_map(|(k, &end)| (k + 1 >= 2 && s[end..].starts_with('.')).then_some(end + 1))
}

/// Punkt's word tokenizer (`PunktLanguageVars.word_tokenize`) on one line: multi-character
/// punctuation, or a word that runs until whitespace, punctuation that cannot be inside a
/// word, or a comma that ends it; or any single non-space character.
fn word_tokens(line: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < line.len() {
        let rest = &line[pos..];
        let c = rest.chars().next().expect("pos is inside the line");
        if c.is_whitespace() {
            pos += c.len_utf8();
            continue;
        }
        let len = if let Some(len) = multi_char_punct(rest) {
            len
        } else if !is_non_word_start(c) {
            word_len(rest)
        } else {
            c.len_utf8()
        };
        tokens.push(&rest[..len]);
        pos += len;
    }
    tokens
}

/// `\S+?` up to the first position where a word may end (see [`word_tokens`]).
fn word_len(s: &str) -> usize {
    let ends_word_at = |j: usize| {
        let rest = &s[j..];
        let Some(c) = rest.chars().next() else {
            return true;
        };
        if c.is_whitespace() || is_non_word(c) || multi_char_punct(rest).is_some() {
            return true;
        }
        if c == ',' {
            let after = &rest[1..];
            return match after.chars().next() {
                None => true,
                Some(d) => d.is_whitespace() || is_non_word(d) || multi_char_punct(after).is_some(),
            };
        }
        false
    };
    let mut j = s.chars().next().map_or(0, char::len_utf8);
    while !ends_word_at(j) {
        j += s[j..].chars().next().map_or(0, char::len_utf8);
    }
    j
}

// ---------------------------------------------------------------------------------------
// Tokens and their annotation.

struct Token<'a> {
    tok: &'a str,
    typ: String,
    period_final: bool,
    sentbreak: bool,
    abbr: bool,
    ellipsis: bool,
}

fn numeric_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^-?[.,]?\d[\d,.\-]*\.?$").expect("valid regex"))
}

fn initial_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[^\W\d]\.$").expect("valid regex"))
}

impl<'a> Token<'a> {
    fn new(tok: &'a str) -> Self {
        let lower = pystr::lower(tok);
        let typ = if numeric_re().is_match(&lower) {
            "##number##".to_string()
        } else {
            lower
        };
        Token {
            tok,
            typ,
            period_final: tok.ends_with('.'),
            sentbreak: false,
            abbr: false,
            ellipsis: false,
        }
    }

    fn type_no_period(&self) -> &str {
        if self.typ.len() > 1 && self.typ.ends_with('.') {
            &self.typ[..self.typ.len() - 1]
        } else {
            &self.typ
        }
    }

    fn type_no_sentperiod(&self) -> &str {
        if self.sentbreak {
            self.type_no_period()
        } else {
            &self.typ
        }
    }

    fn first_upper(&self) -> bool {
        self.tok.chars().next().is_some_and(char::is_uppercase)
    }

    fn first_lower(&self) -> bool {
        self.tok.chars().next().is_some_and(char::is_lowercase)
    }

    fn is_ellipsis(&self) -> bool {
        self.tok.len() >= 2 && self.tok.bytes().all(|b| b == b'.')
    }

    fn is_initial(&self) -> bool {
        initial_re().is_match(self.tok)
    }
}

/// What the orthographic heuristic says about a token starting a sentence.
#[derive(PartialEq)]
enum Starter {
    Yes,
    No,
    Unknown,
}

/// First pass: sentence-ending punctuation, ellipses, and period-final tokens decided by
/// the abbreviation list alone.
fn first_pass(params: &PunktParameters, token: &mut Token) {
    let tok = token.tok;
    if tok == "." || tok == "?" || tok == "!" {
        token.sentbreak = true;
    } else if token.is_ellipsis() {
        token.ellipsis = true;
    } else if token.period_final && !tok.ends_with("..") {
        let stem = pystr::lower(&tok[..tok.len() - 1]);
        let last_part = stem.rsplit('-').next().unwrap_or("");
        if params.abbrev_types.contains(&stem) || params.abbrev_types.contains(last_part) {
            token.abbr = true;
        } else {
            token.sentbreak = true;
        }
    }
}

fn ortho_heuristic(params: &PunktParameters, token: &Token) -> Starter {
    if matches!(token.tok, ";" | ":" | "," | "." | "!" | "?") {
        return Starter::No;
    }
    let context = params.ortho(token.type_no_sentperiod());
    if token.first_upper() && context & ORTHO_LC != 0 && context & ORTHO_MID_UC == 0 {
        return Starter::Yes;
    }
    if token.first_lower() && (context & ORTHO_UC != 0 || context & ORTHO_BEG_LC == 0) {
        return Starter::No;
    }
    Starter::Unknown
}

/// Second pass on a token given the (first-pass) token after it.
fn second_pass(params: &PunktParameters, token: &mut Token, next: &Token) {
    if !token.period_final {
        return;
    }
    let typ = token.type_no_period().to_string();
    let next_typ = next.type_no_sentperiod();
    let is_initial = token.is_initial();

    if params
        .collocations
        .contains(&(typ.clone(), next_typ.to_string()))
    {
        token.sentbreak = false;
        token.abbr = true;
        return;
    }
    if (token.abbr || token.ellipsis) && !is_initial {
        if ortho_heuristic(params, next) == Starter::Yes {
            token.sentbreak = true;
            return;
        }
        if next.first_upper() && params.sent_starters.contains(next_typ) {
            token.sentbreak = true;
            return;
        }
    }
    if is_initial || typ == "##number##" {
        let starter = ortho_heuristic(params, next);
        if starter == Starter::No {
            token.sentbreak = false;
            token.abbr = true;
            return;
        }
        if starter == Starter::Unknown
            && is_initial
            && next.first_upper()
            && params.ortho(next_typ) & ORTHO_LC == 0
        {
            token.sentbreak = false;
            token.abbr = true;
        }
    }
}

/// `text_contains_sentbreak`: whether some token of `text` other than the last is
/// annotated as a sentence break.
fn contains_sentbreak(params: &PunktParameters, text: &str) -> bool {
    let mut tokens: Vec<Token> = text
        .split('\n')
        .filter(|line| !pystr::strip(line).is_empty())
        .flat_map(word_tokens)
        .map(Token::new)
        .collect();
    for token in &mut tokens {
        first_pass(params, token);
    }
    for i in 0..tokens.len().saturating_sub(1) {
        let (head, tail) = tokens.split_at_mut(i + 1);
        second_pass(params, &mut head[i], &tail[0]);
        if head[i].sentbreak {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// Candidate sentence ends and slicing.

/// A match of NLTK's period-context pattern `[.?!](?=(?P<after_tok>NonWord|\s+(?P<next_tok>\S+)))`.
struct EndContext {
    start: usize,
    end: usize,
    /// End of the look-ahead (`after_tok`).
    after_end: usize,
    /// Start of `next_tok`, when the look-ahead went through whitespace to a token.
    next_tok: Option<usize>,
}

fn period_contexts(text: &str) -> Vec<EndContext> {
    let mut found = Vec::new();
    for (start, c) in text.char_indices() {
        if !is_sent_end(c) {
            continue;
        }
        let end = start + 1;
        let rest = &text[end..];
        let Some(next) = rest.chars().next() else {
            continue;
        };
        if is_non_word(next) {
            found.push(EndContext {
                start,
                end,
                after_end: end + next.len_utf8(),
                next_tok: None,
            });
        } else if next.is_whitespace() {
            let ws = rest.len() - rest.trim_start_matches(char::is_whitespace).len();
            let tok_start = end + ws;
            let tail = &text[tok_start..];
            let tok_len = tail.find(char::is_whitespace).unwrap_or(tail.len());
            if tok_len > 0 {
                found.push(EndContext {
                    start,
                    end,
                    after_end: tok_start + tok_len,
                    next_tok: Some(tok_start),
                });
            }
        }
    }
    found
}

/// `_match_potential_end_contexts`: each candidate with the text from the start of the word
/// before it through the token after it, dropping candidates whose preceding word overlaps
/// the previous candidate's (so `!!!` counts once).
fn potential_end_contexts(text: &str) -> Vec<(EndContext, String)> {
    let context = |slice: (usize, usize), m: &EndContext| {
        format!(
            "{}{}{}",
            &text[slice.0..slice.1],
            &text[m.start..m.end],
            &text[m.end..m.after_end]
        )
    };
    let mut out = Vec::new();
    let mut previous_slice = (0usize, 0usize);
    let mut previous: Option<EndContext> = None;
    for m in period_contexts(text) {
        let before = &text[previous_slice.1..m.start];
        // Python's string.whitespace is ASCII; an index of 0 reads as "none found".
        let last_ws = before
            .bytes()
            .rposition(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'));
        let word_start = match last_ws {
            Some(i) if i > 0 => i + previous_slice.1 + 1,
            _ => previous_slice.0,
        };
        let word_slice = (word_start, m.start);
        if let Some(prev) = previous.take() {
            if previous_slice.1 <= word_slice.0 {
                let ctx = context(previous_slice, &prev);
                out.push((prev, ctx));
            }
        }
        previous = Some(m);
        previous_slice = word_slice;
    }
    if let Some(prev) = previous {
        let ctx = context(previous_slice, &prev);
        out.push((prev, ctx));
    }
    out
}

fn slices_from_text(params: &PunktParameters, text: &str) -> Vec<(usize, usize)> {
    let mut slices = Vec::new();
    let mut last_break = 0;
    for (m, context) in potential_end_contexts(text) {
        if contains_sentbreak(params, &context) {
            slices.push((last_break, m.end));
            last_break = m.next_tok.unwrap_or(m.end);
        }
    }
    slices.push((last_break, pystr::rstrip(text).len()));
    slices
}

/// Length of `["')\]}‘’“”«»]+?(?:\s+|(?=--)|$)` matched at the start of `s` (multi-line
/// `$`): the closing punctuation, and the whole match.
fn closing_punctuation(s: &str) -> Option<(usize, usize)> {
    let mut end = 0;
    for c in s.chars() {
        if !is_closing(c) {
            return None;
        }
        end += c.len_utf8();
        let rest = &s[end..];
        match rest.chars().next() {
            None => return Some((end, end)),
            Some(n) if n.is_whitespace() => {
                let ws = rest.len() - rest.trim_start_matches(char::is_whitespace).len();
                return Some((end, end + ws));
            }
            Some(_) if rest.starts_with("--") => return Some((end, end)),
            Some(_) => {}
        }
    }
    None
}

/// `_realign_boundaries`: closing quotes and brackets after a sentence end move onto it.
fn realign_boundaries(text: &str, slices: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let nonempty = |(start, end): (usize, usize)| start < end;
    let mut out = Vec::new();
    let mut realign = 0;
    for (i, &(start, stop)) in slices.iter().enumerate() {
        let first = (start + realign, stop);
        let Some(&(next_start, next_stop)) = slices.get(i + 1) else {
            if nonempty(first) {
                out.push(first);
            }
            continue;
        };
        let next_text = if next_start < next_stop {
            &text[next_start..next_stop]
        } else {
            ""
        };
        match closing_punctuation(next_text) {
            Some((closing, whole)) => {
                out.push((first.0, next_start + closing));
                realign = whole;
            }
            None => {
                realign = 0;
                if nonempty(first) {
                    out.push(first);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ordinary_sentences() {
        assert_eq!(
            sentences("Dr. Smith went home. He was tired."),
            ["Dr. Smith went home.", "He was tired."]
        );
        assert_eq!(count_sentences("One. Two! Three? Four"), 4);
    }

    #[test]
    fn abbreviations_and_initials_do_not_end_sentences() {
        assert_eq!(count_sentences("Mr. X. Y. went to the U.S. yesterday."), 1);
        assert_eq!(
            count_sentences("It costs 5 p.m. tomorrow at the corp. office."),
            1
        );
    }

    #[test]
    fn repeated_enders_count_once_and_quotes_realign() {
        assert_eq!(
            sentences("Very bad acting!!! I promise."),
            ["Very bad acting!!!", "I promise."]
        );
        assert_eq!(
            sentences("He said \"stop.\" Then he left."),
            ["He said \"stop.\"", "Then he left."]
        );
        assert_eq!(
            sentences("(Sent one.) Sent two."),
            ["(Sent one.)", "Sent two."]
        );
    }

    #[test]
    fn empty_and_whitespace_texts() {
        assert_eq!(count_sentences(""), 0);
        assert_eq!(count_sentences("   \n "), 0);
        assert_eq!(count_sentences("no ending punctuation"), 1);
        assert_eq!(sentences("Trailing space.   "), ["Trailing space."]);
    }

    #[test]
    fn markdown_and_unicode() {
        assert_eq!(
            count_sentences("# Title\n\n* First point. * Second point.\n\nÉté est là. Très bien."),
            4
        );
        assert_eq!(sentences("“Quoted.” Next one."), ["“Quoted.”", "Next one."]);
    }

    #[test]
    fn word_tokens_follow_punkt() {
        assert_eq!(
            word_tokens("Hello, world... (yes) -- ok. . . e.g. x,y"),
            ["Hello", ",", "world", "...", "(", "yes", ")", "--", "ok", ". . .", "e.g.", "x,y"]
        );
    }
}
