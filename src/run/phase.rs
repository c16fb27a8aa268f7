//! The phases of the loop, in the order they run: IFEval before, the synthesis stages,
//! SFT, offline DPO, online DPO, IFEval after, export.

use anyhow::{Context, Result};

use crate::config::RunConfig;
use crate::pipeline::Stage;

/// One step of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    IfevalBefore,
    Synthesis(Stage),
    Sft,
    Dpo,
    OnlineDpo,
    IfevalAfter,
    Export,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::IfevalBefore => "ifeval_before",
            Phase::Synthesis(stage) => stage.name(),
            Phase::Sft => "sft",
            Phase::Dpo => "dpo",
            Phase::OnlineDpo => "online_dpo",
            Phase::IfevalAfter => "ifeval_after",
            Phase::Export => "export",
        }
    }

    /// Every phase in loop order.
    pub fn all() -> Vec<Phase> {
        let mut all = vec![Phase::IfevalBefore];
        all.extend(Stage::ALL.map(Phase::Synthesis));
        all.extend([
            Phase::Sft,
            Phase::Dpo,
            Phase::OnlineDpo,
            Phase::IfevalAfter,
            Phase::Export,
        ]);
        all
    }

    pub fn from_name(name: &str) -> Result<Phase> {
        Phase::all()
            .into_iter()
            .find(|p| p.name() == name)
            .with_context(|| format!("unknown phase `{name}` in the run manifest"))
    }

    /// The phases `config` switches on, in order. Verified instructions replace the
    /// stages that write and check functions.
    pub fn plan(config: &RunConfig) -> Vec<Phase> {
        let on = &config.phases;
        let imported = config.synthesis.verified_instructions.is_some();
        Phase::all()
            .into_iter()
            .filter(|p| match p {
                Phase::IfevalBefore => on.ifeval_before,
                Phase::Synthesis(s) => {
                    on.synthesis
                        && !(imported
                            && matches!(
                                s,
                                Stage::Augment
                                    | Stage::Funcs
                                    | Stage::Crossval
                                    | Stage::Backtranslate
                            ))
                }
                Phase::Sft => on.sft,
                Phase::Dpo => on.dpo,
                Phase::OnlineDpo => on.online_dpo,
                Phase::IfevalAfter => on.ifeval_after,
                Phase::Export => on.export,
            })
            .collect()
    }
}
