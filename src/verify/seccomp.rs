//! The worker's seccomp filters, as classic-BPF programs built here and installed in
//! three stages that only ever narrow what is allowed:
//!
//! * `start`, installed before `exec`: an allow-list of the system calls CPython needs to
//!   start and run a text checker, with argument filters (read-only `open`, no `fcntl`
//!   owner or signal commands, only terminal-query and close-on-exec `ioctl`s, read-only
//!   `prctl` plus tightening the filter, `clone` only as a plain `fork`, signals only to
//!   the worker's own processes). Everything else fails with `EPERM`.
//! * `serving`, installed by the zygote on itself once its modules are imported: no
//!   `execve` from then on.
//! * `function`, installed by each per-function child before it runs model code: no new
//!   processes or threads, signals and `prlimit64` only to itself.
//!
//! The system calls were found by running the worker under `strace -f` on the
//! verification tests and the AutoIF sample functions.

use std::io;

use libc::{c_int, c_long, sock_filter};
use serde_json::{json, Value};

use super::syscall::check;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// The flags glibc's `fork` passes to `clone`; threads and namespaces need others.
const FORK_FLAGS: u32 =
    (libc::CLONE_CHILD_CLEARTID | libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u32;

const WRITE_FLAGS: u32 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;

/// `ioctl` requests a worker may make: terminal queries (Python asks whether its streams
/// are terminals) and close-on-exec flags. Owner and process-group requests
/// (`FIOSETOWN`, `SIOCSPGRP`, `TIOCSPGRP`) are among those refused.
const IOCTLS: &[u32] = &[
    libc::TCGETS as u32,
    libc::TIOCGWINSZ as u32,
    libc::FIONREAD as u32,
    libc::FIOCLEX as u32,
    libc::FIONCLEX as u32,
];

/// `fcntl` commands a worker may use; `F_SETFL` is checked on its own (no `O_ASYNC`).
/// `F_SETOWN`, `F_SETOWN_EX`, `F_SETSIG`, leases and notifications are refused.
const FCNTLS: &[u32] = &[
    libc::F_DUPFD as u32,
    libc::F_GETFD as u32,
    libc::F_SETFD as u32,
    libc::F_GETFL as u32,
    libc::F_DUPFD_CLOEXEC as u32,
    libc::F_GETPIPE_SZ as u32,
];

/// `prctl` options a worker may use: queries, and the two that only tighten.
const PRCTLS: &[u32] = &[
    libc::PR_SET_SECCOMP as u32,
    libc::PR_GET_SECCOMP as u32,
    libc::PR_SET_NO_NEW_PRIVS as u32,
    libc::PR_GET_NO_NEW_PRIVS as u32,
    libc::PR_GET_DUMPABLE as u32,
    libc::PR_GET_NAME as u32,
];

/// System calls allowed without conditions before and after `exec`.
const ALLOWED: &[c_long] = &[
    libc::SYS_read,
    libc::SYS_newfstatat,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_write,
    libc::SYS_rt_sigaction,
    libc::SYS_brk,
    libc::SYS_mprotect,
    libc::SYS_getdents64,
    libc::SYS_getrusage,
    libc::SYS_munmap,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_set_robust_list,
    libc::SYS_wait4,
    libc::SYS_pipe2,
    libc::SYS_exit_group,
    libc::SYS_clock_nanosleep,
    libc::SYS_readlinkat,
    libc::SYS_pread64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getpgid,
    libc::SYS_getsid,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_waitid,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_close_range,
    libc::SYS_exit,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_times,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_getpriority,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_setitimer,
    libc::SYS_getitimer,
    libc::SYS_restart_syscall,
    libc::SYS_execve,
];

/// The x86_64 forms that newer architectures replaced by the calls above.
#[cfg(target_arch = "x86_64")]
const ALLOWED_LEGACY: &[c_long] = &[
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_dup2,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_alarm,
    libc::SYS_time,
    libc::SYS_arch_prctl,
    libc::SYS_getdents,
    libc::SYS_pause,
    libc::SYS_getpgrp,
    libc::SYS_getrlimit,
    libc::SYS_setrlimit,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_LEGACY: &[c_long] = &[];

/// `open`-style calls and the index of their flags argument: only read-only opens pass.
#[cfg(target_arch = "x86_64")]
const OPENS: &[(c_long, u32)] = &[(libc::SYS_openat, 2), (libc::SYS_open, 1)];
#[cfg(not(target_arch = "x86_64"))]
const OPENS: &[(c_long, u32)] = &[(libc::SYS_openat, 2)];

/// Calls whose first argument is the pid they act on.
const SIGNALS: &[c_long] = &[
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
];

/// Every call that makes a process: all of them refused in a function's process.
#[cfg(target_arch = "x86_64")]
const NEW_PROCESSES: &[c_long] = &[libc::SYS_clone, libc::SYS_fork, libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const NEW_PROCESSES: &[c_long] = &[libc::SYS_clone];

/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const fn arg_low_offset(index: u32) -> u32 {
    16 + 8 * index
}

/// A value patched in when the program is installed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Patch {
    /// The installing process's pid.
    OwnPid,
    /// The bound below which positive pids are the worker's own: all of them inside a
    /// PID namespace, none outside one.
    PidLimit,
}

/// A classic-BPF seccomp program with the places where pids are patched in.
#[derive(Clone, Debug)]
pub(crate) struct BpfProgram {
    program: Vec<sock_filter>,
    patches: Vec<(usize, Patch)>,
}

/// The three stages of the worker's filter (see the module comment).
pub(crate) struct Filters {
    pub start: BpfProgram,
    pub serving: BpfProgram,
    pub function: BpfProgram,
}

impl Filters {
    /// None where this architecture has no system-call table here.
    pub fn build() -> Option<Filters> {
        let arch = AUDIT_ARCH?;
        let mut start = Builder::new(arch);
        for &nr in ALLOWED.iter().chain(ALLOWED_LEGACY) {
            start.rule(nr, &[ret(libc::SECCOMP_RET_ALLOW)]);
        }
        for &(nr, flags) in OPENS {
            start.rule(nr, &arg_has_none(flags, WRITE_FLAGS, libc::EACCES));
        }
        start.rule(libc::SYS_ioctl, &arg_in(1, IOCTLS));
        start.rule(libc::SYS_fcntl, &fcntl());
        start.rule(libc::SYS_prctl, &arg_in(0, PRCTLS));
        start.rule(libc::SYS_clone, &arg_in(0, &[FORK_FLAGS]));
        for &nr in SIGNALS {
            start.rule_patched(nr, own_pid(false, true));
        }
        start.rule_patched(libc::SYS_prlimit64, own_pid(true, false));
        // So that libc falls back to calls the filter can inspect (their arguments
        // live behind pointers).
        start.rule(libc::SYS_clone3, &[ret_errno(libc::ENOSYS)]);
        start.rule(libc::SYS_openat2, &[ret_errno(libc::ENOSYS)]);
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            start.rule(nr, &[ret_errno(libc::EACCES)]);
        }
        let start = start.finish(ret_errno(libc::EPERM));

        let mut serving = Builder::new(arch);
        for nr in [libc::SYS_execve, libc::SYS_execveat] {
            serving.rule(nr, &[ret_errno(libc::EPERM)]);
        }
        let serving = serving.finish(ret(libc::SECCOMP_RET_ALLOW));

        let mut function = Builder::new(arch);
        for &nr in NEW_PROCESSES {
            function.rule(nr, &[ret_errno(libc::EPERM)]);
        }
        for &nr in SIGNALS {
            function.rule_patched(nr, own_pid(false, false));
        }
        function.rule_patched(libc::SYS_prlimit64, own_pid(true, false));
        let function = function.finish(ret(libc::SECCOMP_RET_ALLOW));

        Some(Filters {
            start,
            serving,
            function,
        })
    }
}

impl BpfProgram {
    /// Patches in the caller's pid and loads the program (after `no_new_privs`).
    /// `in_pid_namespace`: the caller's PID namespace holds only the worker.
    pub fn install(&mut self, own_pid: libc::pid_t, in_pid_namespace: bool) -> io::Result<()> {
        self.patch(own_pid as u32, in_pid_namespace);
        let program = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_mut_ptr(),
        };
        // SAFETY: `program` points into `self.program`, alive for the duration of the call.
        unsafe {
            check(libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            check(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog as libc::c_ulong,
            ))
        }
    }

    fn patch(&mut self, own_pid: u32, in_pid_namespace: bool) {
        for &(index, patch) in &self.patches {
            self.program[index].k = match patch {
                Patch::OwnPid => own_pid,
                Patch::PidLimit if in_pid_namespace => 0x8000_0000,
                Patch::PidLimit => 0,
            };
        }
    }

    /// The form the Python worker installs: `{"program": [[code, jt, jf, k], ...],
    /// "own_pid_slots": [index, ...]}`. Only own-pid patches are supported there.
    pub fn to_json(&self) -> Value {
        debug_assert!(self.patches.iter().all(|&(_, p)| p == Patch::OwnPid));
        let program: Vec<[u32; 4]> = self
            .program
            .iter()
            .map(|i| [i.code as u32, i.jt as u32, i.jf as u32, i.k])
            .collect();
        let slots: Vec<usize> = self.patches.iter().map(|&(index, _)| index).collect();
        json!({"program": program, "own_pid_slots": slots})
    }
}

/// One instruction of a rule's body; jumps name their targets by position in the body.
#[derive(Clone, Copy)]
enum Step {
    Insn(sock_filter),
    /// `if A == k` (or `A & k` for `set`) go to body index `then`, else `otherwise`.
    Jump {
        set: bool,
        k: u32,
        patch: Option<Patch>,
        then: usize,
        otherwise: usize,
    },
    /// `if A >= k` go to `then`, else `otherwise`.
    AtLeast {
        patch: Option<Patch>,
        then: usize,
        otherwise: usize,
    },
}

/// Appends rules `if nr == N { body }`, where every body ends in a return.
struct Builder {
    program: Vec<sock_filter>,
    patches: Vec<(usize, Patch)>,
}

impl Builder {
    fn new(arch: u32) -> Self {
        let mut program = vec![
            load(ARCH_OFFSET),
            jump(libc::BPF_JEQ, arch, 1, 0),
            ret(libc::SECCOMP_RET_KILL_PROCESS),
            load(NR_OFFSET),
        ];
        if cfg!(target_arch = "x86_64") {
            // The x32 ABI numbers its calls from 0x40000000 and would slip past the table.
            program.push(jump(libc::BPF_JGE, 0x4000_0000, 0, 1));
            program.push(ret_errno(libc::ENOSYS));
        }
        Builder {
            program,
            patches: Vec::new(),
        }
    }

    fn rule(&mut self, nr: c_long, body: &[sock_filter]) {
        let steps: Vec<Step> = body.iter().map(|&i| Step::Insn(i)).collect();
        self.rule_patched(nr, steps);
    }

    fn rule_patched(&mut self, nr: c_long, body: Vec<Step>) {
        let skip = u8::try_from(body.len()).expect("rule body under 256 instructions");
        self.program.push(jump(libc::BPF_JEQ, nr as u32, 0, skip));
        let base = self.program.len();
        for (index, step) in body.into_iter().enumerate() {
            let offset = |target: usize| {
                u8::try_from(target - index - 1).expect("forward jump inside the rule")
            };
            let (insn, patch) = match step {
                Step::Insn(insn) => (insn, None),
                Step::Jump {
                    set,
                    k,
                    patch,
                    then,
                    otherwise,
                } => {
                    let op = if set { libc::BPF_JSET } else { libc::BPF_JEQ };
                    (jump(op, k, offset(then), offset(otherwise)), patch)
                }
                Step::AtLeast {
                    patch,
                    then,
                    otherwise,
                } => (
                    jump(libc::BPF_JGE, 0, offset(then), offset(otherwise)),
                    patch,
                ),
            };
            if let Some(patch) = patch {
                self.patches.push((base + index, patch));
            }
            self.program.push(insn);
        }
    }

    fn finish(mut self, default: sock_filter) -> BpfProgram {
        self.program.push(default);
        BpfProgram {
            program: self.program,
            patches: self.patches,
        }
    }
}

/// Allowed when the low 32 bits of argument `arg` are one of `values`, else `EPERM`.
fn arg_in(arg: u32, values: &[u32]) -> Vec<sock_filter> {
    let n = values.len();
    let mut body = vec![load(arg_low_offset(arg))];
    for (i, &value) in values.iter().enumerate() {
        body.push(jump(libc::BPF_JEQ, value, (n - i) as u8, 0));
    }
    body.push(ret_errno(libc::EPERM));
    body.push(ret(libc::SECCOMP_RET_ALLOW));
    body
}

/// Allowed when argument `arg` has none of `mask`'s bits, else `errno`.
fn arg_has_none(arg: u32, mask: u32, errno: c_int) -> Vec<sock_filter> {
    vec![
        load(arg_low_offset(arg)),
        jump(libc::BPF_JSET, mask, 0, 1),
        ret_errno(errno),
        ret(libc::SECCOMP_RET_ALLOW),
    ]
}

/// `fcntl`: the commands in `FCNTLS`, and `F_SETFL` without `O_ASYNC`.
fn fcntl() -> Vec<sock_filter> {
    let n = FCNTLS.len();
    let mut body = vec![
        load(arg_low_offset(1)),
        jump(libc::BPF_JEQ, libc::F_SETFL as u32, (n + 2) as u8, 0),
    ];
    for (i, &cmd) in FCNTLS.iter().enumerate() {
        body.push(jump(libc::BPF_JEQ, cmd, (n - i) as u8, 0));
    }
    body.push(ret_errno(libc::EPERM));
    body.push(ret(libc::SECCOMP_RET_ALLOW));
    body.extend(arg_has_none(2, libc::O_ASYNC as u32, libc::EPERM));
    body
}

/// A call on a pid: allowed on the caller itself, on 0 (itself, for `prlimit64`) when
/// `zero_ok`, and with `namespace_wide` on any positive pid below the patched limit.
fn own_pid(zero_ok: bool, namespace_wide: bool) -> Vec<Step> {
    const ALLOW: usize = 5;
    const DENY: usize = 4;
    let insn = |i| Step::Insn(i);
    vec![
        insn(load(arg_low_offset(0))),
        Step::Jump {
            set: false,
            k: 0,
            patch: Some(Patch::OwnPid),
            then: ALLOW,
            otherwise: 2,
        },
        Step::Jump {
            set: false,
            k: 0,
            patch: None,
            then: if zero_ok { ALLOW } else { DENY },
            otherwise: 3,
        },
        if namespace_wide {
            Step::AtLeast {
                patch: Some(Patch::PidLimit),
                then: DENY,
                otherwise: ALLOW,
            }
        } else {
            insn(ret_errno(libc::EPERM))
        },
        insn(ret_errno(libc::EPERM)),
        insn(ret(libc::SECCOMP_RET_ALLOW)),
    ]
}

fn load(offset: u32) -> sock_filter {
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(action: u32) -> sock_filter {
    statement(libc::BPF_RET | libc::BPF_K, action)
}

fn ret_errno(errno: c_int) -> sock_filter {
    ret(libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA))
}

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel would answer: runs `program` on one call, like the BPF interpreter.
    fn run(program: &BpfProgram, nr: c_long, args: [u64; 6]) -> u32 {
        let mut data = [0u32; 16];
        data[0] = nr as u32;
        data[1] = AUDIT_ARCH.unwrap();
        for (i, arg) in args.iter().enumerate() {
            data[4 + 2 * i] = *arg as u32;
            data[5 + 2 * i] = (*arg >> 32) as u32;
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let insn = program.program[pc];
            let code = insn.code as u32;
            pc += 1;
            match code & 0x07 {
                libc::BPF_LD => a = data[insn.k as usize / 4],
                libc::BPF_RET => return insn.k,
                libc::BPF_JMP => {
                    let taken = match code & 0xf0 {
                        libc::BPF_JEQ => a == insn.k,
                        libc::BPF_JGE => a >= insn.k,
                        libc::BPF_JSET => a & insn.k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += if taken { insn.jt } else { insn.jf } as usize;
                }
                other => panic!("unexpected class {other:#x}"),
            }
        }
    }

    fn installed(mut program: BpfProgram, pid: u32, namespace: bool) -> BpfProgram {
        program.patch(pid, namespace);
        program
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn the_start_filter_allows_what_python_needs_and_refuses_the_escapes() {
        let Some(filters) = Filters::build() else {
            return;
        };
        let start = installed(filters.start, 1, true);
        let call = |nr, args| run(&start, nr, args);
        assert_eq!(call(libc::SYS_read, [0; 6]), ALLOW);
        assert_eq!(
            call(libc::SYS_openat, [0, 0, libc::O_RDONLY as u64, 0, 0, 0]),
            ALLOW
        );
        assert_ne!(
            call(libc::SYS_openat, [0, 0, libc::O_WRONLY as u64, 0, 0, 0]),
            ALLOW
        );
        let fcntl =
            |cmd: c_int, arg: c_int| call(libc::SYS_fcntl, [3, cmd as u64, arg as u64, 0, 0, 0]);
        assert_eq!(fcntl(libc::F_GETFD, 0), ALLOW);
        assert_eq!(fcntl(libc::F_SETFL, libc::O_NONBLOCK), ALLOW);
        assert_eq!(fcntl(libc::F_SETFL, libc::O_ASYNC), EPERM);
        assert_eq!(fcntl(libc::F_SETOWN, 1234), EPERM);
        // F_SETSIG, F_SETOWN_EX
        assert_eq!(fcntl(10, libc::SIGKILL), EPERM);
        assert_eq!(fcntl(15, 0), EPERM);
        let ioctl = |request: u64| call(libc::SYS_ioctl, [0, request, 0, 0, 0, 0]);
        assert_eq!(ioctl(0x5401), ALLOW); // TCGETS
                                          // FIOSETOWN, SIOCSPGRP, TIOCSPGRP
        for request in [0x8901, 0x8902, 0x5410] {
            assert_eq!(ioctl(request), EPERM, "ioctl {request:#x}");
        }
        let prctl = |option: c_int| call(libc::SYS_prctl, [option as u64, 0, 0, 0, 0, 0]);
        assert_eq!(prctl(libc::PR_SET_SECCOMP), ALLOW);
        assert_eq!(prctl(libc::PR_SET_PDEATHSIG), EPERM);
        assert_eq!(prctl(libc::PR_SET_DUMPABLE), EPERM);
        for nr in [
            libc::SYS_sched_setattr,
            libc::SYS_sched_setscheduler,
            libc::SYS_ptrace,
            libc::SYS_pidfd_open,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setsid,
        ] {
            assert_eq!(call(nr, [0; 6]), EPERM, "system call {nr}");
        }
        assert_eq!(
            call(libc::SYS_clone, [FORK_FLAGS as u64, 0, 0, 0, 0, 0]),
            ALLOW
        );
        let thread = libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND;
        assert_eq!(call(libc::SYS_clone, [thread as u64, 0, 0, 0, 0, 0]), EPERM);
        // Inside the PID namespace positive pids are the worker's; groups are not.
        assert_eq!(call(libc::SYS_kill, [7, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(libc::SYS_kill, [0, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_kill, [(-1i64) as u64, 9, 0, 0, 0, 0]), EPERM);
        let outside = installed(Filters::build().unwrap().start, 4242, false);
        assert_eq!(run(&outside, libc::SYS_kill, [4242, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&outside, libc::SYS_kill, [7, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&outside, libc::SYS_prlimit64, [0; 6]), ALLOW);
    }

    #[test]
    fn the_function_filter_refuses_processes_and_signals_to_others() {
        let Some(filters) = Filters::build() else {
            return;
        };
        let function = installed(filters.function, 5, true);
        assert_eq!(
            run(
                &function,
                libc::SYS_clone,
                [FORK_FLAGS as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(run(&function, libc::SYS_kill, [5, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&function, libc::SYS_kill, [1, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&function, libc::SYS_kill, [0, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&function, libc::SYS_read, [0; 6]), ALLOW);
        let serving = Filters::build().unwrap().serving;
        assert_eq!(run(&serving, libc::SYS_execve, [0; 6]), EPERM);
        assert_eq!(run(&serving, libc::SYS_read, [0; 6]), ALLOW);
    }
}
