//! The whole loop behind `autoif run`: IFEval before → the synthesis stages → SFT →
//! offline DPO → online DPO → IFEval after → export, in one run folder, on one copy of
//! the weights.
//!
//! Every phase is a manifest entry like a synthesis stage (`pending`/`running`/`done`,
//! seconds, funnel rows), so `--resume` runs what is not done. The weights are not
//! saved between phases: the adapters are (`sft/`, `dpo/`, `online_dpo/iter-N/`), and a
//! resumed run rebuilds the trained weights by replaying them onto the base in order
//! (`restore_trained_weights`). A training phase with `save_every` set continues from
//! its latest checkpoint. After every phase `summary.json` and `report.html` are
//! rewritten, so an interrupted run still shows what it did.

pub mod layout;
pub mod manifest;
pub mod phase;
pub mod report;
pub mod summary;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{RunConfig, SupervisorKind};
use crate::eval::ifeval::results::{generate_responses, write_results};
use crate::eval::ifeval::{evaluate, load_input_data, Summary as IfevalScores};
use crate::export::save_merged;
use crate::generate::openai::{Endpoint, OpenAiBackend, OpenAiConfig};
use crate::generate::{Backend, EngineOptions, LocalEngine};
use crate::model::adapter_file::load_adapter;
use crate::model::{LoadOptions, Model, ProjectionStorage};
use crate::pipeline::backtranslate::ConsistencyChecker;
use crate::pipeline::funnel::{table, DropReason, FunnelRow};
use crate::pipeline::{Pipeline, Stage};
use crate::train::adapters::merge_adapters;
use crate::train::memory_plan::{Algorithm, TrainShape};
use crate::train::online_dpo::read_verified_prompts;
use crate::train::{
    train_dpo, train_online_dpo, train_sft, DataCounts, OnlineOptions, PreferenceData, SftData,
    TrainingOptions,
};
use layout::RunLayout;
use manifest::{RunFolder, StageState};
pub use phase::Phase;
use summary::Summary;

/// The memory shapes of the training phases among `phases`, each its largest piece
/// (`TrainShape::largest_piece`) for weights loaded as `dtype`; online DPO also decodes
/// `online_dpo.batch` sequences.
pub fn training_shapes(config: &RunConfig, phases: &[Phase], dtype: DType) -> Vec<TrainShape> {
    let shape =
        |args, algorithm, gen_batch| TrainShape::largest_piece(args, algorithm, dtype, gen_batch);
    phases
        .iter()
        .filter_map(|phase| match phase {
            Phase::Sft => Some(shape(&config.sft.args, Algorithm::Sft, 0)),
            Phase::Dpo => Some(shape(&config.dpo.args, Algorithm::Dpo, 0)),
            Phase::OnlineDpo => Some(shape(
                &config.online_dpo.dpo.args,
                Algorithm::Dpo,
                config.online_dpo.batch,
            )),
            _ => None,
        })
        .collect()
}

/// The loop's state: the run folder, its config, and the trained model once loaded.
struct Loop {
    run: RunFolder,
    config: RunConfig,
    model: Option<Model>,
}

/// The phases of `run` that are not done, in order.
pub fn pending(run: &RunFolder) -> Result<Vec<Phase>> {
    run.manifest()?
        .stages
        .iter()
        .filter(|s| s.state != StageState::Done)
        .map(|s| Phase::from_name(&s.name))
        .collect()
}

/// Runs `phases` of `run` in order, then prints the funnel and the summary.
pub fn execute(run: RunFolder, phases: &[Phase]) -> Result<()> {
    let config = run.manifest()?.config;
    let mut state = Loop {
        run,
        config,
        model: None,
    };
    let mut i = 0;
    while i < phases.len() {
        // Consecutive synthesis stages share one pipeline (and one supervisor).
        let stages: Vec<Stage> = phases[i..]
            .iter()
            .map_while(|p| match p {
                Phase::Synthesis(s) => Some(*s),
                _ => None,
            })
            .collect();
        if !stages.is_empty() {
            state.synthesis(&stages)?;
            i += stages.len();
        } else {
            let phase = phases[i];
            eprintln!("phase {}", phase.name());
            let started = Instant::now();
            state.run.mark_running(phase.name())?;
            let rows = state
                .phase(phase)
                .with_context(|| format!("phase {}", phase.name()))?;
            state
                .run
                .mark_done(phase.name(), rows, started.elapsed().as_secs_f64())?;
            i += 1;
        }
        state.write_summary()?;
    }
    if phases.is_empty() {
        // A finished run resumed: its summary and report are rewritten by this version.
        state.write_summary()?;
    }
    let rows: Vec<FunnelRow> = state
        .run
        .manifest()?
        .stages
        .into_iter()
        .flat_map(|s| s.funnel)
        .collect();
    eprint!("{}", table(&rows));
    eprint!("{}", Summary::read(&state.layout())?.text());
    eprintln!(
        "run folder: {} (summary.json, report.html)",
        state.root().display()
    );
    Ok(())
}

impl Loop {
    fn root(&self) -> &Path {
        self.run.root()
    }

    fn layout(&self) -> RunLayout {
        self.run.layout()
    }

    /// The trained model, loaded on first use with the adapters of the finished training
    /// phases replayed. The phase that loads it says how to store the projections: a
    /// training phase on an int8 base has each quantized as it is read; IFEval and the
    /// synthesis read the dense weights (the trainer quantizes them later, at its first
    /// int8 phase, as it does a model loaded by an earlier phase).
    fn model(&mut self, projections: ProjectionStorage) -> Result<&mut Model> {
        if self.model.is_none() {
            let options = LoadOptions {
                projections,
                ..LoadOptions::for_device(&self.config.model.device)?
            };
            let mut model = Model::load(&self.config.model.path, &options)?;
            restore_trained_weights(&mut model, &self.run)?;
            self.model = Some(model);
        }
        Ok(self.model.as_mut().expect("just loaded"))
    }

    fn write_summary(&self) -> Result<()> {
        Summary::collect(&self.run)?.write(&self.layout())?;
        report::write_report(self.root())?;
        Ok(())
    }

    fn phase(&mut self, phase: Phase) -> Result<Vec<FunnelRow>> {
        match phase {
            Phase::IfevalBefore | Phase::IfevalAfter => self.ifeval(phase),
            Phase::Sft => self.sft(),
            Phase::Dpo => self.dpo(),
            Phase::OnlineDpo => self.online_dpo(),
            Phase::Export => self.export(),
            Phase::Synthesis(_) => unreachable!("synthesis stages run in a pipeline"),
        }
    }

    /// The synthesis stages with the configured supervisor: the trained model itself,
    /// other local weights, or an OpenAI-compatible server.
    fn synthesis(&mut self, stages: &[Stage]) -> Result<()> {
        let config = self.config.clone();
        let run = self.run.clone();
        let generates = stages.iter().any(|s| s.generates());
        let mut remote = None;
        let mut other_model = None;
        if generates {
            match config.supervisor.kind {
                SupervisorKind::OpenAi => remote = Some(remote_backend(&config)?),
                SupervisorKind::Local => {
                    other_model = Some(Model::load(
                        config.supervisor_model(),
                        &LoadOptions::for_device(&config.model.device)?,
                    )?)
                }
                SupervisorKind::SelfModel => {
                    self.model(ProjectionStorage::Dense)?;
                }
            }
        }
        let supervisor: Option<&Model> = other_model.as_ref().or(self.model.as_ref());
        let mut engine = match (&remote, generates) {
            (None, true) => supervisor.map(|m| {
                LocalEngine::new(
                    m,
                    EngineOptions {
                        max_batch: config.supervisor.batch,
                        ..EngineOptions::default()
                    },
                )
            }),
            _ => None,
        };
        let backend: Option<&mut dyn Backend> = match (&mut remote, &mut engine) {
            (Some(r), _) => Some(r),
            (None, Some(e)) => Some(e),
            (None, None) => None,
        };
        let mut pipeline = Pipeline::new(run.stage_files(), config.seed, config.synthesis, backend);
        for &stage in stages {
            eprintln!("stage {}", stage.name());
            run.run_stage(&mut pipeline, stage)?;
        }
        Ok(())
    }

    fn ifeval(&mut self, phase: Phase) -> Result<Vec<FunnelRow>> {
        let cfg = self.config.ifeval.clone();
        let mut prompts = load_input_data(&cfg.data)?;
        if cfg.limit > 0 {
            prompts.truncate(cfg.limit);
        }
        let model = self.model(ProjectionStorage::Dense)?;
        let responses = generate_responses(model, &prompts, cfg.decoding())?;
        let texts: Vec<&str> = responses.iter().map(String::as_str).collect();
        let evaluation = evaluate(&prompts, &texts);
        let summary = IfevalScores::new(&evaluation);
        let mut meta = serde_json::Map::new();
        meta.insert("data".into(), cfg.data.display().to_string().into());
        meta.insert("limit".into(), cfg.limit.into());
        meta.insert("max_new_tokens".into(), cfg.max_new_tokens.into());
        write_results(
            &self.layout().phase_dir(phase),
            &prompts,
            &responses,
            &evaluation,
            &summary,
            meta,
        )?;
        eprint!("{}", summary.table());
        Ok(Vec::new())
    }

    fn sft(&mut self) -> Result<Vec<FunnelRow>> {
        let data = SftData::read_dataset(&self.layout().sft_dataset())?;
        let config = self.config.sft.clone();
        let options = TrainingOptions::continuing(
            &self.layout().phase_dir(Phase::Sft),
            &self.config.model.path,
        )?;
        let projections = config.args.base_dtype.projection_storage();
        let outcome = train_sft(self.model(projections)?, &data, &config, &options, |_| {
            Ok(())
        })?;
        if outcome.training.is_none() {
            eprintln!("warning: phase sft: no training example; the model is not changed");
        }
        Ok(vec![data_row("sft", "examples", outcome.data)])
    }

    fn dpo(&mut self) -> Result<Vec<FunnelRow>> {
        let data = PreferenceData::read_dataset(&self.layout().dpo_dataset())?;
        let config = self.config.dpo.clone();
        let options = TrainingOptions::continuing(
            &self.layout().phase_dir(Phase::Dpo),
            &self.config.model.path,
        )?;
        let projections = config.args.base_dtype.projection_storage();
        let outcome = train_dpo(self.model(projections)?, &data, &config, &options, |_| {
            Ok(())
        })?;
        if outcome.training.is_none() {
            eprintln!("warning: phase dpo: no preference pair; the model is not changed");
        }
        Ok(vec![data_row("dpo", "pairs", outcome.data)])
    }

    fn online_dpo(&mut self) -> Result<Vec<FunnelRow>> {
        let prompts = read_verified_prompts(&self.layout().verified_prompts())?;
        let mut row = FunnelRow::new("online_dpo", "prompts");
        if prompts.is_empty() {
            eprintln!("warning: phase online_dpo: no prompt with functions; skipped");
            return Ok(vec![row]);
        }
        let config = self.config.online_dpo.clone();
        let options = OnlineOptions::new(
            &self.layout().phase_dir(Phase::OnlineDpo),
            &self.config.model.path,
        );
        let exec_timeout = Duration::from_millis(self.config.synthesis.exec_timeout_ms);
        let projections = config.dpo.args.base_dtype.projection_storage();
        train_online_dpo(
            self.model(projections)?,
            &prompts,
            &config,
            exec_timeout,
            &options,
        )?;
        prompts.iter().for_each(|_| row.keep());
        Ok(vec![row])
    }

    /// The merged model (every trained adapter folded in) as a Hugging Face folder; the
    /// adapters and data sets stay where their phases wrote them (`summary.json` lists
    /// them).
    fn export(&mut self) -> Result<Vec<FunnelRow>> {
        let dir = self.layout().merged_model();
        // A folder left by an export that was interrupted before it was recorded.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("{}: cannot replace", dir.display()))?;
        }
        let model = self.model(ProjectionStorage::Dense)?;
        save_merged(model, &dir, model.decoder.dtype())?;
        eprintln!("wrote {}", dir.display());
        Ok(Vec::new())
    }
}

/// Rebuilds the trained weights of a resumed run: each finished training phase's
/// adapter, merged before the next one is applied (as the phases themselves did).
fn restore_trained_weights(model: &mut Model, run: &RunFolder) -> Result<()> {
    let manifest = run.manifest()?;
    let done = |name: &str| {
        manifest
            .stages
            .iter()
            .any(|s| s.name == name && s.state == StageState::Done)
    };
    let layout = run.layout();
    let mut adapters: Vec<PathBuf> = Vec::new();
    for phase in [Phase::Sft, Phase::Dpo] {
        let dir = layout.phase_dir(phase);
        if done(phase.name()) && dir.join(crate::model::adapter_file::WEIGHTS_FILE).is_file() {
            adapters.push(dir);
        }
    }
    if done(Phase::OnlineDpo.name()) {
        let dir = layout.phase_dir(Phase::OnlineDpo);
        for report in crate::train::online_dpo::read_iterations(&dir)? {
            if report.pairs > 0 {
                adapters.push(layout.online_dpo_adapter(report.iteration));
            }
        }
    }
    for dir in adapters {
        merge_adapters(&mut model.decoder)?;
        load_adapter(&mut model.decoder, &dir)?;
    }
    Ok(())
}

/// A funnel row for a training phase's data: examples kept, and those dropped because
/// no response token fit within `max_len`.
fn data_row(stage: &str, unit: &str, counts: DataCounts) -> FunnelRow {
    let mut row = FunnelRow::new(stage, unit);
    (0..counts.kept).for_each(|_| row.keep());
    (0..counts.dropped).for_each(|_| row.drop(DropReason::NoResponseTokenWithinMaxLen));
    row
}

/// The OpenAI-compatible supervisor: chat completions, so the server applies the
/// served model's own chat template.
fn remote_backend(config: &RunConfig) -> Result<OpenAiBackend> {
    let sup = &config.supervisor;
    let openai = OpenAiConfig {
        base_url: sup.base_url.clone().unwrap_or_default(),
        model: config.supervisor_model().to_string(),
        api_key_env: sup.api_key_env.clone(),
        endpoint: Endpoint::Chat,
        max_concurrency: sup.max_concurrency,
        ..OpenAiConfig::default()
    };
    Ok(OpenAiBackend::new(openai, None)?.with_progress(true))
}

/// Checks everything `phases` of a run will read before anything is written: the
/// models they load (opened and their config, tokenizer and weight headers read, no
/// weight), and every input file. Refuses with one line per problem, each naming the
/// key or the file.
pub fn check_inputs(config: &RunConfig, phases: &[Phase]) -> Result<()> {
    if phases.is_empty() {
        bail!("every phase is switched off in [phases]");
    }
    let mut problems: Vec<String> = Vec::new();
    let mut note = |key: &str, result: Result<()>| {
        if let Err(err) = result {
            problems.push(format!("{key}: {err:#}"));
        }
    };
    let synth = &config.synthesis;
    let needs = |p: Phase| phases.contains(&p);
    let generating = phases
        .iter()
        .any(|p| matches!(p, Phase::Synthesis(s) if s.generates()));
    let uses_model = phases.iter().any(|p| !matches!(p, Phase::Synthesis(_)))
        || (generating && config.supervisor.kind == SupervisorKind::SelfModel);
    if uses_model {
        note("model.path", Model::check(&config.model.path).map(|_| ()));
    }
    if generating && config.supervisor.kind == SupervisorKind::Local {
        note(
            "supervisor.model",
            Model::check(config.supervisor_model()).map(|_| ()),
        );
    }
    if needs(Phase::Synthesis(Stage::Augment)) {
        note(
            "synthesis.seeds",
            crate::pipeline::augment::read_seeds(&synth.seeds).map(|_| ()),
        );
    }
    if let Some(path) = synth
        .verified_instructions
        .as_ref()
        .filter(|_| needs(Phase::Synthesis(Stage::Queries)))
    {
        note(
            "synthesis.verified_instructions",
            crate::pipeline::crossval::read_verified_instructions(path).map(|_| ()),
        );
    }
    if needs(Phase::Synthesis(Stage::Backtranslate)) {
        let bt = &synth.backtranslate;
        let folder = match bt.checker {
            ConsistencyChecker::Minilm => Some(("synthesis.backtranslate.embedder", &bt.embedder)),
            ConsistencyChecker::Nli => bt
                .nli_model
                .as_ref()
                .map(|m| ("synthesis.backtranslate.nli_model", m)),
            ConsistencyChecker::Judge | ConsistencyChecker::None => None,
        };
        if let Some((key, dir)) = folder {
            let found = if dir.is_dir() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{}: no such model folder", dir.display()))
            };
            note(key, found);
        }
    }
    if needs(Phase::Synthesis(Stage::Queries)) {
        note("synthesis.queries_file", {
            crate::pipeline::queries::read_queries(&synth.queries_file, &synth.queries.field)
                .and_then(|texts| {
                    let (kept, _, _) =
                        crate::pipeline::queries::filter_queries(texts, &synth.queries);
                    if kept.is_empty() {
                        bail!(
                            "{}: no query passes the length filter",
                            synth.queries_file.display()
                        );
                    }
                    Ok(())
                })
        });
    }
    let decontaminate = &synth.decontaminate;
    if needs(Phase::Synthesis(Stage::Decontaminate)) && decontaminate.enabled {
        crate::pipeline::decontaminate::read_eval_prompts(&decontaminate.eval_prompts)?;
    }
    if needs(Phase::IfevalBefore) || needs(Phase::IfevalAfter) {
        note(
            "ifeval.data",
            load_input_data(&config.ifeval.data).map(|_| ()),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(problems.join("\n"))
    }
}
