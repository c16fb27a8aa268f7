//! Word n-gram overlap with a fixed set of reference texts (the evaluation prompts of
//! decontamination).
//!
//! Words are the lowercased runs of letters and digits (Unicode): case, punctuation,
//! markdown and line breaks cannot hide a copied passage, and an apostrophe splits a
//! word (`doesn't` → `doesn`, `t`) the same way on both sides. Every window of `n` words
//! of the references is hashed once into a map; a text is then scanned window by window,
//! linear in its length, and a hash hit is confirmed word by word, so a hash collision
//! never drops anything. A reference shorter than `n` words is one window of its own
//! length: a text that contains all of it, in order, overlaps it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The words of `text`: lowercased runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A window of words a text shares with a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    /// Index of the reference in the list the index was built from.
    pub reference: usize,
    /// The shared words, normalised, joined by spaces.
    pub ngram: String,
}

/// The hashed word windows of the references.
pub struct NgramIndex {
    references: Vec<Vec<String>>,
    /// Window length (`n`, and the length of each reference shorter than `n`) →
    /// window hash → where the window first occurs (reference, first word).
    windows: BTreeMap<usize, HashMap<u64, (usize, usize)>>,
}

impl NgramIndex {
    /// Indexes the `n`-word windows of `references` (`n` ≥ 1).
    pub fn new(references: &[String], n: usize) -> Self {
        assert!(n >= 1, "an n-gram has at least one word");
        let references: Vec<Vec<String>> = references.iter().map(|t| words(t)).collect();
        let mut windows: BTreeMap<usize, HashMap<u64, (usize, usize)>> = BTreeMap::new();
        for (r, ws) in references.iter().enumerate() {
            if ws.is_empty() {
                continue;
            }
            let len = n.min(ws.len());
            let hashes = word_hashes(ws);
            let map = windows.entry(len).or_default();
            for start in 0..=ws.len() - len {
                map.entry(window_hash(&hashes[start..start + len]))
                    .or_insert((r, start));
            }
        }
        Self {
            references,
            windows,
        }
    }

    /// The first window of `text` (longest window length first) found in a reference.
    pub fn find(&self, text: &str) -> Option<Overlap> {
        let ws = words(text);
        let hashes = word_hashes(&ws);
        for (&len, map) in self.windows.iter().rev() {
            if ws.len() < len {
                continue;
            }
            for start in 0..=ws.len() - len {
                let Some(&(r, at)) = map.get(&window_hash(&hashes[start..start + len])) else {
                    continue;
                };
                let window = &ws[start..start + len];
                if self.references[r][at..at + len] == *window {
                    return Some(Overlap {
                        reference: r,
                        ngram: window.join(" "),
                    });
                }
            }
        }
        None
    }
}

/// One hash per word, so a window's hash combines `n` numbers instead of `n` strings.
fn word_hashes(words: &[String]) -> Vec<u64> {
    words
        .iter()
        .map(|w| {
            let mut h = DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

fn window_hash(hashes: &[u64]) -> u64 {
    let mut h = DefaultHasher::new();
    hashes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "Write a 300+ word summary of the wikipedia page \
        \"https://en.wikipedia.org/wiki/Raymond_III,_Count_of_Tripoli\". \
        Do not use any commas and highlight at least 3 sections that has titles in markdown format.";

    fn index(n: usize) -> NgramIndex {
        NgramIndex::new(&[PROMPT.to_string()], n)
    }

    /// The first `k` words of `text` after the first `skip`, as plain text.
    fn span(text: &str, skip: usize, k: usize) -> String {
        words(text)[skip..skip + k].join(" ")
    }

    #[test]
    fn words_are_lowercased_letter_and_digit_runs() {
        assert_eq!(
            words("Don't STOP—at 300+ words,\n**Bold** café_2"),
            ["don", "t", "stop", "at", "300", "words", "bold", "café", "2"]
        );
        assert!(words(" ,.; \n").is_empty());
    }

    #[test]
    fn a_shared_13_gram_is_found_and_a_12_gram_is_not() {
        let idx = index(13);
        let thirteen = format!("Sure! {} and more.", span(PROMPT, 20, 13));
        let hit = idx.find(&thirteen).expect("13 shared words");
        assert_eq!(hit.reference, 0);
        assert_eq!(hit.ngram, span(PROMPT, 20, 13));
        let twelve = format!("Sure! {} and more.", span(PROMPT, 20, 12));
        assert_eq!(idx.find(&twelve), None);
        assert_eq!(idx.find(""), None);
    }

    #[test]
    fn case_and_punctuation_do_not_hide_a_copy() {
        let shouted = "DO NOT use any commas, and HIGHLIGHT at least 3 sections that has \
            TITLES in Markdown format!!";
        assert!(index(13).find(shouted).is_some());
    }

    #[test]
    fn the_window_length_is_configurable() {
        let five = format!("x {} y", span(PROMPT, 3, 5));
        assert!(index(5).find(&five).is_some());
        assert!(index(6).find(&five).is_none());
    }

    #[test]
    fn a_reference_shorter_than_n_matches_only_whole() {
        let idx = NgramIndex::new(
            &["Write a riddle about Camilla that doesn't use commas.".into()],
            13,
        );
        let whole = "Here: write a riddle about Camilla that doesn't use commas, please.";
        assert_eq!(
            idx.find(whole).map(|o| o.ngram),
            Some("write a riddle about camilla that doesn t use commas".into())
        );
        assert_eq!(
            idx.find("Write a riddle about Camilla that does use commas."),
            None
        );
    }

    #[test]
    fn the_overlap_names_its_reference() {
        let refs = ["one two three".to_string(), "four five six".to_string()];
        let idx = NgramIndex::new(&refs, 2);
        assert_eq!(idx.find("x five six").unwrap().reference, 1);
        assert_eq!(idx.find("three four"), None);
    }
}
