//! Two IFEval evaluations of the same prompts side by side (`autoif eval compare`): the
//! four headline accuracies and every instruction type before and after, and the paired
//! prompt-level change with its exact McNemar p-value.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::coverage::CoverageSplit;
use super::paired::IfevalChange;
use super::results::read_evaluation;
use super::scoring::Summary;

/// Both evaluations' scores and the paired change between them.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub before: Summary,
    pub after: Summary,
    pub change: IfevalChange,
    /// The per-type split by the training instructions' `ifeval_types`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<CoverageSplit>,
}

impl Comparison {
    /// Reads the verdicts of two evaluation folders (`autoif eval ifeval --out`, a run's
    /// `ifeval_before/` and `ifeval_after/`) and pairs them.
    pub fn of_folders(before: &Path, after: &Path) -> Result<Comparison> {
        let (b, a) = (read_evaluation(before)?, read_evaluation(after)?);
        let change = IfevalChange::between(&b, &a).with_context(|| {
            format!(
                "{} and {}: cannot pair the IFEval verdicts",
                before.display(),
                after.display()
            )
        })?;
        Ok(Comparison {
            before: Summary::new(&b),
            after: Summary::new(&a),
            change,
            coverage: None,
        })
    }

    /// Adds the per-type split by the IFEval types training covered.
    pub fn with_training_types(mut self, types: &BTreeSet<String>) -> Comparison {
        self.coverage = Some(CoverageSplit::new(
            types,
            Some(&self.before),
            Some(&self.after),
        ));
        self
    }

    /// The comparison as tables for a person.
    pub fn table(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        let pct = |x: f64| format!("{:.2}", 100.0 * x);
        let points = |before: f64, after: f64| format!("{:+.2}", 100.0 * (after - before));
        let mut out = format!(
            "IFEval: {} prompts, {} instructions, before → after\n\n{:<36}{:>9}{:>9}{:>9}\n",
            self.change.prompts, b.instructions, "accuracy (%)", "before", "after", "change"
        );
        for (name, before, after) in [
            (
                "prompt-level strict",
                b.prompt_level_strict_acc,
                a.prompt_level_strict_acc,
            ),
            (
                "prompt-level loose",
                b.prompt_level_loose_acc,
                a.prompt_level_loose_acc,
            ),
            (
                "instruction-level strict",
                b.inst_level_strict_acc,
                a.inst_level_strict_acc,
            ),
            (
                "instruction-level loose",
                b.inst_level_loose_acc,
                a.inst_level_loose_acc,
            ),
        ] {
            out.push_str(&format!(
                "{name:<36}{:>9}{:>9}{:>9}\n",
                pct(before),
                pct(after),
                points(before, after)
            ));
        }
        out.push_str(&format!(
            "\nprompt level, paired:\n  strict: {}\n  loose:  {}\n",
            self.change.strict.line(),
            self.change.loose.line()
        ));
        out.push_str(&format!(
            "\n{:<45}{:>6}{:>18}{:>18}\n",
            "instruction type", "n", "strict b → a", "loose b → a"
        ));
        let types: BTreeSet<&String> = b
            .per_instruction_type
            .keys()
            .chain(a.per_instruction_type.keys())
            .collect();
        for t in types {
            let (tb, ta) = (b.per_instruction_type.get(t), a.per_instruction_type.get(t));
            let arrow = |f: fn(&super::Accuracy) -> f64| {
                let side = |x: Option<&super::Accuracy>| x.map_or("-".into(), |x| pct(f(x)));
                format!("{} → {}", side(tb), side(ta))
            };
            let marker = match &self.coverage {
                Some(c) if c.covers(t) => " *",
                _ => "",
            };
            out.push_str(&format!(
                "{:<45}{:>6}{:>18}{:>18}\n",
                format!("{t}{marker}"),
                tb.or(ta).map_or(0, |x| x.count),
                arrow(|x| x.strict),
                arrow(|x| x.loose)
            ));
        }
        if let Some(coverage) = &self.coverage {
            out.push_str("(* covered by the training instructions)\n\n");
            out.push_str(&coverage.table());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::parse_input_data;
    use super::super::results::write_results;
    use super::super::scoring::evaluate;
    use super::*;

    fn write(dir: &Path, responses: &[&str]) {
        let prompts = parse_input_data(
            "{\"key\": 1, \"prompt\": \"P1\", \"instruction_id_list\": [\"punctuation:no_comma\"], \"kwargs\": [{}]}\n\
             {\"key\": 2, \"prompt\": \"P2\", \"instruction_id_list\": [\"startend:quotation\"], \"kwargs\": [{}]}",
            "test",
        )
        .unwrap();
        let evaluation = evaluate(&prompts, responses);
        let owned: Vec<String> = responses.iter().map(|r| r.to_string()).collect();
        write_results(
            dir,
            &prompts,
            &owned,
            &evaluation,
            &Summary::new(&evaluation),
            Default::default(),
        )
        .unwrap();
    }

    #[test]
    fn compares_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (before, after) = (dir.path().join("before"), dir.path().join("after"));
        write(&before, &["a, b", "\"quoted\""]);
        write(&after, &["a b", "not quoted"]);
        let types: BTreeSet<String> = ["punctuation:no_comma".to_string()].into();
        let comparison = Comparison::of_folders(&before, &after)
            .unwrap()
            .with_training_types(&types);
        assert_eq!(
            (comparison.change.loose.gained, comparison.change.loose.lost),
            (1, 1)
        );
        let table = comparison.table();
        assert!(table.contains("1 gained, 1 lost (net +0)"), "{table}");
        assert!(table.contains("punctuation:no_comma *"), "{table}");
        assert!(
            table.contains("covered by training instructions"),
            "{table}"
        );

        std::fs::remove_file(after.join("eval_results_strict.jsonl")).unwrap();
        let err = format!("{:#}", Comparison::of_folders(&before, &after).unwrap_err());
        assert!(
            err.contains("eval_results_strict.jsonl: cannot read"),
            "{err}"
        );
    }
}
