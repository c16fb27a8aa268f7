//! The paper's data rules that both the `datasets` stage and online DPO apply: how a
//! query and an instruction make one training prompt, and how graded samples make
//! preference pairs.

use crate::generate::FinishReason;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `s` with its first letter upper-cased.
pub fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The paper's training prompt: query then instruction, first letters upper-cased,
/// joined by a space when the query has '?' or '.', by ". " otherwise.
pub fn sft_prompt(query: &str, instruction: &str) -> String {
    let query = capitalise(query);
    let instruction = capitalise(instruction);
    if query.contains('?') || query.contains('.') {
        format!("{query} {instruction}.")
    } else {
        format!("{query}. {instruction}.")
    }
}

/// Whether a sampled response may be either side of a preference pair. A blank one
/// is no answer at all. One cut by the token limit is neither: as a chosen it teaches
/// stopping mid-sentence, and as a rejected its failed checks may be the cut's doing
/// (an unfinished ending, a word count not reached), so it is left out of both sides.
pub fn is_preference_candidate(text: &str, finish_reason: FinishReason) -> bool {
    !text.trim().is_empty() && finish_reason != FinishReason::Length
}

/// The paper's DPO sampling rule over (text, pass rate) candidates: positives have a
/// rate ≥ `chosen_min`, negatives 0; when either side has two or more, up to
/// `per_side` of each are drawn, otherwise up to one; every positive × negative
/// combination is a pair. Draws use `seed`.
pub fn mine_pairs(
    candidates: &[(String, f64)],
    chosen_min: f64,
    per_side: usize,
    seed: u64,
) -> Vec<(String, String)> {
    let mut positives: Vec<&String> = Vec::new();
    let mut negatives: Vec<&String> = Vec::new();
    for (text, rate) in candidates {
        if *rate >= chosen_min && !positives.contains(&text) {
            positives.push(text);
        } else if *rate == 0.0 && !negatives.contains(&text) {
            negatives.push(text);
        }
    }
    let take = if positives.len() >= 2 || negatives.len() >= 2 {
        per_side
    } else {
        1
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let chosen: Vec<&&String> = positives.choose_multiple(&mut rng, take).collect();
    let rejected: Vec<&&String> = negatives.choose_multiple(&mut rng, take).collect();
    let mut pairs = Vec::new();
    for c in &chosen {
        for r in &rejected {
            pairs.push((c.to_string(), r.to_string()));
        }
    }
    pairs
}
