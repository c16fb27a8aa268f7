//! Composed instructions for the `queries` stage: two or three verified instructions on
//! one query, all of which the response must follow. IFEval's prompts carry one to three
//! instructions and its prompt-level score needs every one followed; pairs of one
//! instruction never train that.
//!
//! Compatibility is shown, not guessed: a set is composed only when one of its
//! instructions' correct test cases (kept by cross-validation) passes every function of
//! every instruction in the set, a witness that one response can follow them all. Sets
//! such as "all lowercase" + "all capitals" never have one; some compatible sets lack a
//! witness among the cases and are missed too, which costs variety, not correctness.

use anyhow::Result;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use super::crossval::Validated;
use super::funnel::FunnelRow;
use super::queries::QueryPair;
use super::short_id;
use crate::train::autoif_rules::capitalise;
use crate::verify::{Execute, FunctionRun, Outcome};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeConfig {
    /// Composed (instructions, query) pairs to add; 0 composes none.
    pub count: usize,
    /// Instructions per composed pair: 2 up to this (IFEval's prompts have up to 3).
    pub max_instructions: usize,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        Self {
            count: 0,
            max_instructions: 3,
        }
    }
}

/// Which witness texts pass every function of one instruction, as a bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Followed(Vec<u64>);

impl Followed {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn and(&self, other: &Followed) -> Followed {
        Followed(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }

    fn any(&self) -> bool {
        self.0.iter().any(|&w| w != 0)
    }
}

/// `count` composed pairs over `instructions` and `queries`, drawn with `seed`, and the
/// funnel row counting them. Each draw takes a size from 2 to `max_instructions`, a pair
/// with a witness, then further instructions that keep one (a size no set reaches ends
/// smaller), and a query; a repeated (set, query) is drawn again.
pub fn compose(
    instructions: &[Validated],
    queries: &[String],
    cfg: &ComposeConfig,
    seed: u64,
    execute: &mut Execute,
) -> Result<(Vec<QueryPair>, FunnelRow)> {
    let mut row = FunnelRow::new(super::queries::STAGE, "composed");
    if cfg.count == 0 || instructions.len() < 2 || queries.is_empty() {
        return Ok((Vec::new(), row));
    }
    let followed = followed_witnesses(instructions, execute)?;
    let compatible: Vec<(usize, usize)> = (0..instructions.len())
        .flat_map(|i| (i + 1..instructions.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| followed[i].and(&followed[j]).any())
        .collect();
    if compatible.is_empty() {
        super::warn_empty(
            super::queries::STAGE,
            "no two instructions share a test case that follows both; nothing composed",
        );
        return Ok((Vec::new(), row));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    let max = cfg.max_instructions.max(2);
    // Bounded: when few distinct (set, query) combinations exist, fewer are made.
    for _ in 0..cfg.count * 20 {
        if pairs.len() == cfg.count {
            break;
        }
        let &(i, j) = compatible.choose(&mut rng).expect("not empty");
        let mut set = vec![i, j];
        let mut shared = followed[i].and(&followed[j]);
        let size = rng.random_range(2..=max);
        while set.len() < size {
            let more: Vec<usize> = (0..instructions.len())
                .filter(|k| !set.contains(k) && shared.and(&followed[*k]).any())
                .collect();
            let Some(&k) = more.choose(&mut rng) else {
                break;
            };
            set.push(k);
            shared = shared.and(&followed[k]);
        }
        set.shuffle(&mut rng);
        let query = queries.choose(&mut rng).expect("not empty");
        let mut key: Vec<usize> = set.clone();
        key.sort_unstable();
        if !seen.insert((key, query.clone())) {
            continue;
        }
        row.keep();
        pairs.push(composed_pair(
            &set.iter().map(|&k| &instructions[k]).collect::<Vec<_>>(),
            query,
        ));
    }
    Ok((pairs, row))
}

/// For every instruction, the correct test cases of all instructions that pass every one
/// of its functions (a call that raises counts as not passing).
fn followed_witnesses(instructions: &[Validated], execute: &mut Execute) -> Result<Vec<Followed>> {
    let mut texts: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for case in instructions.iter().flat_map(|v| &v.cases) {
        if case.output && !case.input.trim().is_empty() && seen.insert(case.input.as_str()) {
            texts.push(case.input.clone());
        }
    }
    let jobs: Vec<FunctionRun> = instructions
        .iter()
        .flat_map(|v| &v.funcs)
        .map(|f| FunctionRun {
            func: f.source.clone(),
            inputs: texts.clone(),
        })
        .collect();
    let verdicts = if jobs.is_empty() {
        Vec::new()
    } else {
        execute(&jobs)?
    };
    let mut verdicts = verdicts.into_iter();
    Ok(instructions
        .iter()
        .map(|v| {
            let per_func: Vec<_> = verdicts.by_ref().take(v.funcs.len()).collect();
            let mut followed = Followed::new(texts.len());
            for t in 0..texts.len() {
                if !per_func.is_empty() && per_func.iter().all(|vs| vs[t].outcome == Outcome::Pass)
                {
                    followed.set(t);
                }
            }
            followed
        })
        .collect())
}

/// One pair asking for every instruction of `set` on `query`: the instructions joined as
/// sentences, their functions in order with `parts` saying whose is whose, and every
/// IFEval type any of them names.
fn composed_pair(set: &[&Validated], query: &str) -> QueryPair {
    let instruction_id = set
        .iter()
        .map(|v| v.id.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let instruction = set
        .iter()
        .map(|v| capitalise(v.instruction.trim().trim_end_matches('.')))
        .collect::<Vec<_>>()
        .join(". ");
    let query_id = short_id("q", query);
    QueryPair {
        id: format!("{instruction_id}-{query_id}"),
        instruction_id,
        query_id,
        instruction,
        query: query.to_string(),
        funcs: set
            .iter()
            .flat_map(|v| v.funcs.iter().map(|f| f.source.clone()))
            .collect(),
        parts: set.iter().map(|v| v.funcs.len()).collect(),
        ifeval_types: set.iter().fold(Vec::new(), |mut types, v| {
            for t in &v.ifeval_types {
                if !types.contains(t) {
                    types.push(t.clone());
                }
            }
            types
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::crossval::{KeptCase, ScoredFunc};
    use crate::verify::Verdict;

    /// An instruction whose one function is `name`, with correct cases `cases`.
    fn instruction(id: &str, name: &str, cases: &[&str]) -> Validated {
        Validated {
            id: id.into(),
            instruction: format!("follow {name}."),
            funcs: vec![ScoredFunc {
                source: name.into(),
                accuracy: 1.0,
            }],
            cases: cases
                .iter()
                .map(|c| KeptCase {
                    input: c.to_string(),
                    output: true,
                    pass_rate: 1.0,
                })
                .collect(),
            ifeval_types: Vec::new(),
        }
    }

    /// Functions by name: `lower` (no capitals), `upper` (no lowercase), `short`
    /// (under four words).
    fn run(jobs: &[FunctionRun]) -> Result<Vec<Vec<Verdict>>> {
        Ok(jobs
            .iter()
            .map(|j| {
                j.inputs
                    .iter()
                    .map(|t| {
                        let ok = match j.func.as_str() {
                            "lower" => !t.chars().any(|c| c.is_uppercase()),
                            "upper" => !t.chars().any(|c| c.is_lowercase()),
                            "short" => t.split_whitespace().count() < 4,
                            _ => false,
                        };
                        if ok {
                            Verdict::pass()
                        } else {
                            Verdict::fail()
                        }
                    })
                    .collect()
            })
            .collect())
    }

    #[test]
    fn only_sets_with_a_witness_are_composed() {
        let instructions = [
            instruction("lo", "lower", &["all quiet here today friend"]),
            instruction("up", "upper", &["LOUD AND CLEAR NOW PLEASE"]),
            instruction("sh", "short", &["tiny one", "SO SHORT"]),
        ];
        let queries = vec!["What is rain?".to_string(), "Why is the sky blue?".into()];
        let cfg = ComposeConfig {
            count: 4,
            max_instructions: 3,
        };
        let (pairs, row) = compose(&instructions, &queries, &cfg, 7, &mut run).unwrap();
        // lo+sh ("tiny one") and up+sh ("SO SHORT") have witnesses, lo+up none: at most
        // 2 sets × 2 queries exist.
        assert_eq!(pairs.len(), 4);
        assert_eq!(row.output, 4);
        for p in &pairs {
            let mut ids: Vec<&str> = p.instruction_id.split('+').collect();
            ids.sort_unstable();
            assert!(ids == ["lo", "sh"] || ids == ["sh", "up"], "{ids:?}");
            assert_eq!(p.parts, vec![1, 1]);
            assert_eq!(p.funcs.len(), 2);
            assert!(p.instruction.starts_with("Follow "));
            assert!(p.instruction.contains(". Follow "));
        }
        let distinct: HashSet<_> = pairs.iter().map(|p| p.id.clone()).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn nothing_is_composed_without_a_witness() {
        let instructions = [
            instruction("lo", "lower", &["quiet"]),
            instruction("up", "upper", &["LOUD"]),
        ];
        let cfg = ComposeConfig {
            count: 3,
            max_instructions: 2,
        };
        let (pairs, row) =
            compose(&instructions, &["What is rain?".into()], &cfg, 1, &mut run).unwrap();
        assert!(pairs.is_empty());
        assert_eq!(row.output, 0);
    }
}
