//! The OpenAI-compatible backend against (1) a scripted HTTP server on 127.0.0.1 that
//! fails on purpose, for retries and error handling, and (2) a real llama.cpp server
//! (PyPI `llama-cpp-python[server]`) serving the embedded SmolLM2, started and stopped
//! by the test; those tests print SKIP when the package or the model is missing.

mod common;

use autoif::generate::openai::{ChatFormat, Endpoint, OpenAiBackend, OpenAiConfig};
use autoif::generate::{Backend, Completion, FinishReason, Prompt, Request, SamplingParams};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- scripted server

/// A request as the scripted server received it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    body: Value,
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

type Handler = dyn Fn(usize, &Received) -> Reply + Send + Sync;

/// An HTTP/1.1 server on a free port that answers every request with `handler(call
/// number, request)`, one thread per connection, and records what it received.
struct ScriptedServer {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptedServer {
    fn start(handler: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let calls = Arc::new(AtomicUsize::new(0));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (handler, calls, log) = (handler.clone(), calls.clone(), log.clone());
                std::thread::spawn(move || serve_one(stream, &*handler, &calls, &log));
            }
        });
        Self { base_url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_one(
    stream: TcpStream,
    handler: &Handler,
    calls: &AtomicUsize,
    log: &Mutex<Vec<Received>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let (mut length, mut authorization) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let received = Received {
        path,
        authorization,
        body: serde_json::from_slice(&body).unwrap(),
    };
    log.lock().unwrap().push(received.clone());
    let reply = handler(calls.fetch_add(1, Ordering::SeqCst), &received);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
}

fn ok(text: &str, finish_reason: &str) -> Reply {
    Reply {
        status: 200,
        headers: Vec::new(),
        body: json!({
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}],
            "usage": {"completion_tokens": 3},
        })
        .to_string(),
    }
}

fn error(status: u16, message: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: json!({"error": {"message": message}}).to_string(),
    }
}

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "served-model".into(),
        api_key_env: "AUTOIF_TEST_UNSET_KEY".into(),
        backoff_initial_ms: 10,
        backoff_max_ms: 100,
        timeout_secs: 30.0,
        ..OpenAiConfig::default()
    }
}

fn text_request(prompt: &str, n: usize, params: SamplingParams) -> Request {
    Request {
        prompt: Prompt::Text(prompt.into()),
        n,
        params,
    }
}

#[test]
fn a_500_is_retried_and_the_second_answer_used() {
    let server = ScriptedServer::start(|call, _| match call {
        0 => error(500, "overloaded"),
        _ => ok(" fine", "stop"),
    });
    let mut backend = OpenAiBackend::new(config(&server.base_url), None).unwrap();
    let out = backend
        .generate(&[text_request("hi", 1, SamplingParams::default())])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].text, " fine");
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    let stats = backend.stats();
    assert_eq!((stats.http_requests, stats.retries), (2, 1));
    assert_eq!(stats.completion_tokens, 3);
    assert!(server
        .received()
        .iter()
        .all(|r| r.path == "/v1/completions"));
}

#[test]
fn a_429_waits_as_long_as_retry_after_says() {
    let server = ScriptedServer::start(|call, _| match call {
        0 => Reply {
            headers: vec![("Retry-After", "1".into())],
            ..error(429, "rate limited")
        },
        _ => ok("x", "stop"),
    });
    let mut cfg = config(&server.base_url);
    cfg.backoff_max_ms = 5000;
    let mut backend = OpenAiBackend::new(cfg, None).unwrap();
    let started = Instant::now();
    backend
        .generate(&[text_request("hi", 1, SamplingParams::default())])
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert_eq!(backend.stats().retries, 1);
}

#[test]
fn exhausted_retries_give_one_line_without_the_api_key() {
    std::env::set_var("AUTOIF_TEST_KEY_EXHAUSTED", "sk-secret-123");
    let server = ScriptedServer::start(|_, _| error(503, "warming\nup"));
    let mut cfg = config(&server.base_url);
    cfg.api_key_env = "AUTOIF_TEST_KEY_EXHAUSTED".into();
    cfg.max_retries = 2;
    let mut backend = OpenAiBackend::new(cfg, None).unwrap();
    let err = backend
        .generate(&[text_request("hi", 1, SamplingParams::default())])
        .unwrap_err();
    let line = format!("{err:#}");
    println!("{line}");
    assert!(!line.contains('\n'));
    assert!(line.starts_with("request 0 sample 0: POST http://127.0.0.1:"));
    assert!(line.contains("gave up after 3 attempts, last: HTTP 503: warming up"));
    assert!(!line.contains("sk-secret"));
    let received = server.received();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer sk-secret-123")
    );
}

#[test]
fn a_400_fails_at_once_with_the_server_message() {
    let server = ScriptedServer::start(|_, _| error(400, "max_tokens is too large"));
    let mut backend = OpenAiBackend::new(config(&server.base_url), None).unwrap();
    let err = backend
        .generate(&[text_request("hi", 2, SamplingParams::default())])
        .unwrap_err();
    assert!(format!("{err:#}").contains("HTTP 400: max_tokens is too large"));
    assert!(backend.stats().retries == 0);
    assert!(server.received().len() <= 2, "no retries of a client error");
}

#[test]
fn bodies_carry_the_sampling_fields_and_results_keep_request_order() {
    // Answers echo (prompt, seed) after a delay that scrambles the completion order.
    let server = ScriptedServer::start(|_, r| {
        let seed = r.body["seed"].as_u64().unwrap();
        std::thread::sleep(Duration::from_millis(7 * (seed % 5)));
        let prompt = r.body["prompt"].as_str().unwrap();
        let finish = if r.body["max_tokens"] == 4 {
            "length"
        } else {
            "stop"
        };
        ok(&format!("{}#{seed}", &prompt[prompt.len() - 1..]), finish)
    });
    let format = ChatFormat::load(common::fixture("tiny-qwen2").to_str().unwrap()).unwrap();
    let mut cfg = config(&server.base_url);
    cfg.max_concurrency = 6;
    cfg.extra_body.insert("repeat_penalty".into(), json!(1.0));
    let mut backend = OpenAiBackend::new(cfg, Some(format)).unwrap();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 20,
        repetition_penalty: 1.2,
        max_new_tokens: 4,
        seed: 100,
        stop: vec!["\n\n".into()],
        ..SamplingParams::default()
    };
    let requests = vec![
        text_request("A", 3, params.clone()),
        Request {
            prompt: Prompt::user("B"),
            n: 4,
            params: SamplingParams {
                max_new_tokens: 9,
                seed: 0,
                ..params.clone()
            },
        },
        text_request("C", 2, params.clone()),
    ];
    let out = backend.generate(&requests).unwrap();
    let got: Vec<(usize, usize, &str, FinishReason)> = out
        .iter()
        .map(|c| {
            (
                c.request_index,
                c.sample_index,
                c.text.as_str(),
                c.finish_reason,
            )
        })
        .collect();
    use FinishReason::{Length, Stop};
    // The chat prompt "B" was rendered with the tokenizer's ChatML template, so its text
    // ends with the opened assistant turn ("...assistant\n").
    assert_eq!(
        got,
        [
            (0, 0, "A#100", Length),
            (0, 1, "A#101", Length),
            (0, 2, "A#102", Length),
            (1, 0, "\n#0", Stop),
            (1, 1, "\n#1", Stop),
            (1, 2, "\n#2", Stop),
            (1, 3, "\n#3", Stop),
            (2, 0, "C#100", Length),
            (2, 1, "C#101", Length),
        ]
    );
    assert!(out.iter().all(|c| !c.token_ids.is_empty()));
    let received = server.received();
    assert_eq!(received.len(), 9);
    let chat = received.iter().find(|r| r.body["max_tokens"] == 9).unwrap();
    assert_eq!(
        chat.body["prompt"],
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\nB<|im_end|>\n<|im_start|>assistant\n"
    );
    let body = &received[0].body;
    assert_eq!(body["model"], "served-model");
    assert_eq!(body["n"], 1);
    assert_eq!(body["top_k"], 20);
    assert_eq!(body["stop"], json!(["\n\n"]));
    assert_eq!(body["repeat_penalty"], 1.0);
    assert!((body["temperature"].as_f64().unwrap() - 0.8).abs() < 1e-6);
    assert!((body["repetition_penalty"].as_f64().unwrap() - 1.2).abs() < 1e-6);
    assert_eq!(received[0].authorization, None);
}

#[test]
fn chat_endpoint_sends_messages_and_refuses_raw_text() {
    let server = ScriptedServer::start(|_, r| Reply {
        status: 200,
        headers: Vec::new(),
        body: json!({"choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": r.body["messages"][0]["content"]}}]})
        .to_string(),
    });
    let mut cfg = config(&server.base_url);
    cfg.endpoint = Endpoint::Chat;
    let mut backend = OpenAiBackend::new(cfg, None).unwrap();
    let out = backend
        .generate(&[Request {
            prompt: Prompt::user("echo me"),
            n: 1,
            params: SamplingParams::default(),
        }])
        .unwrap();
    assert_eq!(out[0].text, "echo me");
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    assert_eq!(server.received()[0].path, "/v1/chat/completions");
    let err = backend
        .generate(&[text_request("raw", 1, SamplingParams::default())])
        .unwrap_err();
    assert!(err.to_string().contains("needs the completions endpoint"));
}

#[test]
fn a_server_that_is_not_there_is_retried_then_reported() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&format!("http://127.0.0.1:{port}/v1"));
    cfg.max_retries = 3;
    let mut backend = OpenAiBackend::new(cfg, None).unwrap();
    let err = backend
        .generate(&[text_request("hi", 1, SamplingParams::default())])
        .unwrap_err();
    let line = format!("{err:#}");
    assert!(line.contains("gave up after 4 attempts"), "{line}");
    assert!(line.to_lowercase().contains("connect"), "{line}");
}

// ---------------------------------------------------------------- llama.cpp server

/// The llama.cpp tests take turns: two servers spinning on 2 cores slow both tenfold.
static LLAMA_TURN: Mutex<()> = Mutex::new(());

/// A `python -m llama_cpp.server` child serving the embedded model; killed on drop.
struct LlamaServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl LlamaServer {
    /// The Python to use when it can import `llama_cpp.server`, else None after printing
    /// SKIP; also None (SKIP) without the embedded model.
    fn python(test: &str) -> Option<(String, std::path::PathBuf)> {
        let model = common::smollm2(test)?;
        let python = std::env::var("AUTOIF_LLAMA_PYTHON").unwrap_or_else(|_| "python3".into());
        let importable = Command::new(&python)
            .args(["-c", "import llama_cpp.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            eprintln!(
                "SKIP {test}: `{python}` cannot import llama_cpp.server; \
                 pip install 'llama-cpp-python[server]' or set AUTOIF_LLAMA_PYTHON"
            );
            return None;
        }
        Some((python, model))
    }

    fn start(python: &str, model: &std::path::Path, port: u16) -> Self {
        let log = std::env::temp_dir().join(format!("autoif-llama-server-{port}.log"));
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "2048", "--n_threads", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start llama_cpp.server");
        let mut server = Self { child, port, log };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = format!("http://127.0.0.1:{}/v1/models", self.port);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("llama_cpp.server exited ({status}): {}", self.log_tail());
            }
            if ureq::get(&url).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("llama_cpp.server not ready in 120 s: {}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text[text.len().saturating_sub(2000)..].to_string()
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn llama_backend(
    server: &LlamaServer,
    model: &std::path::Path,
    endpoint: Endpoint,
    max_concurrency: usize,
) -> OpenAiBackend {
    let config = OpenAiConfig {
        base_url: server.base_url(),
        model: model.display().to_string(),
        endpoint,
        max_concurrency,
        backoff_initial_ms: 200,
        backoff_max_ms: 2000,
        timeout_secs: 120.0,
        ..OpenAiConfig::default()
    };
    let format = ChatFormat::load(model.to_str().unwrap()).unwrap();
    OpenAiBackend::new(config, Some(format)).unwrap()
}

fn user(text: &str, n: usize, params: SamplingParams) -> Request {
    Request {
        prompt: Prompt::user(text),
        n,
        params,
    }
}

fn texts(completions: &[Completion]) -> Vec<&str> {
    completions.iter().map(|c| c.text.as_str()).collect()
}

#[test]
fn llama_server_samples_stops_and_seeds() {
    let Some((python, model)) = LlamaServer::python("llama_server_samples_stops_and_seeds") else {
        return;
    };
    let _turn = LLAMA_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlamaServer::start(&python, &model, free_port());
    let mut backend = llama_backend(&server, &model, Endpoint::Completions, 4);
    let greedy = SamplingParams {
        max_new_tokens: 40,
        ..SamplingParams::default()
    };
    let prompt = "Write a long story about a dragon who loves books.";

    // Greedy to max_new_tokens: marked as cut by length.
    let reference = backend
        .generate(&[user(prompt, 1, greedy.clone())])
        .unwrap();
    let reference = &reference[0];
    println!("greedy: {:?}", reference.text);
    assert_eq!(reference.finish_reason, FinishReason::Length);
    assert!(reference.text.split_whitespace().count() >= 10);

    // A stop string from the middle of that text ends it right before the string.
    let words: Vec<&str> = reference.text.split_whitespace().collect();
    let stop = words[words.len() / 2..]
        .iter()
        .map(|w| format!(" {w}"))
        .find(|w| w.len() >= 4 && reference.text.matches(w.as_str()).count() == 1)
        .expect("a word that occurs once in the second half");
    let cut = &reference.text[..reference.text.find(&stop).unwrap()];
    let stopped = backend
        .generate(&[user(
            prompt,
            1,
            SamplingParams {
                stop: vec![stop.clone()],
                ..greedy.clone()
            },
        )])
        .unwrap();
    assert_eq!(stopped[0].text, cut, "stop string {stop:?}");
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);

    // n > 1 with seeds: the same seeds give the same samples. llama.cpp reuses the KV of
    // the previous prompt's common prefix, and a prefix evaluated in other batch splits
    // rounds differently, so texts only repeat when the server saw the same history:
    // one request at a time, and prompts whose first tokens differ (a full reset).
    backend = llama_backend(&server, &model, Endpoint::Completions, 1);
    let sampled = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 16,
        seed: 7,
        ..SamplingParams::default()
    };
    let requests = [
        text_request("Colors I like:", 4, sampled.clone()),
        text_request("My favourite animal is", 2, sampled.clone()),
    ];
    let first = backend.generate(&requests).unwrap();
    let keys: Vec<_> = first
        .iter()
        .map(|c| (c.request_index, c.sample_index))
        .collect();
    assert_eq!(keys, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]);
    println!("samples: {:?}", texts(&first));
    let mut distinct = texts(&first[..4]).to_vec();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "4 samples at temperature 1 all equal");
    let again = backend.generate(&requests).unwrap();
    assert_eq!(texts(&first), texts(&again));

    // The chat route, where the server applies the template itself.
    let mut chat = llama_backend(&server, &model, Endpoint::Chat, 4);
    let out = chat.generate(&[user(prompt, 1, greedy)]).unwrap();
    // The server applies the same template from the GGUF, so greedy text matches ours.
    assert_eq!(out[0].text, reference.text);

    // The CLI front: `autoif generate --backend openai`.
    let out = common::autoif_command()
        .args([
            "generate",
            "--backend",
            "openai",
            "--base-url",
            &server.base_url(),
        ])
        .arg("--model")
        .arg(&model)
        .args([
            "--prompt",
            "Name a color.",
            "-n",
            "2",
            "--max-new-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["sample_index"], 1);
    assert_eq!(lines[0]["finish_reason"], "length");
}

#[test]
fn llama_server_restarted_mid_run_loses_and_duplicates_nothing() {
    let Some((python, model)) = LlamaServer::python("llama_server_restarted_mid_run") else {
        return;
    };
    let _turn = LLAMA_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let server = LlamaServer::start(&python, &model, port);
    let params = SamplingParams {
        temperature: 0.7,
        max_new_tokens: 16,
        seed: 3,
        ..SamplingParams::default()
    };
    // One sample per prompt and distinct first words: every prompt is evaluated from
    // scratch, so the server's texts do not depend on which request came before (see
    // the seeds check above) and the restarted run must repeat the reference exactly.
    let requests: Vec<Request> = [
        "Apples", "Bears", "Clouds", "Dolphins", "Engines", "Forests", "Glaciers", "Horses",
    ]
    .iter()
    .map(|w| text_request(&format!("{w} are interesting because"), 1, params.clone()))
    .collect();
    let mut backend = llama_backend(&server, &model, Endpoint::Completions, 4);
    // Timed warm: the server's first requests are slower, and a reference timed cold
    // could put the restart after the whole second run on a busy machine.
    backend.generate(&requests[..1]).unwrap();
    let started = Instant::now();
    let reference = backend.generate(&requests).unwrap();
    let run_time = started.elapsed();

    // Run again and restart the server a third of the way in.
    let worker = std::thread::spawn(move || {
        let out = backend.generate(&requests);
        (out, backend.stats())
    });
    std::thread::sleep(run_time / 3);
    drop(server);
    std::thread::sleep(Duration::from_millis(500));
    let _restarted = LlamaServer::start(&python, &model, port);
    let (out, stats) = worker.join().unwrap();
    let out = out.unwrap();
    println!(
        "reference run {run_time:?}; restarted run: {} HTTP requests, {} retries",
        stats.http_requests, stats.retries
    );
    assert!(stats.retries > 0, "the restart did not interrupt the run");
    assert_eq!(out.len(), reference.len());
    let keys = |c: &[Completion]| -> Vec<(usize, usize)> {
        c.iter()
            .map(|c| (c.request_index, c.sample_index))
            .collect()
    };
    assert_eq!(keys(&out), keys(&reference));
    assert_eq!(texts(&out), texts(&reference));
}

#[test]
fn cli_without_a_base_url_says_so_in_one_line() {
    let out = common::autoif_command()
        .args([
            "generate",
            "--backend",
            "openai",
            "--model",
            "m",
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "error: --backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)"
    );
}

/// The synthesis stages with the llama.cpp server as the supervision model (`[supervisor]
/// kind = "openai"`): every stage runs and its funnel is recorded. SmolLM2-135M rarely
/// writes parseable verification functions, so later stages may see no data; what this
/// shows is the stage code running unchanged through the remote backend.
#[test]
fn synthesis_stages_run_through_the_llama_cpp_server() {
    let Some((python, model)) =
        LlamaServer::python("synthesis_stages_run_through_the_llama_cpp_server")
    else {
        return;
    };
    let _turn = LLAMA_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let server = LlamaServer::start(&python, &model, free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            seed = 3
            [model]
            device = "cpu"
            [supervisor]
            kind = "openai"
            model = "smollm2"
            base_url = "{}"
            max_concurrency = 2
            [phases]
            ifeval_before = false
            sft = false
            dpo = false
            online_dpo = false
            ifeval_after = false
            export = false
            [synthesis]
            seeds = "tests/fixtures/pipeline/tiny_seeds.txt"
            queries_file = "data/queries.jsonl"
            [synthesis.augment]
            rounds = 1
            per_round = 3
            sampling = {{ temperature = 0.7, top_p = 0.95, max_new_tokens = 48 }}
            [synthesis.funcs]
            samples = 1
            sampling = {{ temperature = 0.7, top_p = 0.95, max_new_tokens = 96 }}
            [synthesis.crossval]
            min_funcs = 1
            min_cases = 1
            [synthesis.backtranslate]
            sampling = {{ temperature = 0.0, top_p = 1.0, max_new_tokens = 32 }}
            [synthesis.queries]
            per_instruction = 1
            [synthesis.responses]
            samples = 2
            sampling = {{ temperature = 0.8, top_p = 0.95, max_new_tokens = 32 }}
            [synthesis.score]
            sampling = {{ temperature = 0.0, top_p = 1.0, max_new_tokens = 24 }}
            "#,
            server.base_url()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let result = common::autoif_command()
        .args(["run", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let manifest = autoif::run::manifest::RunFolder::open(&out)
        .unwrap()
        .manifest()
        .unwrap();
    let names: Vec<&str> = manifest.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "augment",
            "funcs",
            "crossval",
            "backtranslate",
            "queries",
            "responses",
            "score",
            "decontaminate",
            "datasets"
        ]
    );
    for stage in &manifest.stages {
        assert_eq!(
            stage.state,
            autoif::run::manifest::StageState::Done,
            "{}",
            stage.name
        );
        assert!(!stage.funnel.is_empty(), "{}: no funnel rows", stage.name);
    }
    // Generation really went to the server: the functions stage asked it about every
    // instruction that augmentation produced (seeds included).
    let funcs_in = manifest.stages[1]
        .funnel
        .iter()
        .map(|r| r.input)
        .max()
        .unwrap();
    assert!(funcs_in >= 3, "funcs saw {funcs_in} inputs");
}
