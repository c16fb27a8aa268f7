//! Whether a change in prompt-level accuracy between two evaluations of the same prompts
//! (a model before and after training, two ablation arms) is more than noise: the exact
//! McNemar test on the per-prompt verdicts. Only the discordant prompts carry evidence —
//! `gained` (failed before, passes after) and `lost` (passed before, fails after); under
//! "no change" each discordant prompt is as likely to go either way, so the two-sided
//! p-value is the binomial tail of `min(gained, lost)` in `gained + lost` fair coin flips.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::scoring::{Evaluation, PromptResult};

/// The two-sided exact McNemar p-value for `gained` and `lost` discordant pairs:
/// `min(1, 2 · Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b + c))`.
///
/// The terms are summed in log space (log C(n, i) built up term by term): C(541, 270)
/// overflows f64 while 2^-541 does not, and the rounding stays far below 1e-9 relative
/// for any n IFEval can produce.
pub fn mcnemar_exact_p(gained: usize, lost: usize) -> f64 {
    let n = gained + lost;
    let k = gained.min(lost);
    let log_half_n = n as f64 * std::f64::consts::LN_2;
    // log of C(n, i) / 2^n for i = 0..=k; increasing in i because k <= n / 2.
    let mut log_terms = Vec::with_capacity(k + 1);
    let mut log_choose = 0.0;
    for i in 0..=k {
        if i > 0 {
            log_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        log_terms.push(log_choose - log_half_n);
    }
    let largest = log_terms[k];
    let scaled: f64 = log_terms.iter().map(|t| (t - largest).exp()).sum();
    (2.0 * largest.exp() * scaled).min(1.0)
}

/// Prompt-level change in one scoring mode (strict or loose) between two evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromptChange {
    /// Prompts with every instruction followed, before and after.
    pub passed_before: usize,
    pub passed_after: usize,
    /// Prompts that failed before and pass after.
    pub gained: usize,
    /// Prompts that passed before and fail after.
    pub lost: usize,
    /// Two-sided exact McNemar p-value on `gained` against `lost`.
    pub p_value: f64,
}

impl PromptChange {
    fn new(pairs: impl Iterator<Item = (bool, bool)>) -> Self {
        let (mut passed_before, mut passed_after, mut gained, mut lost) = (0, 0, 0, 0);
        for (before, after) in pairs {
            passed_before += usize::from(before);
            passed_after += usize::from(after);
            gained += usize::from(!before && after);
            lost += usize::from(before && !after);
        }
        PromptChange {
            passed_before,
            passed_after,
            gained,
            lost,
            p_value: mcnemar_exact_p(gained, lost),
        }
    }

    /// "25 gained, 28 lost (net -3), exact McNemar p = 0.7838".
    pub fn line(&self) -> String {
        format!(
            "{} gained, {} lost (net {:+}), exact McNemar p = {}",
            self.gained,
            self.lost,
            self.gained as i64 - self.lost as i64,
            format_p(self.p_value)
        )
    }
}

/// A p-value for a person: four significant digits, scientific below 0.001.
pub fn format_p(p: f64) -> String {
    if p >= 1e-3 {
        format!("{:.4}", p)
    } else {
        format!("{p:.2e}")
    }
}

/// The prompt-level change between two evaluations of the same prompts, strict and loose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IfevalChange {
    /// Prompts paired (every prompt of both evaluations).
    pub prompts: usize,
    pub strict: PromptChange,
    pub loose: PromptChange,
}

impl IfevalChange {
    /// Pairs the prompts of `before` and `after` by their text (the identity IFEval's
    /// verdict files carry; the 541 prompts are distinct) and counts the changes. The two
    /// must score the same prompts with the same instructions, in any order: anything
    /// else is an error naming the first difference.
    pub fn between(before: &Evaluation, after: &Evaluation) -> Result<IfevalChange> {
        let index = |results: &[PromptResult], side: &str| -> Result<HashMap<String, usize>> {
            let mut map = HashMap::with_capacity(results.len());
            for (i, r) in results.iter().enumerate() {
                if map.insert(r.prompt.clone(), i).is_some() {
                    bail!("{side} scores the prompt {} twice", start_of(&r.prompt));
                }
            }
            Ok(map)
        };
        check_modes_agree(before, "before")?;
        check_modes_agree(after, "after")?;
        let after_index = index(&after.loose, "after")?;
        let before_index = index(&before.loose, "before")?;
        let only_before = before
            .loose
            .iter()
            .filter(|r| !after_index.contains_key(&r.prompt))
            .count();
        let only_after = after
            .loose
            .iter()
            .filter(|r| !before_index.contains_key(&r.prompt))
            .count();
        if only_before > 0 || only_after > 0 {
            let first = before
                .loose
                .iter()
                .find(|r| !after_index.contains_key(&r.prompt))
                .or_else(|| {
                    after
                        .loose
                        .iter()
                        .find(|r| !before_index.contains_key(&r.prompt))
                })
                .map(|r| start_of(&r.prompt))
                .unwrap_or_default();
            bail!(
                "before and after score different prompts ({} and {}; {only_before} only \
                 before, {only_after} only after, e.g. {first}): compare evaluations of the \
                 same prompts",
                before.loose.len(),
                after.loose.len()
            );
        }
        // (before index, after index) per prompt, in the before evaluation's order.
        let pairs: Vec<(usize, usize)> = before
            .loose
            .iter()
            .enumerate()
            .map(|(i, r)| (i, after_index[&r.prompt]))
            .collect();
        for &(b, a) in &pairs {
            let (b, a) = (&before.loose[b], &after.loose[a]);
            if b.instruction_id_list != a.instruction_id_list {
                bail!(
                    "the prompt {} carries instructions {:?} before but {:?} after",
                    start_of(&b.prompt),
                    b.instruction_id_list,
                    a.instruction_id_list
                );
            }
        }
        let change = |b: &[PromptResult], a: &[PromptResult]| {
            PromptChange::new(pairs.iter().map(|&(i, j)| {
                (
                    b[i].follow_all_instructions(),
                    a[j].follow_all_instructions(),
                )
            }))
        };
        Ok(IfevalChange {
            prompts: pairs.len(),
            strict: change(&before.strict, &after.strict),
            loose: change(&before.loose, &after.loose),
        })
    }
}

/// The strict and loose verdicts of one evaluation are on the same prompts in the same
/// order (as `write_results` writes them).
fn check_modes_agree(evaluation: &Evaluation, side: &str) -> Result<()> {
    if evaluation.strict.len() != evaluation.loose.len() {
        bail!(
            "{side}: {} strict verdicts but {} loose ones",
            evaluation.strict.len(),
            evaluation.loose.len()
        );
    }
    if let Some((s, _)) = evaluation
        .strict
        .iter()
        .zip(&evaluation.loose)
        .find(|(s, l)| s.prompt != l.prompt)
    {
        bail!(
            "{side}: the strict and loose verdicts are not on the same prompts in the same \
             order (at {})",
            start_of(&s.prompt)
        );
    }
    Ok(())
}

/// The first 60 characters of a prompt, quoted, for error messages.
fn start_of(prompt: &str) -> String {
    let start: String = prompt.chars().take(60).collect();
    if start.len() < prompt.len() {
        format!("{start:?}...")
    } else {
        format!("{start:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn exact_p_matches_hand_computed_values() {
        // Python: from math import comb; from fractions import Fraction
        //   p = lambda b, c: min(1, 2 * Fraction(sum(comb(b + c, i)
        //                      for i in range(min(b, c) + 1)), 2 ** (b + c)))
        // float(p(25, 28)) == 0.7838463022094988 (issue 16's real run: 25 gained, 28 lost)
        assert!(close(mcnemar_exact_p(25, 28), 0.7838463022094988, 1e-9));
        assert!(close(mcnemar_exact_p(28, 25), 0.7838463022094988, 1e-9));
        assert_eq!(mcnemar_exact_p(0, 0), 1.0);
        // 2 * C(10, 0) / 2^10
        assert!(close(mcnemar_exact_p(10, 0), 2.0 / 1024.0, 1e-12));
        assert!(close(mcnemar_exact_p(0, 10), 2.0 / 1024.0, 1e-12));
        // float(p(250, 291)), float(p(40, 70)), float(p(0, 541)) == 2 ** -540
        assert!(close(mcnemar_exact_p(250, 291), 0.08538639745779442, 1e-9));
        assert!(close(mcnemar_exact_p(40, 70), 0.005447429511444482, 1e-9));
        assert!(close(mcnemar_exact_p(0, 541), 2.778448436856347e-163, 1e-9));
        // Ties and near-ties clamp at 1.
        assert_eq!(mcnemar_exact_p(5, 5), 1.0);
        assert_eq!(mcnemar_exact_p(1, 2), 1.0);
        assert_eq!(mcnemar_exact_p(270, 271), 1.0);
    }

    #[test]
    fn p_values_print_readably() {
        assert_eq!(format_p(0.7838463022094988), "0.7838");
        assert_eq!(format_p(2.0 / 1024.0), "0.0020");
        assert_eq!(format_p(2.778448436856347e-163), "2.78e-163");
    }

    fn result(prompt: &str, ids: &[&str], followed: &[bool]) -> PromptResult {
        PromptResult {
            prompt: prompt.into(),
            response: String::new(),
            instruction_id_list: ids.iter().map(|s| s.to_string()).collect(),
            follow_instruction_list: followed.to_vec(),
        }
    }

    /// An evaluation whose strict verdicts are the loose ones with `strict_off` prompts
    /// failing.
    fn evaluation(rows: &[(&str, bool)], strict_off: &[&str]) -> Evaluation {
        let loose: Vec<PromptResult> = rows
            .iter()
            .map(|&(p, pass)| result(p, &["punctuation:no_comma"], &[pass]))
            .collect();
        let strict = loose
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if strict_off.contains(&r.prompt.as_str()) {
                    r.follow_instruction_list = vec![false];
                }
                r
            })
            .collect();
        Evaluation { strict, loose }
    }

    #[test]
    fn pairs_prompts_by_text_in_any_order() {
        let before = evaluation(&[("a", true), ("b", false), ("c", false), ("d", true)], &[]);
        // Reordered: c and b gained, a lost, d kept.
        let after = evaluation(
            &[("d", true), ("c", true), ("b", true), ("a", false)],
            &["b"],
        );
        let change = IfevalChange::between(&before, &after).unwrap();
        assert_eq!(change.prompts, 4);
        assert_eq!(
            (
                change.loose.passed_before,
                change.loose.passed_after,
                change.loose.gained,
                change.loose.lost
            ),
            (2, 3, 2, 1)
        );
        assert_eq!((change.strict.gained, change.strict.lost), (1, 1));
        assert_eq!(change.loose.p_value, 1.0);
        assert!(change.loose.line().starts_with("2 gained, 1 lost (net +1)"));
    }

    #[test]
    fn refuses_different_prompt_sets_and_instructions() {
        let before = evaluation(&[("a", true), ("b", false)], &[]);
        let after = evaluation(&[("a", true), ("x", false)], &[]);
        let err = IfevalChange::between(&before, &after)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different prompts"), "{err}");
        assert!(err.contains("1 only before, 1 only after"), "{err}");
        let fewer = evaluation(&[("a", true)], &[]);
        assert!(IfevalChange::between(&before, &fewer).is_err());

        let mut other = evaluation(&[("a", true), ("b", false)], &[]);
        other.loose[1].instruction_id_list = vec!["startend:quotation".into()];
        other.strict[1].instruction_id_list = vec!["startend:quotation".into()];
        let err = IfevalChange::between(&before, &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("carries instructions"), "{err}");

        let twice = evaluation(&[("a", true), ("a", false)], &[]);
        let err = IfevalChange::between(&twice, &before)
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }
}
