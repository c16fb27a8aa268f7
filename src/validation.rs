//! Range checks of configuration values, collected rather than stopping at the first:
//! a run is refused with one line per bad value, each naming its key (`sft.args.lr`)
//! or, on the command line, its flag (`--lr`). Each config struct checks its own fields
//! beside its definition and nests the problems of the structs it holds under their key.
//! Imports nothing from the crate, so any module may use it.

use std::fmt::Display;

/// One bad value: where it is, what it is, why it is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The dotted key relative to the struct that found it (`lora.r`).
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// The problems of a config, in field order.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `key = value` as refused for `reason` unless `ok`.
    pub fn check(&mut self, ok: bool, key: &str, value: impl Display, reason: &str) {
        if !ok {
            self.list.push(Problem {
                key: key.to_string(),
                value: value.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    /// A count that must be at least `min`.
    pub fn at_least(&mut self, key: &str, value: usize, min: usize) {
        self.check(value >= min, key, value, &format!("must be at least {min}"));
    }

    /// A finite number above zero (learning rates, β, ε).
    pub fn positive(&mut self, key: &str, value: f64) {
        self.check(
            value.is_finite() && value > 0.0,
            key,
            value,
            "must be a finite number above 0",
        );
    }

    /// A finite number at or above zero.
    pub fn non_negative(&mut self, key: &str, value: f64) {
        self.check(
            value.is_finite() && value >= 0.0,
            key,
            value,
            "must be a finite number at or above 0",
        );
    }

    /// A number in `[low, high]`, or `[low, high)` when `high_open`.
    pub fn within(&mut self, key: &str, value: f64, low: f64, high: f64, high_open: bool) {
        let ok = value >= low
            && if high_open {
                value < high
            } else {
                value <= high
            };
        let close = if high_open { ')' } else { ']' };
        self.check(ok, key, value, &format!("must be in [{low}, {high}{close}"));
    }

    /// Adds `inner`'s problems with their keys under `prefix` (`sft.args`).
    pub fn nest(&mut self, prefix: &str, inner: Problems) {
        self.list.extend(inner.list.into_iter().map(|p| Problem {
            key: format!("{prefix}.{}", p.key),
            ..p
        }));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// One line per problem, `key = value: reason`, the key as `name` spells it.
    pub fn lines(&self, name: impl Fn(&str) -> String) -> String {
        self.list
            .iter()
            .map(|p| format!("{} = {}: {}", name(&p.key), p.value, p.reason))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Ok when there is no problem; otherwise an error of one line per problem, keys as
    /// they are.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        Err(anyhow::anyhow!(self.lines(str::to_string)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem_with_nested_keys() {
        let mut inner = Problems::new();
        inner.at_least("batch_size", 0, 1);
        inner.positive("lr", f64::NAN);
        inner.positive("beta", 0.1);
        inner.within("warmup_ratio", 1.0, 0.0, 1.0, false);
        inner.within("lora_dropout", 1.0, 0.0, 1.0, true);
        let mut outer = Problems::new();
        outer.nest("sft.args", inner);
        let err = outer.into_result().unwrap_err().to_string();
        assert_eq!(
            err,
            "sft.args.batch_size = 0: must be at least 1\n\
             sft.args.lr = NaN: must be a finite number above 0\n\
             sft.args.lora_dropout = 1: must be in [0, 1)"
        );
        assert!(Problems::new().into_result().is_ok());
    }
}
