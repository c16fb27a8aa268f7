//! The 25 IFEval instruction types: an instruction id plus its kwargs parsed into an
//! [`Instruction`], and [`Instruction::check`], which asks the checker of its group
//! whether a response follows it.
//!
//! Where the reference evaluator would pick a random value for a missing or out-of-range
//! kwarg (`build_description` falls back to `random`), parsing fails instead, so verdicts
//! never depend on chance. The one exception is `keywords:letter_frequency` with a letter
//! that is not an ASCII letter (two official prompts ask for `#` and `!`): the reference
//! counts a random letter; here the given character itself is counted, which is what the
//! prompt asks for and reproduces both official verdicts.

use anyhow::{anyhow, bail, Result};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::{
    case, combination, content, format, keywords, language, length, punctuation, pystr, startend,
};

/// `less than` or `at least`, the two comparisons IFEval's counting instructions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    LessThan,
    AtLeast,
}

impl Relation {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "less than" => Some(Relation::LessThan),
            "at least" => Some(Relation::AtLeast),
            _ => None,
        }
    }

    /// Whether `count` satisfies the relation to `threshold`.
    pub fn holds(self, count: usize, threshold: usize) -> bool {
        match self {
            Relation::LessThan => count < threshold,
            Relation::AtLeast => count >= threshold,
        }
    }
}

/// One instruction with its parameters. Patterns that the reference evaluator builds from
/// kwargs are compiled once here.
#[derive(Debug, Clone)]
pub enum Instruction {
    NoComma,
    NumberWords {
        relation: Relation,
        num_words: usize,
    },
    NumberSentences {
        relation: Relation,
        num_sentences: usize,
    },
    NumberParagraphs {
        num_paragraphs: usize,
    },
    NthParagraphFirstWord {
        num_paragraphs: usize,
        nth_paragraph: usize,
        first_word: String,
    },
    NumberBulletLists {
        num_bullets: usize,
    },
    ConstrainedResponse,
    NumberHighlightedSections {
        num_highlights: usize,
    },
    MultipleSections {
        section_splitter: Regex,
        num_sections: usize,
    },
    JsonFormat,
    Title,
    KeywordsExistence {
        keywords: Vec<Regex>,
    },
    KeywordFrequency {
        keyword: Regex,
        frequency: usize,
        relation: Relation,
    },
    ForbiddenWords {
        words: Vec<Regex>,
    },
    LetterFrequency {
        letter: char,
        frequency: usize,
        relation: Relation,
    },
    CapitalWordFrequency {
        frequency: usize,
        relation: Relation,
    },
    EnglishCapital,
    EnglishLowercase,
    EndChecker {
        end_phrase: String,
    },
    Quotation,
    TwoResponses,
    RepeatPrompt {
        prompt_to_repeat: String,
    },
    NumberPlaceholders {
        num_placeholders: usize,
    },
    Postscript {
        pattern: Regex,
    },
    ResponseLanguage {
        language: String,
    },
}

/// Every instruction id IFEval defines, in the reference registry's order.
pub const INSTRUCTION_IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

/// The languages `language:response_language` may ask for (the reference's `LANGUAGE_CODES`).
const LANGUAGE_CODES: [&str; 30] = [
    "en", "es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it", "bn", "uk", "th", "ur", "ta", "te",
    "bg", "ko", "pl", "he", "fa", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi",
];

/// A kwargs object being read: null values count as absent (the Hugging Face copy of the
/// data lists every key), and a key no reader asked for is an error, as Python's
/// `build_description(**kwargs)` raises on an unexpected keyword.
struct Kwargs<'a> {
    map: &'a Map<String, Value>,
    read: Vec<&'static str>,
}

impl<'a> Kwargs<'a> {
    fn value(&mut self, name: &'static str) -> Result<&'a Value> {
        self.read.push(name);
        match self.map.get(name) {
            None | Some(Value::Null) => bail!("missing kwarg `{name}`"),
            Some(value) => Ok(value),
        }
    }

    fn count(&mut self, name: &'static str) -> Result<usize> {
        let value = self.value(name)?;
        let as_integer = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        });
        as_integer
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| anyhow!("kwarg `{name}` must be a non-negative integer, got {value}"))
    }

    fn string(&mut self, name: &'static str) -> Result<&'a str> {
        let value = self.value(name)?;
        value
            .as_str()
            .ok_or_else(|| anyhow!("kwarg `{name}` must be a string, got {value}"))
    }

    fn strings(&mut self, name: &'static str) -> Result<Vec<&'a str>> {
        let value = self.value(name)?;
        let items = value.as_array().filter(|items| !items.is_empty());
        items
            .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| {
                anyhow!("kwarg `{name}` must be a non-empty list of strings, got {value}")
            })
    }

    fn relation(&mut self, name: &'static str) -> Result<Relation> {
        let value = self.string(name)?;
        Relation::parse(value).ok_or_else(|| {
            anyhow!("kwarg `{name}` must be \"less than\" or \"at least\", got {value:?}")
        })
    }

    fn finish(self) -> Result<()> {
        for (key, value) in self.map {
            if !value.is_null() && !self.read.contains(&key.as_str()) {
                bail!("unexpected kwarg `{key}`");
            }
        }
        Ok(())
    }
}

/// A pattern the reference passes to `re` as given, compiled case-insensitively where the
/// reference uses `re.IGNORECASE`; text that is not a valid pattern is matched literally.
pub(super) fn user_pattern(pattern: &str, case_insensitive: bool) -> Regex {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .build()
        .or_else(|_| {
            RegexBuilder::new(&regex::escape(pattern))
                .case_insensitive(case_insensitive)
                .build()
        })
        .expect("an escaped pattern is valid")
}

impl Instruction {
    /// Builds the instruction `id` from its kwargs object.
    pub fn new(id: &str, kwargs: &Map<String, Value>) -> Result<Self> {
        let mut args = Kwargs {
            map: kwargs,
            read: Vec::new(),
        };
        let instruction = Self::from_args(id, &mut args).map_err(|err| anyhow!("{id}: {err}"))?;
        args.finish().map_err(|err| anyhow!("{id}: {err}"))?;
        Ok(instruction)
    }

    fn from_args(id: &str, args: &mut Kwargs) -> Result<Self> {
        Ok(match id {
            "punctuation:no_comma" => Instruction::NoComma,
            "length_constraints:number_words" => Instruction::NumberWords {
                relation: args.relation("relation")?,
                num_words: args.count("num_words")?,
            },
            "length_constraints:number_sentences" => Instruction::NumberSentences {
                relation: args.relation("relation")?,
                num_sentences: args.count("num_sentences")?,
            },
            "length_constraints:number_paragraphs" => Instruction::NumberParagraphs {
                num_paragraphs: args.count("num_paragraphs")?,
            },
            "length_constraints:nth_paragraph_first_word" => {
                let num_paragraphs = args.count("num_paragraphs")?;
                let nth_paragraph = args.count("nth_paragraph")?;
                if nth_paragraph == 0 || nth_paragraph > num_paragraphs {
                    bail!("kwarg `nth_paragraph` must be between 1 and num_paragraphs ({num_paragraphs}), got {nth_paragraph}");
                }
                let first_word = pystr::lower(args.string("first_word")?);
                Instruction::NthParagraphFirstWord {
                    num_paragraphs,
                    nth_paragraph,
                    first_word,
                }
            }
            "detectable_format:number_bullet_lists" => Instruction::NumberBulletLists {
                num_bullets: args.count("num_bullets")?,
            },
            "detectable_format:constrained_response" => Instruction::ConstrainedResponse,
            "detectable_format:number_highlighted_sections" => {
                Instruction::NumberHighlightedSections {
                    num_highlights: args.count("num_highlights")?,
                }
            }
            "detectable_format:multiple_sections" => Instruction::MultipleSections {
                section_splitter: format::section_splitter(pystr::strip(
                    args.string("section_spliter")?,
                )),
                num_sections: args.count("num_sections")?,
            },
            "detectable_format:json_format" => Instruction::JsonFormat,
            "detectable_format:title" => Instruction::Title,
            "keywords:existence" => Instruction::KeywordsExistence {
                keywords: args
                    .strings("keywords")?
                    .into_iter()
                    .map(|k| user_pattern(k, true))
                    .collect(),
            },
            "keywords:frequency" => {
                let keyword = pystr::strip(args.string("keyword")?);
                if keyword.is_empty() {
                    bail!("kwarg `keyword` must not be empty");
                }
                Instruction::KeywordFrequency {
                    keyword: user_pattern(keyword, true),
                    frequency: args.count("frequency")?,
                    relation: args.relation("relation")?,
                }
            }
            "keywords:forbidden_words" => Instruction::ForbiddenWords {
                words: args
                    .strings("forbidden_words")?
                    .into_iter()
                    .map(|w| user_pattern(w, true))
                    .collect(),
            },
            "keywords:letter_frequency" => {
                let letter = args.string("letter")?;
                let mut chars = pystr::lower(letter).chars().collect::<Vec<_>>();
                let (Some(letter), true) = (chars.pop(), chars.is_empty()) else {
                    bail!("kwarg `letter` must be one character, got {letter:?}");
                };
                Instruction::LetterFrequency {
                    letter,
                    frequency: args.count("let_frequency")?,
                    relation: args.relation("let_relation")?,
                }
            }
            "change_case:capital_word_frequency" => Instruction::CapitalWordFrequency {
                frequency: args.count("capital_frequency")?,
                relation: args.relation("capital_relation")?,
            },
            "change_case:english_capital" => Instruction::EnglishCapital,
            "change_case:english_lowercase" => Instruction::EnglishLowercase,
            "startend:end_checker" => Instruction::EndChecker {
                end_phrase: pystr::strip(args.string("end_phrase")?).to_string(),
            },
            "startend:quotation" => Instruction::Quotation,
            "combination:two_responses" => Instruction::TwoResponses,
            "combination:repeat_prompt" => {
                let prompt_to_repeat = args.string("prompt_to_repeat")?;
                if prompt_to_repeat.is_empty() {
                    bail!("kwarg `prompt_to_repeat` must not be empty");
                }
                Instruction::RepeatPrompt {
                    prompt_to_repeat: prompt_to_repeat.to_string(),
                }
            }
            "detectable_content:number_placeholders" => Instruction::NumberPlaceholders {
                num_placeholders: args.count("num_placeholders")?,
            },
            "detectable_content:postscript" => Instruction::Postscript {
                pattern: content::postscript_pattern(pystr::strip(
                    args.string("postscript_marker")?,
                )),
            },
            "language:response_language" => {
                let language = args.string("language")?;
                if !LANGUAGE_CODES.contains(&language) {
                    bail!(
                        "kwarg `language` must be one of {}, got {language:?}",
                        LANGUAGE_CODES.join(" ")
                    );
                }
                Instruction::ResponseLanguage {
                    language: language.to_string(),
                }
            }
            _ => bail!(
                "unknown instruction id (IFEval defines: {})",
                INSTRUCTION_IDS.join(", ")
            ),
        })
    }

    /// The reference checker's `check_following(response)`.
    pub fn check(&self, response: &str) -> bool {
        match self {
            Instruction::NoComma => punctuation::no_comma(response),
            Instruction::NumberWords {
                relation,
                num_words,
            } => length::number_words(response, *relation, *num_words),
            Instruction::NumberSentences {
                relation,
                num_sentences,
            } => length::number_sentences(response, *relation, *num_sentences),
            Instruction::NumberParagraphs { num_paragraphs } => {
                length::number_paragraphs(response, *num_paragraphs)
            }
            Instruction::NthParagraphFirstWord {
                num_paragraphs,
                nth_paragraph,
                first_word,
            } => length::nth_paragraph_first_word(
                response,
                *num_paragraphs,
                *nth_paragraph,
                first_word,
            ),
            Instruction::NumberBulletLists { num_bullets } => {
                format::number_bullet_lists(response, *num_bullets)
            }
            Instruction::ConstrainedResponse => format::constrained_response(response),
            Instruction::NumberHighlightedSections { num_highlights } => {
                format::number_highlighted_sections(response, *num_highlights)
            }
            Instruction::MultipleSections {
                section_splitter,
                num_sections,
            } => format::multiple_sections(response, section_splitter, *num_sections),
            Instruction::JsonFormat => format::json_format(response),
            Instruction::Title => format::title(response),
            Instruction::KeywordsExistence { keywords } => keywords::existence(response, keywords),
            Instruction::KeywordFrequency {
                keyword,
                frequency,
                relation,
            } => keywords::frequency(response, keyword, *relation, *frequency),
            Instruction::ForbiddenWords { words } => keywords::forbidden_words(response, words),
            Instruction::LetterFrequency {
                letter,
                frequency,
                relation,
            } => keywords::letter_frequency(response, *letter, *relation, *frequency),
            Instruction::CapitalWordFrequency {
                frequency,
                relation,
            } => case::capital_word_frequency(response, *relation, *frequency),
            Instruction::EnglishCapital => case::english_capital(response),
            Instruction::EnglishLowercase => case::english_lowercase(response),
            Instruction::EndChecker { end_phrase } => startend::end_checker(response, end_phrase),
            Instruction::Quotation => startend::quotation(response),
            Instruction::TwoResponses => combination::two_responses(response),
            Instruction::RepeatPrompt { prompt_to_repeat } => {
                combination::repeat_prompt(response, prompt_to_repeat)
            }
            Instruction::NumberPlaceholders { num_placeholders } => {
                content::number_placeholders(response, *num_placeholders)
            }
            Instruction::Postscript { pattern } => content::postscript(response, pattern),
            Instruction::ResponseLanguage { language } => {
                language::response_language(response, language)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(id: &str, kwargs: Value) -> Result<Instruction> {
        Instruction::new(id, kwargs.as_object().expect("object"))
    }

    #[test]
    fn every_id_parses_with_its_kwargs() {
        let cases = [
            ("keywords:existence", json!({"keywords": ["a"]})),
            (
                "keywords:frequency",
                json!({"keyword": "a", "frequency": 2, "relation": "at least"}),
            ),
            (
                "keywords:forbidden_words",
                json!({"forbidden_words": ["a"]}),
            ),
            (
                "keywords:letter_frequency",
                json!({"letter": "Q", "let_frequency": 2, "let_relation": "less than"}),
            ),
            ("language:response_language", json!({"language": "hi"})),
            (
                "length_constraints:number_sentences",
                json!({"num_sentences": 3, "relation": "less than"}),
            ),
            (
                "length_constraints:number_paragraphs",
                json!({"num_paragraphs": 3}),
            ),
            (
                "length_constraints:number_words",
                json!({"num_words": 30, "relation": "at least"}),
            ),
            (
                "length_constraints:nth_paragraph_first_word",
                json!({"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "So"}),
            ),
            (
                "detectable_content:number_placeholders",
                json!({"num_placeholders": 1}),
            ),
            (
                "detectable_content:postscript",
                json!({"postscript_marker": "P.S."}),
            ),
            (
                "detectable_format:number_bullet_lists",
                json!({"num_bullets": 2}),
            ),
            ("detectable_format:constrained_response", json!({})),
            (
                "detectable_format:number_highlighted_sections",
                json!({"num_highlights": 2}),
            ),
            (
                "detectable_format:multiple_sections",
                json!({"section_spliter": "Section", "num_sections": 2}),
            ),
            ("detectable_format:json_format", json!({})),
            ("detectable_format:title", json!({})),
            ("combination:two_responses", json!({})),
            (
                "combination:repeat_prompt",
                json!({"prompt_to_repeat": "Say hi."}),
            ),
            ("startend:end_checker", json!({"end_phrase": "Bye."})),
            (
                "change_case:capital_word_frequency",
                json!({"capital_frequency": 2, "capital_relation": "at least"}),
            ),
            ("change_case:english_capital", json!({})),
            ("change_case:english_lowercase", json!({})),
            ("punctuation:no_comma", json!({})),
            ("startend:quotation", json!({})),
        ];
        assert_eq!(cases.len(), INSTRUCTION_IDS.len());
        for (id, kwargs) in cases {
            assert!(INSTRUCTION_IDS.contains(&id));
            build(id, kwargs).unwrap_or_else(|err| panic!("{id}: {err}"));
        }
    }

    #[test]
    fn nulls_are_absent_and_letters_lowercase() {
        let kwargs = json!({"letter": "Q", "let_frequency": 2.0, "let_relation": "at least", "keywords": null});
        let Instruction::LetterFrequency {
            letter, frequency, ..
        } = build("keywords:letter_frequency", kwargs).unwrap()
        else {
            panic!("wrong variant")
        };
        assert_eq!((letter, frequency), ('q', 2));
    }

    #[test]
    fn bad_kwargs_are_errors_not_random_choices() {
        let err = |id, kwargs| build(id, kwargs).unwrap_err().to_string();
        assert!(err("keywords:nonsense", json!({})).contains("unknown instruction id"));
        assert!(
            err("length_constraints:number_words", json!({"num_words": 5}))
                .contains("missing kwarg `relation`")
        );
        assert!(err(
            "length_constraints:number_words",
            json!({"num_words": -1, "relation": "at least"})
        )
        .contains("non-negative"));
        assert!(err(
            "length_constraints:number_words",
            json!({"num_words": 5, "relation": "about"})
        )
        .contains("less than"));
        assert!(
            err("punctuation:no_comma", json!({"extra": 1})).contains("unexpected kwarg `extra`")
        );
        assert!(
            err("language:response_language", json!({"language": "xx"})).contains("must be one of")
        );
        assert!(err(
            "keywords:letter_frequency",
            json!({"letter": "ab", "let_frequency": 1, "let_relation": "at least"})
        )
        .contains("one character"));
        assert!(err(
            "length_constraints:nth_paragraph_first_word",
            json!({"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"})
        )
        .contains("between 1 and"));
        assert!(err("keywords:existence", json!({"keywords": []})).contains("non-empty list"));
    }

    #[test]
    fn relation_compares() {
        assert!(Relation::LessThan.holds(2, 3));
        assert!(!Relation::LessThan.holds(3, 3));
        assert!(Relation::AtLeast.holds(3, 3));
        assert!(!Relation::AtLeast.holds(2, 3));
    }
}
