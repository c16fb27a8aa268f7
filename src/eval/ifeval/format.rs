//! `detectable_format:*`: bullet lists, the constrained answers, highlighted sections,
//! numbered sections, JSON, and titles.

use std::sync::OnceLock;

use regex::Regex;

use super::{instruction, pystr};
use crate::pyjson;

fn regex(cell: &'static OnceLock<Regex>, pattern: impl FnOnce() -> String) -> &'static Regex {
    cell.get_or_init(|| Regex::new(&pattern()).expect("valid regex"))
}

/// `detectable_format:number_bullet_lists`: exactly `num_bullets` lines that start (after
/// whitespace) with `*` not followed by another `*`, or with `-`. As in the reference's
/// multi-line patterns, the leading whitespace may span blank lines and a lone `*` may take
/// the next line with it.
pub(super) fn number_bullet_lists(response: &str, num_bullets: usize) -> bool {
    static STAR: OnceLock<Regex> = OnceLock::new();
    static DASH: OnceLock<Regex> = OnceLock::new();
    let space = pystr::RE_SPACE;
    let star = regex(&STAR, || format!(r"(?m)^{space}*\*[^*].*$"));
    let dash = regex(&DASH, || format!(r"(?m)^{space}*-.*$"));
    star.find_iter(response).count() + dash.find_iter(response).count() == num_bullets
}

/// `detectable_format:constrained_response`: one of the three fixed answers appears.
pub(super) fn constrained_response(response: &str) -> bool {
    let response = pystr::strip(response);
    [
        "My answer is yes.",
        "My answer is no.",
        "My answer is maybe.",
    ]
    .iter()
    .any(|option| response.contains(option))
}

/// `detectable_format:number_highlighted_sections`: at least `num_highlights` non-blank
/// `*spans*` within a line; each non-blank `**span**` counts once more.
pub(super) fn number_highlighted_sections(response: &str, num_highlights: usize) -> bool {
    static SINGLE: OnceLock<Regex> = OnceLock::new();
    static DOUBLE: OnceLock<Regex> = OnceLock::new();
    let single = regex(&SINGLE, || r"\*[^\n*]*\*".to_string());
    let double = regex(&DOUBLE, || r"\*\*[^\n*]*\*\*".to_string());
    let singles = single
        .find_iter(response)
        .filter(|m| !pystr::strip(m.as_str().trim_matches('*')).is_empty())
        .count();
    let doubles = double
        .find_iter(response)
        .filter(|m| {
            let inner = m.as_str();
            !pystr::strip(&inner[2..inner.len() - 2]).is_empty()
        })
        .count();
    singles + doubles >= num_highlights
}

/// The reference's section pattern `\s?SPLITTER\s?\d+\s?`, with the splitter taken as a
/// regular expression as Python takes it.
pub(super) fn section_splitter(splitter: &str) -> Regex {
    let space = pystr::RE_SPACE;
    let splitter = instruction::user_pattern(splitter, false);
    Regex::new(&format!(
        r"{space}?(?:{}){space}?\d+{space}?",
        splitter.as_str()
    ))
    .expect("valid regex")
}

/// `detectable_format:multiple_sections`: at least `num_sections` section markers.
pub(super) fn multiple_sections(response: &str, splitter: &Regex, num_sections: usize) -> bool {
    splitter.find_iter(response).count() >= num_sections
}

/// `detectable_format:json_format`: the stripped response, less one leading
/// ```` ```json ```` (or ```` ```Json ````, ```` ```JSON ````, ```` ``` ````) fence and one
/// trailing ```` ``` ````, is accepted by Python's `json.loads`.
pub(super) fn json_format(response: &str) -> bool {
    let mut value = pystr::strip(response);
    for prefix in ["```json", "```Json", "```JSON", "```"] {
        value = value.strip_prefix(prefix).unwrap_or(value);
    }
    value = value.strip_suffix("```").unwrap_or(value);
    pyjson::loads_accepts(pystr::strip(value))
}

/// `detectable_format:title`: some `<<...>>` on one line with non-blank text inside.
pub(super) fn title(response: &str) -> bool {
    static TITLE: OnceLock<Regex> = OnceLock::new();
    let title = regex(&TITLE, || r"<<[^\n]+>>".to_string());
    title
        .find_iter(response)
        .any(|m| !pystr::strip(m.as_str().trim_start_matches('<').trim_end_matches('>')).is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bullets() {
        assert!(number_bullet_lists("* one\n* two\n- three", 3));
        assert!(number_bullet_lists(
            "Intro:\n  * one\n\t- two\n**bold** line",
            2
        ));
        assert!(!number_bullet_lists("* one\n* two", 3));
        assert!(number_bullet_lists("", 0));
        assert!(number_bullet_lists("* ünïcode\n* 二", 2));
        // A lone `*` swallows the next line, as the reference's `[^\*]` matches a newline.
        assert!(number_bullet_lists("*\nnext", 1));
    }

    #[test]
    fn constrained() {
        assert!(constrained_response("My answer is yes."));
        assert!(constrained_response("  Well... My answer is maybe. \n"));
        assert!(!constrained_response("My answer is Yes."));
        assert!(!constrained_response(""));
    }

    #[test]
    fn highlights() {
        assert!(number_highlighted_sections("*one* and *two*", 2));
        // `**bold**` is two blank single spans and one double span.
        assert!(number_highlighted_sections("**bold**", 1));
        assert!(!number_highlighted_sections("**bold**", 2));
        assert!(!number_highlighted_sections("** ** and * *", 1));
        assert!(!number_highlighted_sections("*across\nlines*", 1));
        assert!(number_highlighted_sections("*été*", 1));
        assert!(!number_highlighted_sections("", 1));
    }

    #[test]
    fn sections() {
        let splitter = section_splitter("SECTION");
        assert!(multiple_sections(
            "SECTION 1\nfoo\nSECTION 2\nbar",
            &splitter,
            2
        ));
        assert!(!multiple_sections(
            "Section 1\nfoo\nSection 2\nbar",
            &splitter,
            2
        ));
        assert!(multiple_sections("SECTION1 SECTION 2", &splitter, 2));
        assert!(!multiple_sections("", &splitter, 1));
        let day = section_splitter("Day");
        assert!(multiple_sections("Day 1: x\nDay 2: y\nDay 3", &day, 3));
    }

    #[test]
    fn json() {
        assert!(json_format("{\"a\": 1}"));
        assert!(json_format("```json\n{\"a\": [1, 2]}\n```"));
        assert!(json_format("```JSON\n[]\n```  \n"));
        assert!(json_format("```\n\"just a string\"\n```"));
        assert!(!json_format("Here is JSON: {\"a\": 1}"));
        assert!(!json_format("```json\n{\"a\": 1}\n```\nDone."));
        assert!(!json_format(""));
        assert!(json_format("{\"ключ\": \"значение\"}"));
    }

    #[test]
    fn titles() {
        assert!(title("<<My Title>>\nText"));
        assert!(!title("<< >>"));
        assert!(!title("<<\n>>"));
        assert!(title("<<a>> and <<>>"));
        assert!(title("<<标题>>"));
        assert!(!title(""));
    }
}
