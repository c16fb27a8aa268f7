//! The verification sandbox when the Python guard is gone (issue 17): with the guard
//! switched off, model code holds the real `os`, `fcntl` and `ctypes`, and only the OS
//! layers and the zygote design stand between it and the machine or the training data.
//! Every escape the issue found must fail: signals through `F_SETOWN`, killing the
//! supervisor, writing into descriptors the launcher left open, reading private files,
//! and one function changing the verdicts of the functions after it.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autoif::verify::{ErrorKind, FunctionRun, Outcome, Sandbox, SandboxOptions};
use common::{autoif_command, python_available};

const TIMEOUT: Duration = Duration::from_millis(1000);

/// Tests here count processes, so they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One worker, no cache, the guard off: what a function that escaped the guard sees.
fn unguarded(workers: usize) -> Option<Sandbox> {
    if !python_available(None) {
        return None;
    }
    let sandbox = Sandbox::new(SandboxOptions {
        workers,
        timeout: TIMEOUT,
        python_guard: false,
        cache_entries: 0,
        ..Default::default()
    })
    .expect("the sandbox starts with every layer");
    Some(sandbox)
}

fn job(func: &str, inputs: &[&str]) -> FunctionRun {
    FunctionRun {
        func: func.to_string(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    }
}

fn run_one(sandbox: &Sandbox, func: &str, input: &str) -> autoif::verify::Verdict {
    sandbox.run(&[job(func, &[input])]).unwrap()[0][0].clone()
}

/// Python that tries every way the issue found to make the kernel signal `{PID}`:
/// `F_SETOWN`/`F_SETOWN_EX` + `F_SETSIG` + `O_ASYNC` on a pipe of its own, the
/// `FIOSETOWN`/`SIOCSPGRP` ioctls, plain `kill`, and the same through ctypes. Returns
/// True when any step was accepted.
const SIGNAL_ATTACK: &str = r#"
import ctypes, fcntl, os, signal, struct
def evaluate(r):
    target = int(r)
    accepted = []
    def attempt(name, step):
        try:
            step()
            accepted.append(name)
        except OSError:
            pass
    rfd, wfd = os.pipe()
    attempt("F_SETOWN", lambda: fcntl.fcntl(rfd, fcntl.F_SETOWN, target))
    attempt("F_SETOWN_EX", lambda: fcntl.fcntl(rfd, 15, struct.pack("ii", 1, target)))
    attempt("F_SETSIG", lambda: fcntl.fcntl(rfd, 10, signal.SIGKILL))
    attempt("O_ASYNC", lambda: fcntl.fcntl(rfd, fcntl.F_SETFL, fcntl.fcntl(rfd, fcntl.F_GETFL) | os.O_ASYNC))
    attempt("FIOSETOWN", lambda: fcntl.ioctl(rfd, 0x8901, struct.pack("i", target)))
    attempt("SIOCSPGRP", lambda: fcntl.ioctl(rfd, 0x8902, struct.pack("i", target)))
    attempt("TIOCSPGRP", lambda: fcntl.ioctl(rfd, 0x5410, struct.pack("i", target)))
    try:
        os.write(wfd, b"x")
    except OSError:
        pass
    attempt("kill", lambda: os.kill(target, signal.SIGKILL))
    attempt("kill -1", lambda: os.kill(-1, signal.SIGKILL))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, 0, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG 0
        accepted.append("PR_SET_PDEATHSIG")
    if libc.fcntl(rfd, 8, target) == 0:  # F_SETOWN through libc
        accepted.append("libc F_SETOWN")
    if libc.kill(target, 9) == 0:
        accepted.append("libc kill")
    params = (ctypes.c_uint32 * 14)(56, 5)  # SCHED_IDLE
    if libc.syscall(314, target, params, 0) == 0:  # sched_setattr
        accepted.append("sched_setattr")
    return bool(accepted)
"#;

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        !matches!(state, Some('Z' | 'X'))
    })
}

#[test]
fn an_outside_process_survives_an_f_setown_kill_attempt() {
    let _serial = serial();
    let Some(sandbox) = unguarded(1) else {
        return;
    };
    let mut outside = Command::new("sleep").arg("30").spawn().unwrap();
    let verdict = run_one(&sandbox, SIGNAL_ATTACK, &outside.id().to_string());
    std::thread::sleep(Duration::from_millis(200));
    let survived = outside.try_wait().unwrap().is_none();
    let _ = outside.kill();
    let _ = outside.wait();
    assert!(survived, "the outside process was killed ({verdict:?})");
    assert_eq!(verdict.outcome, Outcome::Fail, "{verdict:?}");
}

/// Workers still alive below this process (it is a child subreaper, so a worker that
/// lost its supervisor is reparented here and still counts).
fn workers_below_me() -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("autoif-verify-worker")
            || !process_alive(pid)
        {
            continue;
        }
        let mut ancestor = pid;
        while ancestor > 1 {
            let stat =
                std::fs::read_to_string(format!("/proc/{ancestor}/stat")).unwrap_or_default();
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                break;
            };
            ancestor = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ancestor == me {
                found.push(pid.to_string());
                break;
            }
        }
    }
    found
}

fn become_subreaper() {
    // SAFETY: a process attribute with no memory arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
    }
}

fn write_jobs(dir: &Path, lines: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    let path = dir.join("jobs.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for (id, func, inputs) in lines {
        let line = serde_json::json!({"id": id, "func": func, "inputs": inputs});
        writeln!(file, "{line}").unwrap();
    }
    path
}

fn autoif_verify(input: &Path, out: &Path) -> Command {
    let mut command = autoif_command();
    command.args([
        "verify",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timeout-ms",
        "3000",
        "--workers",
        "1",
    ]);
    command
}

/// Waits until no worker is left below this process, up to `limit`.
fn wait_for_no_workers(limit: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        let left = workers_below_me();
        if left.is_empty() || started.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `SIGNAL_ATTACK` behind the Python guard, reaching the real modules through the
/// format-string escape of issue 17 (a `string.Formatter` subclass is handed what
/// `string.py` looked up with the real `getattr`).
fn signal_attack_past_the_guard() -> String {
    SIGNAL_ATTACK.replace(
        "import ctypes, fcntl, os, signal, struct\n",
        "import string\n\
         class Reach(string.Formatter):\n    \
             def format_field(self, value, spec):\n        \
                 Reach.found = value\n        \
                 return ''\n\
         reach = Reach()\n\
         reach.format('{0.format.__globals__[__builtins__][__import__]}', reach)\n\
         ctypes, fcntl, os, signal, struct = [Reach.found(m) for m in ('ctypes', 'fcntl', 'os', 'signal', 'struct')]\n",
    )
}

#[test]
fn the_supervisor_survives_an_attack_on_itself_and_no_worker_outlives_the_command() {
    let _serial = serial();
    if !python_available(None) {
        return;
    }
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // The input is a FIFO, so the jobs can name the pid of the command reading them.
    let input = dir.path().join("jobs.fifo");
    let fifo = std::ffi::CString::new(input.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let command = autoif_verify(&input, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let supervisor = command.id().to_string();
    let attack = signal_attack_past_the_guard();
    {
        let mut jobs = std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .unwrap();
        for (id, func, inputs) in [
            ("attack", attack.as_str(), vec![supervisor.as_str(), "1"]),
            (
                "after",
                "def evaluate(r):\n    return r == 'ok'",
                vec!["ok"],
            ),
        ] {
            let line = serde_json::json!({"id": id, "func": func, "inputs": inputs});
            writeln!(jobs, "{line}").unwrap();
        }
    }
    let output = command.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "autoif verify died: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    eprintln!("{lines:?}");
    assert_eq!(lines.len(), 2);
    for result in lines[0]["results"].as_array().unwrap() {
        assert_ne!(
            result["verdict"], "pass",
            "a signal step was accepted: {result}"
        );
    }
    assert_eq!(lines[1]["results"][0]["verdict"], "pass", "{lines:?}");
    assert_eq!(
        wait_for_no_workers(Duration::from_secs(2)),
        Vec::<String>::new()
    );

    // Killed outright in the middle of a call, the command takes its workers with it.
    let slow = write_jobs(
        dir.path(),
        &[(
            "slow",
            "import time\ndef evaluate(r):\n    time.sleep(2.5)\n    return True",
            &["x"],
        )],
    );
    let mut command = autoif_verify(&slow, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while workers_below_me().len() < 2 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The zygote and the function's process.
    assert_eq!(workers_below_me().len(), 2, "the slow call did not start");
    command.kill().unwrap();
    command.wait().unwrap();
    assert_eq!(
        wait_for_no_workers(Duration::from_secs(1)),
        Vec::<String>::new(),
        "workers outlived a SIGKILLed `autoif verify`"
    );
}

#[test]
fn the_supervisor_process_survives_an_unguarded_attack_on_itself() {
    let _serial = serial();
    let Some(sandbox) = unguarded(1) else {
        return;
    };
    let me = std::process::id().to_string();
    let verdict = run_one(&sandbox, SIGNAL_ATTACK, &me);
    // Still here, and the sandbox still answers.
    assert_eq!(verdict.outcome, Outcome::Fail, "{verdict:?}");
    let after = run_one(&sandbox, "def evaluate(r):\n    return r == 'ok'", "ok");
    assert_eq!(after.outcome, Outcome::Pass);
}

#[test]
fn a_pipe_inherited_from_the_launcher_receives_nothing() {
    let _serial = serial();
    if !python_available(None) {
        return;
    }
    // A pipe without close-on-exec, as a launching shell would leave one.
    let mut fds = [0; 2];
    // SAFETY: pipe fills both descriptors, which we then own.
    let (read, write) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let Some(sandbox) = unguarded(1) else {
        return;
    };
    let spray = "import os\ndef evaluate(r):\n    hits = 0\n    for fd in range(0, 1024):\n        try:\n            os.write(fd, b'pwned\\n')\n            hits += 1\n        except OSError:\n            pass\n    return hits > 0";
    let verdict = run_one(&sandbox, spray, "x");
    drop(sandbox);
    drop(write);
    let mut buffer = [0u8; 64];
    // SAFETY: reading into a local buffer from a descriptor we own.
    let got = unsafe { libc::read(read.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    assert_eq!(got, 0, "the inherited pipe received data ({verdict:?})");
}

#[test]
fn private_files_and_other_processes_are_not_readable() {
    let _serial = serial();
    let Some(sandbox) = unguarded(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "the secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let reader = "import os\ndef evaluate(path):\n    try:\n        with open(path, 'rb') as f:\n            return len(f.read()) > 0\n    except OSError:\n        return False";
    let paths = [
        secret.to_str().unwrap().to_string(),
        "/etc/shadow".to_string(),
        "/etc/passwd".to_string(),
        format!("/proc/{}/cmdline", std::process::id()),
        "/proc/1/cmdline".to_string(),
        "/proc/self/status".to_string(),
        std::env::current_dir()
            .unwrap()
            .join("Cargo.toml")
            .to_str()
            .unwrap()
            .to_string(),
        std::env::var("HOME").unwrap_or("/root".into()) + "/.bashrc",
    ];
    let inputs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let verdicts = sandbox.run(&[job(reader, &inputs)]).unwrap();
    for (path, verdict) in paths.iter().zip(&verdicts[0]) {
        assert_eq!(verdict.outcome, Outcome::Fail, "{path} was readable");
    }
    // Nothing of the environment either (python itself may set LC_CTYPE).
    let env = run_one(
        &sandbox,
        "import os\ndef evaluate(r):\n    return set(os.environ) <= {'LC_CTYPE'}",
        "x",
    );
    assert_eq!(env.outcome, Outcome::Pass, "{env:?}");
}

const HONEST: &str = "import json\ndef evaluate(r):\n    return json.loads(r).get('ok') is True";
const NOT_OK: &str = r#"{"ok": false}"#;

/// Functions that try to change what later functions on the same worker return.
fn polluters() -> Vec<(&'static str, String)> {
    let forged = (1..200)
        .map(|seq| format!("{{\"seq\": {seq}, \"results\": [true], \"cpu\": 0.0}}"))
        .collect::<Vec<_>>()
        .join("\\n");
    vec![
        (
            "JSON decoder patched at top level",
            "import json\njson.JSONDecoder.decode = lambda self, s, *a: {'ok': True}\ndef evaluate(r):\n    return True".to_string(),
        ),
        (
            "the worker's Worker class replaced",
            "import sys\nmain = sys.modules['__main__']\nmain.Worker.run_batch = lambda self, seq, source, inputs: [True] * len(inputs)\nmain.Worker.collect = lambda self, child, fd, count: {'results': [True] * count}\ndef evaluate(r):\n    return True".to_string(),
        ),
        (
            "forged replies for later batches written to every descriptor",
            format!("import os\nFORGED = b'{forged}\\n'\ndef evaluate(r):\n    for fd in range(3, 64):\n        try:\n            os.write(fd, FORGED)\n        except OSError:\n            pass\n    return True"),
        ),
        (
            "progress page and every descriptor rewritten",
            "import mmap, os\ndef evaluate(r):\n    for fd in range(3, 64):\n        try:\n            page = mmap.mmap(fd, 24)\n            page[:] = bytes(24)\n        except (OSError, ValueError):\n            pass\n    return True".to_string(),
        ),
    ]
}

#[test]
fn a_function_cannot_change_the_next_functions_verdicts() {
    let _serial = serial();
    let Some(sandbox) = unguarded(1) else {
        return;
    };
    assert_eq!(run_one(&sandbox, HONEST, NOT_OK).outcome, Outcome::Fail);
    for (name, polluter) in polluters() {
        // Separate runs, one worker: the polluter's batch, then the honest function.
        run_one(&sandbox, &polluter, "x");
        let verdict = run_one(&sandbox, HONEST, NOT_OK);
        assert_eq!(verdict.outcome, Outcome::Fail, "{name}: {verdict:?}");
        // One run: the honest function right behind the polluter on the same worker.
        let verdicts = sandbox
            .run(&[
                job(&polluter, &["x"]),
                job(HONEST, &[NOT_OK, r#"{"ok": true}"#]),
            ])
            .unwrap();
        let honest: Vec<Outcome> = verdicts[1].iter().map(|v| v.outcome).collect();
        assert_eq!(honest, [Outcome::Fail, Outcome::Pass], "{name}");
    }
}

#[test]
fn messages_are_capped_and_a_timeout_can_skip_the_rest_of_the_batch() {
    let _serial = serial();
    if !python_available(None) {
        return;
    }
    let sandbox = Sandbox::new(SandboxOptions {
        workers: 1,
        timeout: Duration::from_millis(300),
        cache_entries: 0,
        skip_after_timeout: true,
        ..Default::default()
    })
    .unwrap();
    let long_name = "a".repeat(2_000_000);
    let cases = [
        (
            format!("import {long_name}\ndef evaluate(r):\n    return True"),
            ErrorKind::Forbidden,
        ),
        (
            format!("def evaluate(r):\n    return type('{long_name}', (), {{}})()"),
            ErrorKind::BadReturn,
        ),
    ];
    for (func, kind) in &cases {
        let verdict = run_one(&sandbox, func, "x");
        assert_eq!(
            verdict.outcome,
            Outcome::Error(*kind),
            "{:?}",
            verdict.message
        );
        assert!(verdict.message.as_ref().unwrap().chars().count() <= 300);
    }
    let hang = "def evaluate(r):\n    while r == 'hang':\n        pass\n    return r == 'yes'";
    let started = Instant::now();
    let verdicts = sandbox
        .run(&[job(hang, &["yes", "hang", "no", "hang", "yes"])])
        .unwrap();
    let outcomes: Vec<Outcome> = verdicts[0].iter().map(|v| v.outcome).collect();
    let t = Outcome::Error(ErrorKind::Timeout);
    assert_eq!(outcomes, [Outcome::Pass, t, t, t, t]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
