//! The `decontaminate` stage between `score` and `datasets`, without a model or the
//! sandbox: stage files written by hand, then `decontaminate` and `datasets` run. A unit
//! sharing a 13-word n-gram with an IFEval prompt is dropped, counted in the funnel and
//! kept as evidence, and never reaches the SFT/DPO files or online DPO's prompts; one
//! sharing 12 words is kept; a custom file of evaluation prompts replaces IFEval's; a
//! bad setting fails the config with one line naming its key.

mod common;
mod pipeline_support;

use autoif::config::RunConfig;
use autoif::generate::FinishReason;
use autoif::pipeline::backtranslate::Checked;
use autoif::pipeline::crossval::{KeptCase, ScoredFunc, Validated};
use autoif::pipeline::funnel::FunnelRow;
use autoif::pipeline::queries::QueryPair;
use autoif::pipeline::responses::ResponseRecord;
use autoif::pipeline::score::ScoredResponse;
use autoif::pipeline::{Pipeline, Stage};
use autoif::run::layout::RunLayout;
use autoif::run::manifest::RunFolder;
use autoif::run::summary::Summary;
use autoif::train::online_dpo::read_verified_prompts;
use common::{autoif, read_jsonl, ROOT};
use pipeline_support::config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const NO_COMMAS: &str = "def evaluate(response):\n    return ',' not in response";
const INSTRUCTION: &str = "Answer without using any commas";
/// IFEval record 2 (key 1001) begins with these 16 words.
const QUERY_16_WORDS: &str =
    "I am planning a trip to Japan, and I would like thee to write an itinerary";
/// The same prompt's first 12 words; the next word here ("Answer", from the
/// instruction) is not IFEval's ("to").
const QUERY_12_WORDS: &str = "I am planning a trip to Japan, and I would like thee";
/// 14 words of IFEval record 1 (key 1000).
const FROM_RECORD_1: &str =
    "Do not use any commas and highlight at least 3 sections that has titles";
/// 13 words found in IFEval's prompts that ask to repeat the request first.
const REPEAT_REQUEST: &str =
    "First repeat the request word for word without change then give your answer";

/// IFEval's prompts, in file order.
fn ifeval_prompts() -> Vec<String> {
    read_jsonl(&Path::new(ROOT).join("data/ifeval/input_data.jsonl"))
        .iter()
        .map(|r| r["prompt"].as_str().unwrap().to_string())
        .collect()
}

fn case(input: &str, pass_rate: f64) -> KeptCase {
    KeptCase {
        input: input.into(),
        output: pass_rate > 0.0,
        pass_rate,
    }
}

fn instruction(id: &str, text: &str, cases: Vec<KeptCase>) -> Checked {
    Checked {
        validated: Validated {
            id: id.into(),
            instruction: text.into(),
            funcs: vec![ScoredFunc {
                source: NO_COMMAS.into(),
                accuracy: 1.0,
            }],
            cases,
            ifeval_types: Vec::new(),
        },
        back_instructions: Vec::new(),
        similarity: None,
        judgements: None,
        reason: None,
    }
}

fn pair(id: &str, query: &str) -> QueryPair {
    QueryPair {
        id: id.into(),
        instruction_id: "i1".into(),
        query_id: id.trim_start_matches("i1-").into(),
        instruction: INSTRUCTION.into(),
        query: query.into(),
        funcs: vec![NO_COMMAS.into()],
        parts: Vec::new(),
        ifeval_types: Vec::new(),
    }
}

fn response(pair: &QueryPair, sample: usize, text: &str, pass_rate: f64) -> ResponseRecord {
    ResponseRecord {
        id: format!("{}-s{sample}", pair.id),
        pair_id: pair.id.clone(),
        instruction_id: pair.instruction_id.clone(),
        instruction: pair.instruction.clone(),
        query: pair.query.clone(),
        response: text.into(),
        finish_reason: FinishReason::Stop,
        pass_rate,
        reason: None,
    }
}

/// A run folder whose stages up to `score` are done, with two instructions (one copying
/// IFEval words; the other with one case input that does), three pairs (one query
/// copying 16 IFEval words, one only 12) and their responses.
fn prepared_run(dir: &Path, toml_text: &str) -> (RunFolder, RunConfig) {
    let cfg = config(toml_text);
    let stages = [
        "backtranslate",
        "queries",
        "responses",
        "score",
        "decontaminate",
        "datasets",
    ];
    let run = RunFolder::create(&dir.join("run"), &cfg, Value::Null, &stages).unwrap();
    let files = run.stage_files();
    let instructions = [
        instruction(
            "i1",
            INSTRUCTION,
            vec![
                case("Paris is lovely in spring and the museums open early", 1.0),
                case("Paris, in spring, is lovely", 0.0),
                case(&format!("{REPEAT_REQUEST}: Paris is lovely"), 1.0),
            ],
        ),
        instruction("i2", FROM_RECORD_1, vec![case("Three short sections", 1.0)]),
    ];
    let pairs = [
        pair("i1-q1", "What should I see on a first visit to Paris?"),
        pair("i1-q2", QUERY_16_WORDS),
        pair("i1-q3", QUERY_12_WORDS),
    ];
    let responses = [
        response(
            &pairs[0],
            0,
            "The Louvre and the Orsay are the places to start",
            1.0,
        ),
        response(&pairs[0], 1, &format!("Sure. {FROM_RECORD_1}"), 1.0),
        response(&pairs[0], 2, "The Louvre, then the Orsay.", 0.0),
        response(&pairs[1], 0, "Kyoto first and then Nara for the deer", 1.0),
        response(&pairs[1], 1, "Kyoto, then Nara.", 0.0),
        response(&pairs[2], 0, "Tokyo for three days and Kyoto for two", 1.0),
        response(&pairs[2], 1, "Tokyo, then Kyoto.", 0.0),
    ];
    let scored: Vec<ScoredResponse> = responses
        .iter()
        .filter(|r| r.pass_rate > 0.0)
        .map(|r| ScoredResponse {
            response: r.clone(),
            score: Some(9.0),
            judgement: "Score: 9".into(),
            score_reason: None,
        })
        .collect();
    files
        .write_records("backtranslate", "instructions.jsonl", &instructions)
        .unwrap();
    files
        .write_records("queries", "pairs.jsonl", &pairs)
        .unwrap();
    files
        .write_records("responses", "all.jsonl", &responses)
        .unwrap();
    files.write_records("score", "kept.jsonl", &scored).unwrap();
    for stage in &stages[..4] {
        run.mark_running(stage).unwrap();
        run.mark_done(stage, Vec::new(), 0.0).unwrap();
    }
    (run, cfg)
}

/// Runs `decontaminate` and `datasets`; their funnel rows by `stage/unit`.
fn run_stages(run: &RunFolder, cfg: RunConfig) -> BTreeMap<String, FunnelRow> {
    let mut pipeline = Pipeline::new(run.stage_files(), cfg.seed, cfg.synthesis, None);
    let mut funnel = BTreeMap::new();
    for stage in [Stage::Decontaminate, Stage::Datasets] {
        for row in run.run_stage(&mut pipeline, stage).unwrap() {
            funnel.insert(format!("{}/{}", row.stage, row.unit), row);
        }
    }
    funnel
}

/// (in, out, contaminated) of a funnel row.
fn counts(row: &FunnelRow) -> (usize, usize, usize) {
    let dropped = row.dropped.get("contaminated").copied().unwrap_or(0);
    assert_eq!(row.dropped_total(), dropped, "{row:?}");
    (row.input, row.output, dropped)
}

fn texts(records: &[Value], pointer: &str) -> Vec<String> {
    records
        .iter()
        .map(|r| r.pointer(pointer).unwrap().as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_test_texts_are_what_they_claim() {
    let ifeval = ifeval_prompts();
    assert_eq!(ifeval.len(), 541);
    let words = |t: &str| autoif::pipeline::ngrams::words(t).join(" ");
    assert!(words(&ifeval[1]).starts_with(&words(QUERY_16_WORDS)));
    assert_eq!(words(QUERY_16_WORDS).split(' ').count(), 16);
    assert_eq!(words(QUERY_12_WORDS).split(' ').count(), 12);
    assert!(words(&ifeval[0]).contains(&words(FROM_RECORD_1)));
    assert!(ifeval
        .iter()
        .any(|p| words(p).contains(&words(REPEAT_REQUEST))));
    assert_eq!(words(REPEAT_REQUEST).split(' ').count(), 13);
}

#[test]
fn a_13_gram_shared_with_ifeval_is_dropped_counted_and_never_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cfg) = prepared_run(dir.path(), "seed = 3");
    let funnel = run_stages(&run, cfg);

    assert_eq!(counts(&funnel["decontaminate/instructions"]), (2, 1, 1));
    assert_eq!(counts(&funnel["decontaminate/cases"]), (3, 2, 1));
    assert_eq!(counts(&funnel["decontaminate/pairs"]), (3, 2, 1));
    assert_eq!(counts(&funnel["decontaminate/responses"]), (7, 4, 3));
    assert_eq!(counts(&funnel["decontaminate/scored_responses"]), (4, 2, 2));
    // The counts are the run's: in the manifest and the summary.
    let summary = Summary::collect(&run).unwrap();
    let row = summary
        .funnel
        .iter()
        .find(|r| r.stage == "decontaminate" && r.unit == "pairs")
        .expect("decontaminate/pairs in summary.json's funnel");
    assert_eq!(row.dropped["contaminated"], 1);

    // The evidence: each dropped unit, the text checked, the shared words and the
    // evaluation prompt.
    let files = run.stage_files();
    let found = read_jsonl(&files.path("decontaminate", "contaminated.jsonl"));
    let units: Vec<(String, String, String)> = found
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("unit"), s("id"), s("field"))
        })
        .collect();
    let expected = [
        ("case", "i1", "input"),
        ("instruction", "i2", "instruction"),
        ("pair", "i1-q2", "prompt"),
        ("response", "i1-q1-s1", "response"),
        ("response", "i1-q2-s0", "prompt"),
        ("response", "i1-q2-s1", "prompt"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(u, i, f)| (u.to_string(), i.to_string(), f.to_string()))
        .collect();
    assert_eq!(units, expected);
    let ifeval = ifeval_prompts();
    let pair = &found[2];
    assert_eq!(
        pair["ngram"],
        "i am planning a trip to japan and i would like thee to"
    );
    assert_eq!(pair["eval_record"], 2);
    assert_eq!(pair["eval_prompt"].as_str().unwrap(), ifeval[1]);
    assert_eq!(found[1]["eval_record"], 1);

    // What training reads: nothing contaminated, the 12-word pair and its responses kept.
    let sft = read_jsonl(&files.path("datasets", "trl/sft.jsonl"));
    assert_eq!(
        texts(&sft, "/messages/1/content"),
        [
            "The Louvre and the Orsay are the places to start",
            "Tokyo for three days and Kyoto for two"
        ]
    );
    let dpo = read_jsonl(&files.path("datasets", "trl/dpo.jsonl"));
    assert_eq!(texts(&dpo, "/source_id"), ["i1", "i1-q1", "i1-q3"]);
    assert_eq!(
        texts(&dpo, "/chosen/0/content"),
        [
            "Paris is lovely in spring and the museums open early",
            "The Louvre and the Orsay are the places to start",
            "Tokyo for three days and Kyoto for two"
        ]
    );
    let prompts = read_verified_prompts(&RunLayout::new(run.root()).verified_prompts()).unwrap();
    let ids: Vec<&str> = prompts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["i1-q1", "i1-q3"], "online DPO's prompts");
    for path in [
        files.path("datasets", "trl/sft.jsonl"),
        files.path("datasets", "trl/dpo.jsonl"),
        files.path("datasets", "llamafactory/autoif_sft.json"),
        files.path("datasets", "llamafactory/autoif_dpo.json"),
        RunLayout::new(run.root()).verified_prompts(),
    ] {
        let text = std::fs::read_to_string(&path).unwrap();
        for copied in [
            "Do not use any commas",
            "First repeat",
            "like thee to write",
        ] {
            assert!(!text.contains(copied), "{}: {copied}", path.display());
        }
    }
}

#[test]
fn a_custom_eval_prompts_file_replaces_ifeval() {
    let dir = tempfile::tempdir().unwrap();
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "\"Tell me about the deer of Nara\"\n\
         {\"id\": 7, \"prompt\": \"Name the places to start a visit to Paris\"}\n",
    )
    .unwrap();
    let toml_text = format!(
        "seed = 3\n[synthesis.decontaminate]\neval_prompts = {:?}\nngram = 4\n",
        eval.display().to_string()
    );
    let (run, cfg) = prepared_run(dir.path(), &toml_text);
    let funnel = run_stages(&run, cfg);
    // The IFEval copies pass; the one response sharing 4 words with the file does not.
    assert_eq!(counts(&funnel["decontaminate/instructions"]), (2, 2, 0));
    assert_eq!(counts(&funnel["decontaminate/cases"]), (4, 4, 0));
    assert_eq!(counts(&funnel["decontaminate/pairs"]), (3, 3, 0));
    assert_eq!(counts(&funnel["decontaminate/responses"]), (7, 6, 1));
    let found = read_jsonl(
        &run.stage_files()
            .path("decontaminate", "contaminated.jsonl"),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], "i1-q1-s0");
    assert_eq!(found[0]["ngram"], "the places to start");
    assert_eq!(found[0]["eval_record"], 2);
}

#[test]
fn switched_off_everything_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let toml_text = "seed = 3\n[synthesis.decontaminate]\nenabled = false\n\
                     eval_prompts = \"no/such/file.jsonl\"\n";
    let (run, cfg) = prepared_run(dir.path(), toml_text);
    let funnel = run_stages(&run, cfg);
    assert_eq!(counts(&funnel["decontaminate/pairs"]), (3, 3, 0));
    assert_eq!(counts(&funnel["decontaminate/responses"]), (7, 7, 0));
    assert_eq!(funnel["datasets/sft_records"].output, 4);
    assert!(read_jsonl(
        &run.stage_files()
            .path("decontaminate", "contaminated.jsonl")
    )
    .is_empty());
}

#[test]
fn a_bad_setting_names_its_key() {
    let err = |toml_text: &str| {
        let table = toml::from_str(toml_text).unwrap();
        format!("{:#}", RunConfig::from_table(table).unwrap_err())
    };
    assert_eq!(
        err("[synthesis.decontaminate]\nngram = 0"),
        "synthesis.decontaminate.ngram must be at least 1"
    );
    assert_eq!(
        err("[synthesis.decontaminate]\neval_prompts = \"no/such.jsonl\""),
        "synthesis.decontaminate.eval_prompts = \"no/such.jsonl\": no such file"
    );
    assert!(err("[synthesis.decontaminate]\nn = 13").contains("unknown field `n`"));

    // From the command line: one error line, and no run folder.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let toml_path = dir.path().join("run.toml");
    std::fs::write(
        &toml_path,
        "[phases]\nifeval_before = false\nsft = false\ndpo = false\nonline_dpo = false\n\
         ifeval_after = false\nexport = false\n",
    )
    .unwrap();
    let run = |set: &str| {
        let output = autoif(&[
            "run",
            "--config",
            toml_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            set,
        ]);
        assert!(!output.status.success(), "{set}: the run started");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        errors[0].to_string()
    };
    let line = run("synthesis.decontaminate.ngram=0");
    assert!(line.contains("synthesis.decontaminate.ngram"), "{line}");
    assert!(!out.exists());
    // A file whose second record has no prompt: refused before the run folder exists.
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(&eval, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    let line = run(&format!(
        "synthesis.decontaminate.eval_prompts={:?}",
        eval.display().to_string()
    ));
    assert!(
        line.contains("eval.jsonl: record 2") && line.contains("`prompt`"),
        "{line}"
    );
    assert!(!out.exists());
}
