//! The verification sandbox against hostile and broken functions (issue 3): every attack
//! gets an error verdict within the deadline plus a small margin, leaves no file and no
//! process behind, and does not disturb a job running beside it. Each attack runs twice:
//! with the Python guard (the normal configuration) and without it, where only the OS
//! layers stand between the code and the machine.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autoif::verify::{ErrorKind, FunctionRun, Outcome, Sandbox, SandboxOptions, Verdict};

const TIMEOUT: Duration = Duration::from_millis(500);
/// Kill, reap and (after an earlier kill) a worker restart.
const MARGIN: Duration = Duration::from_millis(700);

/// Tests here count processes and temporary folders, so they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_sandbox(python_guard: bool, cache_entries: usize) -> Option<Sandbox> {
    if !common::python_available(None) {
        return None;
    }
    let options = SandboxOptions {
        workers: 2,
        timeout: TIMEOUT,
        python_guard,
        cache_entries,
        ..Default::default()
    };
    Some(Sandbox::new(options).expect("sandbox starts"))
}

fn job(func: &str, inputs: &[&str]) -> FunctionRun {
    FunctionRun {
        func: func.to_string(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    }
}

fn outcomes(verdicts: &[Verdict]) -> Vec<Outcome> {
    verdicts.iter().map(|v| v.outcome).collect()
}

/// A benign job run beside each attack: 200 inputs, alternately passing and failing.
fn peer_job() -> (FunctionRun, Vec<Outcome>) {
    let inputs: Vec<String> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                format!("ok {i}")
            } else {
                format!("no {i}")
            }
        })
        .collect();
    let expected = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                Outcome::Pass
            } else {
                Outcome::Fail
            }
        })
        .collect();
    let func = "import re\ndef evaluate(response):\n    return re.match(r'ok \\d+$', response) is not None";
    (
        FunctionRun {
            func: func.into(),
            inputs,
        },
        expected,
    )
}

/// Which outcome an attack may end in.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Error(ErrorKind),
    /// The one of two errors that comes first (memory growth may hit the deadline first).
    EitherError(ErrorKind, ErrorKind),
    /// Any error, or `False`: the code reports whether its harmful step worked.
    NotPass,
    /// The code may succeed; a later check shows that nothing leaked.
    Anything,
}

impl Expect {
    fn allows(self, outcome: Outcome) -> bool {
        match (self, outcome) {
            (Expect::Error(kind), Outcome::Error(got)) => kind == got,
            (Expect::EitherError(a, b), Outcome::Error(got)) => got == a || got == b,
            (Expect::NotPass, outcome) => outcome != Outcome::Pass,
            (Expect::Anything, _) => true,
            _ => false,
        }
    }
}

/// What must stop an attack when the Python guard is off.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Nothing,
    /// Blocking sockets, new processes, file writes or signals needs the seccomp filter.
    Seccomp,
    /// The network: seccomp or the network namespace.
    SeccompOrNetns,
}

struct Attack {
    name: &'static str,
    source: String,
    guarded: Expect,
    unguarded: Expect,
    needs: Needs,
}

fn attacks(file: &str, port: u16) -> Vec<Attack> {
    use ErrorKind::*;
    let attack = |name, source: &str, guarded, unguarded, needs| Attack {
        name,
        source: source
            .replace("{FILE}", file)
            .replace("{PORT}", &port.to_string()),
        guarded,
        unguarded,
        needs,
    };
    let timeout = Expect::Error(Timeout);
    let forbidden = Expect::Error(Forbidden);
    vec![
        attack("infinite loop", "def evaluate(r):\n    while True:\n        pass", timeout, timeout, Needs::Nothing),
        attack("sleep past the deadline", "import time\ndef evaluate(r):\n    time.sleep(30)\n    return True", timeout, timeout, Needs::Nothing),
        attack(
            "loop that ignores and resets SIGALRM",
            "import signal\ndef evaluate(r):\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        signal.alarm(0)",
            forbidden,
            timeout,
            Needs::Nothing,
        ),
        attack(
            "allocate 6 GiB",
            "def evaluate(r):\n    block = bytearray(6 * 1024 ** 3)\n    return True",
            Expect::Error(Memory),
            Expect::Error(Memory),
            Needs::Nothing,
        ),
        attack(
            "unbounded list growth",
            "def evaluate(r):\n    items = []\n    while True:\n        items.append([0] * 1000)",
            Expect::EitherError(Memory, Timeout),
            Expect::EitherError(Memory, Timeout),
            Needs::Nothing,
        ),
        attack(
            "catastrophic regex backtracking",
            "import re\ndef evaluate(r):\n    return re.match(r'(a+)+$', 'a' * 64 + 'b') is not None",
            timeout,
            timeout,
            Needs::Nothing,
        ),
        attack(
            "50 MB printed to stdout",
            "def evaluate(r):\n    print('x' * 50_000_000)\n    return True",
            Expect::Error(Runtime),
            Expect::Error(Runtime),
            Needs::Nothing,
        ),
        attack("read stdin", "def evaluate(r):\n    return input() == 'x'", forbidden, Expect::Error(Runtime), Needs::Nothing),
        attack("sys.exit", "import sys\ndef evaluate(r):\n    sys.exit(0)", forbidden, Expect::Error(Runtime), Needs::Nothing),
        attack("os._exit", "import os\ndef evaluate(r):\n    os._exit(0)", forbidden, Expect::Error(Crashed), Needs::Nothing),
        attack(
            "write a file under /tmp",
            "def evaluate(r):\n    with open('{FILE}', 'w') as out:\n        out.write('pwned')\n    return True",
            forbidden,
            Expect::Error(Runtime),
            Needs::Seccomp,
        ),
        attack(
            "os.system",
            "import os\ndef evaluate(r):\n    return os.system('echo pwned > {FILE}') == 0",
            forbidden,
            Expect::NotPass,
            Needs::Seccomp,
        ),
        attack(
            "subprocess",
            "import subprocess\ndef evaluate(r):\n    subprocess.run(['touch', '{FILE}'])\n    return True",
            forbidden,
            Expect::Error(Runtime),
            Needs::Seccomp,
        ),
        attack(
            "os.fork in a loop",
            "import os\ndef evaluate(r):\n    while True:\n        os.fork()",
            forbidden,
            Expect::Error(Runtime),
            Needs::Seccomp,
        ),
        attack(
            "__import__('os')",
            "def evaluate(r):\n    return __import__('os').system('touch {FILE}') == 0",
            forbidden,
            Expect::NotPass,
            Needs::Seccomp,
        ),
        attack(
            "__subclasses__ route back to __import__",
            "def evaluate(r):\n    for cls in ().__class__.__base__.__subclasses__():\n        if cls.__name__ == 'catch_warnings':\n            os = cls()._module.__builtins__['__import__']('os')\n            return os.system('touch {FILE}') == 0\n    return False",
            forbidden,
            Expect::NotPass,
            Needs::Seccomp,
        ),
        attack(
            "os.kill(os.getppid(), 9)",
            "import os\ndef evaluate(r):\n    os.kill(os.getppid(), 9)\n    return True",
            forbidden,
            Expect::Error(Runtime),
            Needs::Seccomp,
        ),
        attack(
            "TCP connection to 127.0.0.1",
            "import socket\ndef evaluate(r):\n    socket.create_connection(('127.0.0.1', {PORT}), timeout=1).close()\n    return True",
            forbidden,
            Expect::Error(Runtime),
            Needs::SeccompOrNetns,
        ),
        attack(
            "ctypes call into libc",
            "import ctypes\ndef evaluate(r):\n    libc = ctypes.CDLL(None)\n    return libc.kill(libc.getppid(), 0) == 0",
            forbidden,
            Expect::NotPass,
            Needs::Seccomp,
        ),
        attack(
            "ctypes segfault",
            "import ctypes\ndef evaluate(r):\n    return ctypes.string_at(0) == b''",
            forbidden,
            Expect::Error(Crashed),
            Needs::Nothing,
        ),
        attack(
            "threads that spin forever",
            "import threading\ndef evaluate(r):\n    def spin():\n        while True:\n            pass\n    for _ in range(4):\n        threading.Thread(target=spin, daemon=True).start()\n    return True",
            forbidden,
            Expect::Error(Runtime),
            Needs::Seccomp,
        ),
        attack(
            "monkey-patch builtins",
            "import builtins\ndef evaluate(r):\n    builtins.len = lambda x: 0\n    builtins.print = None\n    return True",
            forbidden,
            Expect::Anything,
            Needs::Nothing,
        ),
        attack(
            "patch __builtins__ in place",
            "def evaluate(r):\n    __builtins__['len'] = lambda x: 0\n    return True",
            forbidden,
            Expect::Anything,
            Needs::Nothing,
        ),
    ]
}

/// Every process on the machine: pid -> (parent pid, state, command line).
fn processes() -> HashMap<i64, (i64, char, String)> {
    let mut procs = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = fields[0].chars().next().unwrap_or('?');
        procs.insert(pid, (fields[1].parse().unwrap(), state, cmdline));
    }
    procs
}

fn is_worker_command(cmd: &str) -> bool {
    cmd.contains("autoif-verify-worker")
}

/// Processes forked by a worker's python (rather than the workers themselves) that are
/// still alive: a function's process outliving its batch, or anything it started. The
/// test process is a child subreaper, so orphans stay visible here (a python reparented
/// to this process lost the holder that kept it, and counts too).
fn stray_processes() -> Vec<String> {
    let me = std::process::id() as i64;
    let procs = processes();
    let worker_command = |pid: &i64| {
        procs
            .get(pid)
            .is_some_and(|(_, _, cmd)| is_worker_command(cmd))
    };
    procs
        .iter()
        .filter(|(_, (_, state, _))| *state != 'Z' && *state != 'X')
        .filter(|(pid, (ppid, _, _))| worker_command(ppid) || (*ppid == me && worker_command(pid)))
        .map(|(pid, (_, _, cmd))| format!("{pid}: {}", cmd.chars().take(80).collect::<String>()))
        .collect()
}

/// Live worker pythons anywhere below this process.
fn live_workers() -> usize {
    let me = std::process::id() as i64;
    let procs = processes();
    let below_me = |mut pid: i64| {
        while let Some((ppid, _, _)) = procs.get(&pid) {
            if *ppid == me {
                return true;
            }
            pid = *ppid;
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, (_, state, cmd))| *state != 'Z' && is_worker_command(cmd) && below_me(**pid))
        .count()
}

/// What `count` finds once processes already killed have had `limit` to finish exiting:
/// a worker's holder is reaped at once, the namespace's init it held a moment later.
fn after_exits<T: Default + PartialEq>(limit: Duration, count: impl Fn() -> T) -> T {
    let started = Instant::now();
    loop {
        let left = count();
        if left == T::default() || started.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker_dirs() -> Vec<PathBuf> {
    let prefix = format!("autoif-verify-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn become_subreaper() {
    // SAFETY: a process attribute with no memory arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
    }
}

fn run_attacks(python_guard: bool) {
    become_subreaper();
    let Some(sandbox) = start_sandbox(python_guard, 0) else {
        return;
    };
    let layers = sandbox.layers();
    eprintln!("python guard {python_guard}, OS layers {layers:?}");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let file = std::env::temp_dir().join(format!("autoif-attack-{}", std::process::id()));
    let file_str = file.to_str().unwrap();
    let (peer, peer_expected) = peer_job();
    let after = job(
        "def evaluate(r):\n    print(r)\n    return len(r) == 3 and isinstance(r, str)",
        &["abc"],
    );
    for attack in attacks(file_str, listener.local_addr().unwrap().port()) {
        let contained_by_os = match attack.needs {
            Needs::Nothing => true,
            Needs::Seccomp => layers.seccomp,
            Needs::SeccompOrNetns => layers.seccomp || layers.namespaces,
        };
        if !python_guard && !contained_by_os {
            eprintln!(
                "SKIP {}: needs {:?}, which this kernel does not grant",
                attack.name, attack.needs
            );
            continue;
        }
        let started = Instant::now();
        let verdicts = sandbox
            .run(&[job(&attack.source, &["x"]), peer.clone()])
            .unwrap();
        let elapsed = started.elapsed();
        let verdict = &verdicts[0][0];
        let expect = if python_guard {
            attack.guarded
        } else {
            attack.unguarded
        };
        eprintln!(
            "{:<42} {:>5} ms  {:?} {:?}",
            attack.name,
            elapsed.as_millis(),
            verdict.outcome,
            verdict.message
        );
        assert!(
            expect.allows(verdict.outcome),
            "{}: expected {expect:?}, got {verdict:?}",
            attack.name
        );
        assert!(
            elapsed < TIMEOUT + MARGIN,
            "{}: took {elapsed:?}",
            attack.name
        );
        assert_eq!(
            outcomes(&verdicts[1]),
            peer_expected,
            "{}: the job beside it changed",
            attack.name
        );
        assert!(!file.exists(), "{}: left {}", attack.name, file.display());
        assert!(
            listener.accept().is_err(),
            "{}: reached the TCP listener",
            attack.name
        );
        assert_eq!(
            after_exits(Duration::from_secs(2), stray_processes),
            Vec::<String>::new(),
            "{}: processes survived",
            attack.name
        );
        // The next function sees pristine builtins, print included.
        let next = sandbox.run(std::slice::from_ref(&after)).unwrap();
        assert_eq!(
            next[0][0].outcome,
            Outcome::Pass,
            "{}: leaked into the next function: {:?}",
            attack.name,
            next[0][0]
        );
    }
    drop(sandbox);
    assert_eq!(
        after_exits(Duration::from_secs(2), live_workers),
        0,
        "workers outlived the sandbox"
    );
    assert_eq!(
        worker_dirs(),
        Vec::<PathBuf>::new(),
        "working folders outlived the sandbox"
    );
}

#[test]
fn attacks_are_contained_with_the_python_guard() {
    let _serial = serial();
    run_attacks(true);
}

#[test]
fn attacks_are_contained_by_the_os_layers_alone() {
    let _serial = serial();
    run_attacks(false);
}

#[test]
fn every_verdict_kind() {
    let _serial = serial();
    let Some(sandbox) = start_sandbox(true, 0) else {
        return;
    };
    let cases: &[(&str, Outcome)] = &[
        ("def evaluate(r):\n    return r == 'x'", Outcome::Pass),
        ("def evaluate(r):\n    return r != 'x'", Outcome::Fail),
        ("from typing import List\ndef evaluate(r: str) -> bool:\n    words: List[str] = r.split()\n    return len(words) == 1", Outcome::Pass),
        ("def evaluate(r):\n    return r ==", Outcome::Error(ErrorKind::Compile)),
        ("def check(r):\n    return True", Outcome::Error(ErrorKind::MissingEvaluate)),
        ("evaluate = 3", Outcome::Error(ErrorKind::MissingEvaluate)),
        ("def evaluate(r):\n    return int(r) > 0", Outcome::Error(ErrorKind::Runtime)),
        ("raise ValueError('top level')\ndef evaluate(r):\n    return True", Outcome::Error(ErrorKind::Runtime)),
        ("while True:\n    pass", Outcome::Error(ErrorKind::Timeout)),
        ("def evaluate(r):\n    return 'x' * (8 << 30)", Outcome::Error(ErrorKind::Memory)),
        ("import pickle\ndef evaluate(r):\n    return True", Outcome::Error(ErrorKind::Forbidden)),
        ("def evaluate(r):\n    try:\n        import os\n    except ImportError:\n        pass\n    return True", Outcome::Error(ErrorKind::Forbidden)),
        ("def evaluate(r):\n    return getattr(r, '__class__') is str", Outcome::Error(ErrorKind::Forbidden)),
        // Hidden from the module view: it evaluates strings with unrestricted builtins.
        ("import typing\ndef evaluate(r):\n    return typing.get_type_hints is None", Outcome::Error(ErrorKind::Runtime)),
        ("def evaluate(r):\n    return 1", Outcome::Error(ErrorKind::BadReturn)),
        ("def evaluate(r):\n    return 'true'", Outcome::Error(ErrorKind::BadReturn)),
        ("def evaluate(r):\n    return None", Outcome::Error(ErrorKind::BadReturn)),
    ];
    let jobs: Vec<FunctionRun> = cases.iter().map(|(func, _)| job(func, &["x"])).collect();
    let verdicts = sandbox.run(&jobs).unwrap();
    for ((func, expected), got) in cases.iter().zip(&verdicts) {
        assert_eq!(got[0].outcome, *expected, "{func:?}: {:?}", got[0].message);
        assert_eq!(
            got[0].message.is_some(),
            matches!(expected, Outcome::Error(_)),
            "{func:?}"
        );
    }
    drop(sandbox);
    let Some(unguarded) = start_sandbox(false, 0) else {
        return;
    };
    let crashed = unguarded
        .run(&[job("import os\ndef evaluate(r):\n    os.abort()", &["x"])])
        .unwrap();
    assert_eq!(
        crashed[0][0].outcome,
        Outcome::Error(ErrorKind::Crashed),
        "{:?}",
        crashed[0][0]
    );
}

#[test]
fn helpers_imports_and_a_fresh_namespace_per_function() {
    let _serial = serial();
    let Some(sandbox) = start_sandbox(true, 0) else {
        return;
    };
    // A helper defined after `evaluate` and a module-level import: the paper's
    // exec-into-locals loop loses both.
    let helper = "import math\ndef evaluate(r):\n    return is_square(len(r))\n\ndef is_square(n):\n    return math.isqrt(n) ** 2 == n";
    let polluter = "import math\nimport re\nmath.sqrt = lambda x: -1\nre.match = None\nlen = lambda x: 0\nSEEN = True\ndef evaluate(r):\n    global COUNT\n    COUNT = 1\n    return math.sqrt(4) == -1 and len(r) == 0";
    let observer = "import math\nimport re\ndef evaluate(r):\n    return math.sqrt(4) == 2 and re.match('a', r) is not None and len(r) == 1 and 'SEEN' not in globals() and 'COUNT' not in globals()";
    for _ in 0..2 {
        let verdicts = sandbox
            .run(&[
                job(helper, &["abcd", "abc"]),
                job(polluter, &["a"]),
                job(observer, &["a"]),
            ])
            .unwrap();
        assert_eq!(outcomes(&verdicts[0]), [Outcome::Pass, Outcome::Fail]);
        assert_eq!(outcomes(&verdicts[1]), [Outcome::Pass], "{:?}", verdicts[1]);
        assert_eq!(outcomes(&verdicts[2]), [Outcome::Pass], "{:?}", verdicts[2]);
    }
    // Within one function's batch the namespace is shared, as in a plain exec.
    let counter = "calls = []\ndef evaluate(r):\n    calls.append(r)\n    return len(calls) == 3";
    let verdicts = sandbox.run(&[job(counter, &["a", "b", "c"])]).unwrap();
    assert_eq!(
        outcomes(&verdicts[0]),
        [Outcome::Fail, Outcome::Fail, Outcome::Pass]
    );
}

#[test]
fn a_worker_killed_mid_batch_is_replaced_and_the_rest_of_the_batch_resumes() {
    let _serial = serial();
    let Some(sandbox) = start_sandbox(true, 0) else {
        return;
    };
    let hang = "def evaluate(r):\n    while r == 'hang':\n        pass\n    return r == 'yes'";
    let started = Instant::now();
    let verdicts = sandbox
        .run(&[job(hang, &["yes", "hang", "no", "yes", "hang", "no"])])
        .unwrap();
    let (p, f, t) = (
        Outcome::Pass,
        Outcome::Fail,
        Outcome::Error(ErrorKind::Timeout),
    );
    assert_eq!(outcomes(&verdicts[0]), [p, t, f, p, t, f]);
    assert!(
        started.elapsed() < 2 * TIMEOUT + MARGIN,
        "{:?}",
        started.elapsed()
    );
    drop(sandbox);
    let Some(unguarded) = start_sandbox(false, 0) else {
        return;
    };
    let crash = "import os\ndef evaluate(r):\n    if r == 'boom':\n        os._exit(3)\n    return r == 'yes'";
    let verdicts = unguarded
        .run(&[job(crash, &["yes", "no", "boom", "yes", "no"])])
        .unwrap();
    let c = Outcome::Error(ErrorKind::Crashed);
    assert_eq!(outcomes(&verdicts[0]), [p, f, c, p, f]);
    assert_eq!(
        verdicts[0][2].message.as_deref(),
        Some("worker exited with status 3")
    );
}

#[test]
fn results_come_back_in_input_order_across_the_pool() {
    let _serial = serial();
    let Some(sandbox) = start_sandbox(true, 0) else {
        return;
    };
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let inputs: Vec<&str> = digits.iter().map(String::as_str).collect();
    let jobs: Vec<FunctionRun> = (0..60)
        .map(|k| {
            job(
                &format!("def evaluate(r):\n    return r == '{}'", k % 10),
                &inputs,
            )
        })
        .collect();
    let verdicts = sandbox.run(&jobs).unwrap();
    for (k, results) in verdicts.iter().enumerate() {
        let expected: Vec<Outcome> = (0..10)
            .map(|d| {
                if d == k % 10 {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                }
            })
            .collect();
        assert_eq!(outcomes(results), expected, "job {k}");
    }
    // One big job is split across workers and reassembled in order.
    let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let verdicts = sandbox
        .run(&[job(
            "def evaluate(r):\n    return int(r) % 7 == 0",
            &many_refs,
        )])
        .unwrap();
    let expected: Vec<Outcome> = (0..2000)
        .map(|i| {
            if i % 7 == 0 {
                Outcome::Pass
            } else {
                Outcome::Fail
            }
        })
        .collect();
    assert_eq!(outcomes(&verdicts[0]), expected);
    assert!(sandbox.run(&[]).unwrap().is_empty());
    assert_eq!(
        sandbox
            .run(&[job("def evaluate(r):\n    return True", &[])])
            .unwrap(),
        vec![Vec::<Verdict>::new()]
    );
}

#[test]
fn cached_and_repeated_pairs_run_once() {
    let _serial = serial();
    let Some(sandbox) = start_sandbox(true, 1000) else {
        return;
    };
    let slow = "import time\ndef evaluate(r):\n    time.sleep(0.2)\n    return r == 'a'";
    let started = Instant::now();
    // Four copies of one (function, input) pair across two jobs: one call.
    let first = sandbox
        .run(&[job(slow, &["a", "a", "b"]), job(slow, &["a", "b"])])
        .unwrap();
    let cold = started.elapsed();
    assert_eq!(
        outcomes(&first[0]),
        [Outcome::Pass, Outcome::Pass, Outcome::Fail]
    );
    assert_eq!(outcomes(&first[1]), [Outcome::Pass, Outcome::Fail]);
    assert!(
        cold >= Duration::from_millis(400) && cold < Duration::from_millis(800),
        "{cold:?}"
    );
    let started = Instant::now();
    let second = sandbox.run(&[job(slow, &["b", "a"])]).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcomes(&second[0]), [Outcome::Fail, Outcome::Pass]);
    drop(sandbox);
    let Some(uncached) = start_sandbox(true, 0) else {
        return;
    };
    let started = Instant::now();
    uncached.run(&[job(slow, &["a", "a", "a", "a"])]).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}
