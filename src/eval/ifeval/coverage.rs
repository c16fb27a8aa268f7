//! Whether a gain generalises: IFEval's per-instruction-type accuracies split into the
//! types the training instructions correspond to ("covered") and the rest. A gain only on
//! covered types shows the loop taught what it trained; a gain on the others shows it
//! generalised beyond that.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::scoring::{Accuracy, Summary};

/// Instruction-level accuracy of a group of IFEval instruction types, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeGroup {
    /// The group's instruction types that occur in the scored prompts.
    pub types: Vec<String>,
    /// Over every instruction of those types; absent when that evaluation did not run.
    pub before: Option<Accuracy>,
    pub after: Option<Accuracy>,
}

/// The per-type table in two groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageSplit {
    /// The IFEval instruction types the training instructions name (`ifeval_types` of
    /// the verified instructions), whether or not the scored prompts carry them.
    pub training_types: Vec<String>,
    pub covered: TypeGroup,
    pub not_covered: TypeGroup,
}

impl CoverageSplit {
    /// Splits the per-type accuracies of `before` and `after` (either may be absent) by
    /// whether `training_types` holds the type.
    pub fn new(
        training_types: &BTreeSet<String>,
        before: Option<&Summary>,
        after: Option<&Summary>,
    ) -> Self {
        let scored: BTreeSet<&String> = [before, after]
            .into_iter()
            .flatten()
            .flat_map(|s| s.per_instruction_type.keys())
            .collect();
        let group = |covered: bool| {
            let types: Vec<String> = scored
                .iter()
                .filter(|t| training_types.contains(t.as_str()) == covered)
                .map(|t| t.to_string())
                .collect();
            TypeGroup {
                before: before.map(|s| pooled(&s.per_instruction_type, &types)),
                after: after.map(|s| pooled(&s.per_instruction_type, &types)),
                types,
            }
        };
        CoverageSplit {
            training_types: training_types.iter().cloned().collect(),
            covered: group(true),
            not_covered: group(false),
        }
    }

    pub fn covers(&self, instruction_type: &str) -> bool {
        self.training_types.iter().any(|t| t == instruction_type)
    }

    /// Two lines for a person: each group's instruction-level accuracy before and after.
    pub fn table(&self) -> String {
        let pct = |a: Option<Accuracy>, f: fn(&Accuracy) -> f64| {
            a.map_or("-".to_string(), |a| format!("{:.2}", 100.0 * f(&a)))
        };
        let mut out = format!(
            "{:<38}{:>6}{:>6}{:>18}{:>18}\n",
            "instruction level, by type group", "types", "n", "strict b → a", "loose b → a"
        );
        for (name, group) in [
            ("covered by training instructions", &self.covered),
            ("not covered", &self.not_covered),
        ] {
            let n = group.before.or(group.after).map_or(0, |a| a.count);
            let arrow = |f: fn(&Accuracy) -> f64| {
                format!("{} → {}", pct(group.before, f), pct(group.after, f))
            };
            out.push_str(&format!(
                "{name:<38}{:>6}{n:>6}{:>18}{:>18}\n",
                group.types.len(),
                arrow(|a| a.strict),
                arrow(|a| a.loose)
            ));
        }
        if self.training_types.is_empty() {
            out.push_str("(the training instructions name no IFEval instruction type)\n");
        }
        out
    }
}

/// The pooled accuracy of the instructions of `types`: per-type fractions back to counts
/// (exact: each is a count over at most a few hundred), summed.
fn pooled(per_type: &BTreeMap<String, Accuracy>, types: &[String]) -> Accuracy {
    let (mut count, mut strict, mut loose) = (0usize, 0.0f64, 0.0f64);
    for accuracy in types.iter().filter_map(|t| per_type.get(t)) {
        count += accuracy.count;
        strict += (accuracy.strict * accuracy.count as f64).round();
        loose += (accuracy.loose * accuracy.count as f64).round();
    }
    let share = |followed: f64| {
        if count == 0 {
            0.0
        } else {
            followed / count as f64
        }
    };
    Accuracy {
        count,
        strict: share(strict),
        loose: share(loose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rows: &[(&str, usize, f64, f64)]) -> Summary {
        Summary {
            prompts: 10,
            instructions: rows.iter().map(|r| r.1).sum(),
            prompt_level_strict_acc: 0.0,
            prompt_level_loose_acc: 0.0,
            inst_level_strict_acc: 0.0,
            inst_level_loose_acc: 0.0,
            per_instruction_type: rows
                .iter()
                .map(|&(t, count, strict, loose)| {
                    (
                        t.to_string(),
                        Accuracy {
                            count,
                            strict,
                            loose,
                        },
                    )
                })
                .collect(),
            per_category: BTreeMap::new(),
        }
    }

    #[test]
    fn pools_each_group_by_instruction_counts() {
        let before = summary(&[
            ("punctuation:no_comma", 4, 0.25, 0.5),
            ("startend:quotation", 2, 0.0, 0.5),
            ("detectable_format:title", 3, 1.0 / 3.0, 2.0 / 3.0),
        ]);
        let after = summary(&[
            ("punctuation:no_comma", 4, 0.75, 1.0),
            ("startend:quotation", 2, 0.5, 0.5),
            ("detectable_format:title", 3, 0.0, 1.0 / 3.0),
        ]);
        let trained: BTreeSet<String> = ["punctuation:no_comma", "change_case:english_lowercase"]
            .map(String::from)
            .into();
        let split = CoverageSplit::new(&trained, Some(&before), Some(&after));
        assert_eq!(split.covered.types, ["punctuation:no_comma"]);
        assert_eq!(
            split.not_covered.types,
            ["detectable_format:title", "startend:quotation"]
        );
        assert_eq!(
            split.covered.after,
            Some(Accuracy {
                count: 4,
                strict: 0.75,
                loose: 1.0
            })
        );
        // (0 + 1) of 5 strict and (1 + 2) of 5 loose before; (1 + 0) and (1 + 1) after.
        assert_eq!(
            split.not_covered.before,
            Some(Accuracy {
                count: 5,
                strict: 0.2,
                loose: 0.6
            })
        );
        assert_eq!(
            split.not_covered.after,
            Some(Accuracy {
                count: 5,
                strict: 0.2,
                loose: 0.4
            })
        );
        assert!(split.covers("change_case:english_lowercase"));
        let table = split.table();
        assert!(table.contains("25.00 → 75.00"), "{table}");
        assert!(table.contains("60.00 → 40.00"), "{table}");
    }

    #[test]
    fn no_training_types_leaves_everything_uncovered() {
        let after = summary(&[("punctuation:no_comma", 4, 0.25, 0.5)]);
        let split = CoverageSplit::new(&BTreeSet::new(), None, Some(&after));
        assert!(split.covered.types.is_empty());
        assert_eq!(
            split.covered.after,
            Some(Accuracy {
                count: 0,
                strict: 0.0,
                loose: 0.0
            })
        );
        assert_eq!(split.covered.before, None);
        assert_eq!(split.not_covered.after.unwrap().count, 4);
        assert!(split.table().contains("name no IFEval instruction type"));
    }
}
