//! One confined `python3` worker and the supervision of its batches: the request and
//! response pipes, the shared progress page, the per-call wall-clock deadline, killing
//! the whole process group when the deadline passes, and checking that every response
//! answers the batch just sent (sequence number and a per-batch nonce that no function
//! process ever holds; see worker.py).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::confine::{Confinement, Layers, Limits};
use super::filesystem::{fresh_workdir, FsView};
use super::seccomp::Filters;
use super::verdict::{ErrorKind, Verdict};

const WORKER_SOURCE: &str = include_str!("worker.py");
/// Size of the progress page: (call index, call start in CLOCK_MONOTONIC ns, batch seq).
const PROGRESS_BYTES: usize = 24;
/// Slack for reading the request before the worker reports progress, and on top of a
/// whole batch's budget.
const GRACE_NS: u64 = 1_000_000_000;
/// Poll interval while waiting for the worker to pick up a batch.
const FIRST_PROGRESS_POLL_NS: u64 = 2_000_000;
/// How long a worker may take to start and pre-import its modules.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Response bytes allowed per input before the worker counts as flooding the channel.
const RESPONSE_BYTES_PER_INPUT: usize = 4096;
/// Characters kept of a verdict message (the worker clips at the same length).
const MESSAGE_CHARS: usize = 300;

/// Everything needed to start a worker; shared by all workers of a sandbox.
pub(crate) struct WorkerSetup {
    pub python: PathBuf,
    pub layers: Layers,
    /// None where this architecture has no system-call table.
    pub filters: Option<Filters>,
    pub limits: Limits,
    pub timeout: Duration,
    pub allowed_modules: Vec<String>,
    pub max_output_chars: usize,
    pub python_guard: bool,
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// A thread that lives as long as the sandbox and forks every worker: the kernel's
/// parent-death signal fires when the *thread* that forked a child exits, so workers
/// must not be forked from short-lived threads.
pub(crate) struct Spawner {
    jobs: Mutex<Option<mpsc::Sender<SpawnJob>>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<SpawnJob>();
        let thread = std::thread::Builder::new()
            .name("autoif-verify-spawner".into())
            .spawn(move || {
                for job in receiver {
                    job();
                }
            })?;
        Ok(Spawner {
            jobs: Mutex::new(Some(sender)),
            thread: Some(thread),
        })
    }

    fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sender = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        sender
            .ok_or_else(|| anyhow!("verification sandbox is shutting down"))?
            .send(Box::new(move || {
                let _ = reply.send(job());
            }))
            .map_err(|_| anyhow!("verification spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("verification spawner thread is gone"))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a batch ended.
pub(crate) enum BatchOutcome {
    /// One verdict per input; `retire` asks for a fresh worker (CPU budget nearly spent).
    Done {
        verdicts: Vec<Verdict>,
        retire: bool,
    },
    /// The worker was killed or died. `at` is the input it was running, `None` when it
    /// was loading the function (then `verdict` applies to every input).
    Died { at: Option<usize>, verdict: Verdict },
    /// The worker was already dead when the batch was sent.
    NotStarted,
}

pub(crate) struct Worker {
    child: Child,
    requests: File,
    responses: File,
    progress: ProgressPage,
    next_seq: i64,
    timeout_ns: u64,
    cpu_retire_seconds: f64,
    buffer: Vec<u8>,
}

#[derive(Serialize)]
struct Request<'a> {
    seq: i64,
    func: &'a str,
    inputs: &'a [&'a str],
}

/// The zygote's answer to one batch: `results`, or why the function's process gave none.
#[derive(Deserialize)]
struct Response {
    seq: i64,
    nonce: String,
    results: Option<Vec<WireResult>>,
    died: Option<Death>,
    failed: Option<String>,
    cpu: f64,
}

/// How a function's process ended without reporting results.
#[derive(Deserialize)]
struct Death {
    signal: Option<i32>,
    status: Option<i32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireResult {
    Decided(bool),
    Error(ErrorKind, String),
}

#[derive(Serialize)]
struct WorkerConfig<'a> {
    req_fd: i32,
    resp_fd: i32,
    progress_fd: i32,
    timeout_ms: u128,
    max_output_chars: usize,
    python_guard: bool,
    allowed_modules: &'a [String],
    /// The `serving` and `function` seccomp stages, installed by the worker itself.
    filters: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
}

impl Worker {
    /// Starts a worker and waits until it has pre-imported its modules.
    pub fn start(setup: &Arc<WorkerSetup>, spawner: &Spawner) -> Result<Worker> {
        let setup_for_fork = setup.clone();
        let mut worker = spawner.run(move || Worker::spawn(&setup_for_fork))??;
        worker
            .wait_ready()
            .with_context(|| format!("starting python worker {}", setup.python.display()))?;
        Ok(worker)
    }

    fn spawn(setup: &WorkerSetup) -> Result<Worker> {
        let (request_read, request_write) = pipe()?;
        let (response_read, response_write) = pipe()?;
        let (progress, progress_fd) = ProgressPage::create()?;
        let workdir = fresh_workdir()?;
        let filters = setup.filters.as_ref().filter(|_| setup.layers.seccomp);
        let config = WorkerConfig {
            req_fd: request_read.as_raw_fd(),
            resp_fd: response_write.as_raw_fd(),
            progress_fd: progress_fd.as_raw_fd(),
            timeout_ms: setup.timeout.as_millis(),
            max_output_chars: setup.max_output_chars,
            python_guard: setup.python_guard,
            allowed_modules: &setup.allowed_modules,
            filters: filters.map(|f| {
                serde_json::json!({"serving": f.serving.to_json(), "function": f.function.to_json()})
            }),
        };
        let view = if setup.layers.filesystem {
            Some(FsView::new(&workdir, &setup.python)?)
        } else {
            None
        };
        let mut command = Command::new(&setup.python);
        command
            .args([
                "-I",
                "-B",
                "-X",
                "utf8",
                "-c",
                WORKER_SOURCE,
                "autoif-verify-worker",
            ])
            .arg(serde_json::to_string(&config)?)
            .env_clear()
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let channels = [config.req_fd, config.resp_fd, config.progress_fd];
        Confinement::new(
            setup.limits,
            setup.layers,
            filters.map(|f| &f.start),
            view,
            channels,
        )
        .attach(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", setup.python.display()));
        // The worker is past `exec` (its view built, if any); the folder is not needed
        // any more, and nothing is left behind even if this process is killed.
        let _ = fs::remove_dir(&workdir);
        let child = child?;
        // The child's ends close here, so a dead worker reads as end-of-file.
        drop((request_read, response_write, progress_fd));
        Ok(Worker {
            child,
            requests: File::from(request_write),
            responses: File::from(response_read),
            progress,
            next_seq: 0,
            timeout_ns: setup.timeout.as_nanos() as u64,
            cpu_retire_seconds: setup.limits.cpu_seconds as f64 / 2.0,
            buffer: Vec::new(),
        })
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = monotonic_ns() + STARTUP_TIMEOUT.as_nanos() as u64;
        loop {
            if let Some(line) = self.take_line() {
                let ready: Ready =
                    serde_json::from_slice(&line).context("unreadable ready message")?;
                if !ready.ready {
                    bail!("worker did not report ready");
                }
                // Nothing more is written to stderr once the worker serves.
                self.child.stderr.take();
                return Ok(());
            }
            let now = monotonic_ns();
            if now >= deadline {
                bail!("worker not ready after {} s", STARTUP_TIMEOUT.as_secs());
            }
            if !self.read_some(deadline - now)? {
                let status = self.child.wait()?;
                let mut stderr = String::new();
                if let Some(pipe) = self.child.stderr.as_mut() {
                    let _ = pipe.take(8192).read_to_string(&mut stderr);
                }
                bail!("worker exited during startup ({status}): {}", stderr.trim());
            }
        }
    }

    /// Runs `func` on every input in a process of its own, enforcing the per-call deadline.
    pub fn run_batch(&mut self, func: &str, inputs: &[&str]) -> Result<BatchOutcome> {
        // Whatever arrived since the last batch cannot answer this one.
        if !self.discard_pending()? {
            return Ok(BatchOutcome::NotStarted);
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let nonce = new_nonce();
        let body = serde_json::to_vec(&Request { seq, func, inputs })?;
        let mut message = format!("{:015}\n", body.len()).into_bytes();
        message.extend_from_slice(&body);
        message.extend_from_slice(nonce.as_bytes());
        let sent_at = monotonic_ns();
        if self.requests.write_all(&message).is_err() {
            return Ok(BatchOutcome::NotStarted);
        }
        let timeout = self.timeout_ns;
        let batch_deadline = sent_at + timeout * (inputs.len() as u64 + 1) + GRACE_NS;
        let max_response = inputs.len() * RESPONSE_BYTES_PER_INPUT + (1 << 20);
        // The latest call the worker reported: (index, start). Only forward moves count,
        // so code that scribbles on the page cannot extend its own deadline.
        let mut current: Option<(i64, u64)> = None;
        loop {
            let now = monotonic_ns();
            self.adopt_progress(seq, sent_at, now, &mut current);
            let call_deadline = match current {
                Some((_, start)) => start + timeout,
                None => sent_at + timeout + GRACE_NS,
            };
            let deadline = call_deadline.min(batch_deadline);
            if now >= deadline {
                return Ok(self.kill_for_timeout(current, now >= batch_deadline));
            }
            // Until the worker reports its first step, look again soon: that report
            // (not the send time) starts the deadline.
            let wait = if current.is_none() {
                (deadline - now).min(FIRST_PROGRESS_POLL_NS)
            } else {
                deadline - now
            };
            if !self.read_some(wait)? {
                self.adopt_progress(seq, sent_at, monotonic_ns(), &mut current);
                let status = self.child.wait()?;
                return Ok(BatchOutcome::Died {
                    at: call_index(current),
                    verdict: death_verdict(status.signal(), status.code()),
                });
            }
            if self.buffer.len() > max_response {
                self.kill();
                return Ok(BatchOutcome::Died {
                    at: call_index(current),
                    verdict: Verdict::error(
                        ErrorKind::Crashed,
                        "worker flooded its response channel",
                    ),
                });
            }
            if let Some(line) = self.take_line() {
                self.adopt_progress(seq, sent_at, monotonic_ns(), &mut current);
                return Ok(self.finish_batch(&line, seq, &nonce, inputs.len(), current));
            }
        }
    }

    fn adopt_progress(&self, seq: i64, sent_at: u64, now: u64, current: &mut Option<(i64, u64)>) {
        let (index, start, page_seq) = self.progress.read();
        if page_seq == seq && current.is_none_or(|(seen, _)| index > seen) {
            *current = Some((index, (start.max(0) as u64).clamp(sent_at, now)));
        }
    }

    fn finish_batch(
        &mut self,
        line: &[u8],
        seq: i64,
        nonce: &str,
        count: usize,
        current: Option<(i64, u64)>,
    ) -> BatchOutcome {
        let at = call_index(current);
        let crashed = |message: &str| BatchOutcome::Died {
            at,
            verdict: Verdict::error(ErrorKind::Crashed, message),
        };
        let response = match serde_json::from_slice::<Response>(line) {
            Ok(response) if response.seq == seq && response.nonce == nonce => response,
            _ => {
                self.kill();
                return crashed("worker sent a malformed response");
            }
        };
        match (response.results, response.died, response.failed) {
            (Some(results), None, None) if results.len() == count => {
                let verdicts = results
                    .into_iter()
                    .map(|result| match result {
                        WireResult::Decided(true) => Verdict::pass(),
                        WireResult::Decided(false) => Verdict::fail(),
                        WireResult::Error(kind, message) => Verdict::error(kind, clip(message)),
                    })
                    .collect();
                BatchOutcome::Done {
                    verdicts,
                    retire: response.cpu > self.cpu_retire_seconds,
                }
            }
            (None, Some(death), None) => BatchOutcome::Died {
                at,
                verdict: death_verdict(death.signal, death.status),
            },
            (None, None, Some(reason)) if reason == "flooded" => {
                crashed("worker flooded its response channel")
            }
            _ => {
                self.kill();
                crashed("worker sent a malformed response")
            }
        }
    }

    fn kill_for_timeout(&mut self, current: Option<(i64, u64)>, whole_batch: bool) -> BatchOutcome {
        self.kill();
        let ms = self.timeout_ns / 1_000_000;
        let (at, message) = match call_index(current) {
            _ if whole_batch => (
                None,
                format!("the batch ran past its total deadline ({ms} ms per call)"),
            ),
            None => (
                None,
                format!("loading the function ran past the {ms} ms deadline"),
            ),
            Some(at) => (Some(at), format!("evaluate ran past the {ms} ms deadline")),
        };
        BatchOutcome::Died {
            at,
            verdict: Verdict::error(ErrorKind::Timeout, message),
        }
    }

    /// Drops buffered and already-written response bytes; false at end-of-file (the
    /// worker died).
    fn discard_pending(&mut self) -> Result<bool> {
        self.buffer.clear();
        loop {
            let mut poll = libc::pollfd {
                fd: self.responses.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            if ready <= 0 {
                return Ok(true);
            }
            let mut chunk = [0u8; 1 << 16];
            match self.responses.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Waits up to `wait_ns` for response bytes; false at end-of-file (the worker died).
    fn read_some(&mut self, wait_ns: u64) -> Result<bool> {
        let mut poll = libc::pollfd {
            fd: self.responses.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = wait_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, wait_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(err.into())
            };
        }
        if ready == 0 {
            return Ok(true);
        }
        let mut chunk = [0u8; 1 << 16];
        match self.responses.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(err) => Err(err.into()),
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buffer.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
        line.pop();
        Some(line)
    }

    /// Kills the worker's whole process group and reaps the worker.
    fn kill(&mut self) {
        // SAFETY: signalling a process group we created with setsid.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn call_index(current: Option<(i64, u64)>) -> Option<usize> {
    current.and_then(|(index, _)| usize::try_from(index).ok())
}

/// The verdict for a process that ended by `signal` or with exit `status`.
fn death_verdict(signal: Option<i32>, status: Option<i32>) -> Verdict {
    match signal {
        Some(libc::SIGXCPU) => Verdict::error(ErrorKind::Timeout, "CPU time limit exceeded"),
        Some(signal) => Verdict::error(
            ErrorKind::Crashed,
            format!("worker killed by signal {signal}"),
        ),
        None => Verdict::error(
            ErrorKind::Crashed,
            format!("worker exited with status {}", status.unwrap_or(-1)),
        ),
    }
}

/// A message cut to `MESSAGE_CHARS` characters, the way the worker cuts them.
fn clip(message: String) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        None => message,
        Some(_) => {
            let keep: String = message.chars().take(MESSAGE_CHARS - 3).collect();
            keep + "..."
        }
    }
}

/// 32 hex characters from the operating system's random source.
fn new_nonce() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock Python's `time.monotonic_ns` reads.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into `now`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The page the worker rewrites before every call, shared through a memfd.
struct ProgressPage {
    ptr: *mut libc::c_void,
}

// SAFETY: the mapping is only read, through volatile loads, by the thread owning the worker.
unsafe impl Send for ProgressPage {}

impl ProgressPage {
    fn create() -> io::Result<(ProgressPage, OwnedFd)> {
        // SAFETY: fresh descriptor and mapping owned by the returned values.
        unsafe {
            let fd = libc::memfd_create(c"autoif-verify-progress".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::ftruncate(fd.as_raw_fd(), PROGRESS_BYTES as libc::off_t) < 0 {
                return Err(io::Error::last_os_error());
            }
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                PROGRESS_BYTES,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok((ProgressPage { ptr }, fd))
        }
    }

    /// (index, start_ns, seq); read until two reads agree so a torn write is never used.
    fn read(&self) -> (i64, i64, i64) {
        let words = self.ptr as *const i64;
        // SAFETY: the mapping is PROGRESS_BYTES long and lives as long as `self`.
        let load = || unsafe {
            (
                std::ptr::read_volatile(words),
                std::ptr::read_volatile(words.add(1)),
                std::ptr::read_volatile(words.add(2)),
            )
        };
        let mut previous = load();
        loop {
            let next = load();
            if next == previous {
                return next;
            }
            previous = next;
        }
    }
}

impl Drop for ProgressPage {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `create`.
        unsafe {
            libc::munmap(self.ptr, PROGRESS_BYTES);
        }
    }
}
