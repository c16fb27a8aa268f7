//! The result of running one verification function on one input, and its JSON form
//! `{"verdict": "pass"|"fail"|"error", "error": kind-or-null, "message": str-or-null}`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a call produced no boolean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The source does not compile.
    Compile,
    /// The source runs but defines no callable `evaluate`.
    MissingEvaluate,
    /// An exception escaped `evaluate` (or the function's top-level code).
    Runtime,
    /// The wall-clock deadline (or the CPU-time backstop) passed.
    Timeout,
    /// The address-space limit was hit (`MemoryError`).
    Memory,
    /// The Python guard refused an import, builtin or attribute.
    Forbidden,
    /// `evaluate` returned something other than `True` or `False`.
    BadReturn,
    /// The worker process died during the call.
    Crashed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Compile,
        ErrorKind::MissingEvaluate,
        ErrorKind::Runtime,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::Forbidden,
        ErrorKind::BadReturn,
        ErrorKind::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Compile => "compile",
            ErrorKind::MissingEvaluate => "missing_evaluate",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::BadReturn => "bad_return",
            ErrorKind::Crashed => "crashed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Pass,
    Fail,
    Error(ErrorKind),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// A short explanation; present for errors only.
    pub message: Option<String>,
}

impl Verdict {
    pub fn pass() -> Self {
        Verdict {
            outcome: Outcome::Pass,
            message: None,
        }
    }

    pub fn fail() -> Self {
        Verdict {
            outcome: Outcome::Fail,
            message: None,
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Verdict {
            outcome: Outcome::Error(kind),
            message: Some(message.into()),
        }
    }

    pub fn is_pass(&self) -> bool {
        self.outcome == Outcome::Pass
    }

    /// The error kind, if this is an error verdict.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self.outcome {
            Outcome::Error(kind) => Some(kind),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum VerdictName {
    Pass,
    Fail,
    Error,
}

#[derive(Serialize, Deserialize)]
struct VerdictJson {
    verdict: VerdictName,
    error: Option<ErrorKind>,
    message: Option<String>,
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (verdict, error) = match self.outcome {
            Outcome::Pass => (VerdictName::Pass, None),
            Outcome::Fail => (VerdictName::Fail, None),
            Outcome::Error(kind) => (VerdictName::Error, Some(kind)),
        };
        VerdictJson {
            verdict,
            error,
            message: self.message.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = VerdictJson::deserialize(deserializer)?;
        let outcome = match (json.verdict, json.error) {
            (VerdictName::Pass, None) => Outcome::Pass,
            (VerdictName::Fail, None) => Outcome::Fail,
            (VerdictName::Error, Some(kind)) => Outcome::Error(kind),
            (VerdictName::Error, None) => {
                return Err(serde::de::Error::custom(
                    "an error verdict needs an `error` kind",
                ))
            }
            (_, Some(_)) => {
                return Err(serde::de::Error::custom(
                    "only error verdicts carry an `error` kind",
                ))
            }
        };
        Ok(Verdict {
            outcome,
            message: json.message,
        })
    }
}

/// Runs sandbox jobs: the sandbox itself, or a test's stand-in.
pub type Execute<'e> = dyn FnMut(&[super::FunctionRun]) -> anyhow::Result<Vec<Vec<Verdict>>> + 'e;

/// The released scripts' pass rate of one response: the mean of the boolean results,
/// ignoring calls that raised (0 when every call raised).
pub fn pass_rate(verdicts: &[&Verdict]) -> f64 {
    let results: Vec<f64> = verdicts
        .iter()
        .filter_map(|v| match v.outcome {
            Outcome::Pass => Some(1.0),
            Outcome::Fail => Some(0.0),
            Outcome::Error(_) => None,
        })
        .collect();
    if results.is_empty() {
        0.0
    } else {
        results.iter().sum::<f64>() / results.len() as f64
    }
}

/// Every response's pass rate over its group's functions: one sandbox job per
/// (group, function) with all of that group's responses as inputs. `groups` holds
/// (functions, responses) pairs; the result has one rate per response, in order.
pub fn pass_rates(
    groups: &[(&[String], &[String])],
    execute: &mut Execute,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let jobs: Vec<super::FunctionRun> = groups
        .iter()
        .flat_map(|(funcs, responses)| {
            funcs.iter().map(move |f| super::FunctionRun {
                func: f.clone(),
                inputs: responses.to_vec(),
            })
        })
        .collect();
    let verdicts = if jobs.is_empty() {
        Vec::new()
    } else {
        execute(&jobs)?
    };
    let mut next = 0;
    let mut rates = Vec::with_capacity(groups.len());
    for (funcs, responses) in groups {
        let per_func = &verdicts[next..next + funcs.len()];
        next += funcs.len();
        rates.push(
            (0..responses.len())
                .map(|k| pass_rate(&per_func.iter().map(|v| &v[k]).collect::<Vec<_>>()))
                .collect(),
        );
    }
    Ok(rates)
}

/// Every response's pass rate when it must follow several instructions at once. Each
/// group's functions are `parts` consecutive runs, one per instruction (no parts: one
/// instruction); a response's rate is its lowest instruction's rate, so 1 means every
/// function of every instruction passed and 0 that some instruction failed outright.
pub fn combined_pass_rates(
    groups: &[(&[String], &[usize], &[String])],
    execute: &mut Execute,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut split: Vec<(&[String], &[String])> = Vec::new();
    let mut instructions_per_group = Vec::with_capacity(groups.len());
    for (funcs, parts, responses) in groups {
        let runs = function_runs(funcs, parts)?;
        instructions_per_group.push(runs.len());
        split.extend(runs.into_iter().map(|f| (f, *responses)));
    }
    let rates = pass_rates(&split, execute)?;
    let mut rates = rates.into_iter();
    Ok(instructions_per_group
        .into_iter()
        .map(|n| {
            let per_instruction: Vec<Vec<f64>> = rates.by_ref().take(n).collect();
            (0..per_instruction[0].len())
                .map(|k| {
                    per_instruction
                        .iter()
                        .map(|r| r[k])
                        .fold(f64::INFINITY, f64::min)
                })
                .collect()
        })
        .collect())
}

/// `funcs` cut into the consecutive runs `parts` gives (all of them when `parts` is
/// empty); the lengths must add up.
pub fn function_runs<'f>(
    funcs: &'f [String],
    parts: &[usize],
) -> anyhow::Result<Vec<&'f [String]>> {
    if parts.is_empty() {
        return Ok(vec![funcs]);
    }
    if parts.iter().sum::<usize>() != funcs.len() || parts.contains(&0) {
        anyhow::bail!(
            "instruction parts {parts:?} do not split {} functions",
            funcs.len()
        );
    }
    let mut runs = Vec::with_capacity(parts.len());
    let mut start = 0;
    for &n in parts {
        runs.push(&funcs[start..start + n]);
        start += n;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_matches_the_issue() {
        let text = serde_json::to_string(&Verdict::error(ErrorKind::BadReturn, "str")).unwrap();
        assert_eq!(
            text,
            r#"{"verdict":"error","error":"bad_return","message":"str"}"#
        );
        let pass = serde_json::to_string(&Verdict::pass()).unwrap();
        assert_eq!(pass, r#"{"verdict":"pass","error":null,"message":null}"#);
        for kind in ErrorKind::ALL {
            let verdict = Verdict::error(kind, "m");
            let back: Verdict =
                serde_json::from_str(&serde_json::to_string(&verdict).unwrap()).unwrap();
            assert_eq!(back, verdict);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert!(serde_json::from_str::<Verdict>(
            r#"{"verdict":"error","error":null,"message":null}"#
        )
        .is_err());
    }

    #[test]
    fn combined_rate_is_the_weakest_instructions() {
        let funcs: Vec<String> = ["a1", "a2", "b1"].iter().map(|s| s.to_string()).collect();
        let responses = vec!["r0".to_string(), "r1".to_string()];
        // a1 passes both, a2 passes r0 only, b1 passes r1 only.
        let mut execute =
            |jobs: &[crate::verify::FunctionRun]| -> anyhow::Result<Vec<Vec<Verdict>>> {
                Ok(jobs
                    .iter()
                    .map(|j| {
                        j.inputs
                            .iter()
                            .map(|r| match (j.func.as_str(), r.as_str()) {
                                ("a1", _) | ("a2", "r0") | ("b1", "r1") => Verdict::pass(),
                                _ => Verdict::fail(),
                            })
                            .collect()
                    })
                    .collect())
            };
        let groups = [(funcs.as_slice(), &[2usize, 1][..], responses.as_slice())];
        let rates = combined_pass_rates(&groups, &mut execute).unwrap();
        assert_eq!(rates, vec![vec![0.0, 0.5]]);
        let single = [(funcs.as_slice(), &[][..], responses.as_slice())];
        let rates = combined_pass_rates(&single, &mut execute).unwrap();
        assert_eq!(rates, vec![vec![2.0 / 3.0, 2.0 / 3.0]]);
        assert!(function_runs(&funcs, &[2, 2]).is_err());
        assert!(function_runs(&funcs, &[3, 0]).is_err());
    }
}
