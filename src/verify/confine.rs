//! OS-level confinement of a worker process, applied between `fork` and `exec` so that
//! the Python interpreter itself starts confined: a new session (one `killpg` reaches
//! everything), death with the supervisor, an unprivileged user + network namespace,
//! resource limits and a seccomp filter. docs/verify.md says what each layer stops.
//!
//! Everything the child runs is prepared in the parent: after `fork` only
//! async-signal-safe system calls run, with no allocation.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use libc::{c_int, c_long, sock_filter};

/// Which optional layers this kernel grants; rlimits and the session are always applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layers {
    /// Unprivileged user + network namespace: no network, not even loopback.
    pub namespaces: bool,
    /// Seccomp filter: no sockets, new processes, file creation or writes, or signals to
    /// other processes.
    pub seccomp: bool,
}

/// Resource limits of one worker process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    /// Hard CPU-time limit over the worker's life; the worker lowers its soft limit per batch.
    pub cpu_seconds: u64,
    pub open_files: u64,
}

/// What a child applies to itself before `exec`.
pub(crate) struct Confinement {
    limits: [(c_int, u64); 8],
    namespaces: bool,
    filter: Option<SeccompFilter>,
    inherited_fds: Vec<RawFd>,
}

impl Confinement {
    pub fn new(limits: Limits, layers: Layers, inherited_fds: Vec<RawFd>) -> Self {
        Confinement {
            limits: [
                (libc::RLIMIT_AS as c_int, limits.memory_bytes),
                (libc::RLIMIT_CPU as c_int, limits.cpu_seconds),
                (libc::RLIMIT_NOFILE as c_int, limits.open_files),
                (libc::RLIMIT_NPROC as c_int, 0),
                (libc::RLIMIT_FSIZE as c_int, 0),
                (libc::RLIMIT_CORE as c_int, 0),
                (libc::RLIMIT_MEMLOCK as c_int, 0),
                (libc::RLIMIT_MSGQUEUE as c_int, 0),
            ],
            namespaces: layers.namespaces,
            filter: if layers.seccomp {
                SeccompFilter::build()
            } else {
                None
            },
            inherited_fds,
        }
    }

    /// Installs itself as `command`'s pre-exec step.
    pub fn attach(mut self, command: &mut Command) {
        // SAFETY: `apply_in_child` only makes async-signal-safe system calls and writes
        // into memory allocated before the fork.
        unsafe {
            command.pre_exec(move || self.apply_in_child());
        }
    }

    fn apply_in_child(&mut self) -> io::Result<()> {
        // SAFETY (all blocks below): plain system calls on values owned by `self`.
        unsafe {
            check(libc::setsid())?;
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
            ))?;
            if self.namespaces {
                check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET))?;
            }
            for &(resource, value) in &self.limits {
                let limit = libc::rlimit {
                    rlim_cur: value as libc::rlim_t,
                    rlim_max: value as libc::rlim_t,
                };
                check(libc::setrlimit(resource as _, &limit))?;
            }
            for &fd in &self.inherited_fds {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            if let Some(filter) = &mut self.filter {
                filter.install(libc::getpid())?;
            }
        }
        Ok(())
    }
}

fn check(result: c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Finds which optional layers work here by starting `python` under each one; a layer
/// that fails comes back with the reason.
pub(crate) fn probe_layers(python: &Path, limits: Limits) -> (Layers, Vec<(&'static str, String)>) {
    let mut problems = Vec::new();
    let mut works = |layers: Layers, name: &'static str| match run_probe(python, limits, layers) {
        Ok(()) => true,
        Err(err) => {
            problems.push((name, err.to_string()));
            false
        }
    };
    let namespaces = works(
        Layers {
            namespaces: true,
            seccomp: false,
        },
        "namespaces",
    );
    let seccomp = if SeccompFilter::build().is_some() {
        works(
            Layers {
                namespaces: false,
                seccomp: true,
            },
            "seccomp",
        )
    } else {
        problems.push((
            "seccomp",
            format!("no system-call table for {}", std::env::consts::ARCH),
        ));
        false
    };
    (
        Layers {
            namespaces,
            seccomp,
        },
        problems,
    )
}

fn run_probe(python: &Path, limits: Limits, layers: Layers) -> io::Result<()> {
    let mut command = Command::new(python);
    command.args(["-I", "-B", "-c", "pass"]).env_clear();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Confinement::new(limits, layers, Vec::new()).attach(&mut command);
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("python exited with {status}")))
    }
}

/// A classic-BPF seccomp program; the worker's own pid is patched in after `fork`.
struct SeccompFilter {
    program: Vec<sock_filter>,
    own_pid_slots: Vec<usize>,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// `fchmodat2`, newer than the libc crate's tables; the same number on both architectures.
const SYS_FCHMODAT2: c_long = 452;

/// Refused with EPERM: new processes and threads, file-system changes, other processes,
/// kernel facilities a text checker never needs.
const DENIED: &[c_long] = &[
    libc::SYS_clone,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    SYS_FCHMODAT2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_mknodat,
    libc::SYS_utimensat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_memfd_create,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pidfd_getfd,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_kcmp,
    libc::SYS_setpriority,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_setparam,
    libc::SYS_ioprio_set,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_setsid,
    libc::SYS_setpgid,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_fanotify_init,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semctl,
    libc::SYS_semtimedop,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
];

/// The x86_64 system calls that newer architectures replaced by the `*at` forms above.
#[cfg(target_arch = "x86_64")]
const DENIED_LEGACY: &[c_long] = &[
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_creat,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_link,
    libc::SYS_symlink,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_lchown,
    libc::SYS_mknod,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_futimesat,
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_LEGACY: &[c_long] = &[];

/// Answered with ENOSYS so that libc falls back to a call the filter can inspect
/// (their arguments live behind pointers).
const UNSUPPORTED: &[c_long] = &[
    libc::SYS_clone3,
    libc::SYS_openat2,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Sockets of any family, Unix ones included, are refused with EACCES.
const NO_SOCKETS: &[c_long] = &[libc::SYS_socket, libc::SYS_socketpair];

/// Calls whose first argument is a pid: allowed for the worker itself (or 0) only.
const OWN_PID_ONLY: &[c_long] = &[
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_prlimit64,
];

/// `open`-style calls and the index of their flags argument: only read-only opens pass.
#[cfg(target_arch = "x86_64")]
const OPENS: &[(c_long, u32)] = &[(libc::SYS_openat, 2), (libc::SYS_open, 1)];
#[cfg(not(target_arch = "x86_64"))]
const OPENS: &[(c_long, u32)] = &[(libc::SYS_openat, 2)];

const WRITE_FLAGS: u32 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;

/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const fn arg_low_offset(index: u32) -> u32 {
    16 + 8 * index
}

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
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

/// Jumps `skip` instructions ahead unless the loaded syscall number is `nr`.
fn unless_nr(nr: c_long, skip: u8) -> sock_filter {
    jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        nr as u32,
        0,
        skip,
    )
}

impl SeccompFilter {
    fn build() -> Option<Self> {
        let arch = AUDIT_ARCH?;
        let mut program = vec![
            load(ARCH_OFFSET),
            jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, arch, 1, 0),
            ret(libc::SECCOMP_RET_KILL_PROCESS),
            load(NR_OFFSET),
        ];
        if cfg!(target_arch = "x86_64") {
            // The x32 ABI numbers its calls from 0x40000000 and would slip past the table.
            program.push(jump(
                libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
                0x4000_0000,
                0,
                1,
            ));
            program.push(ret_errno(libc::ENOSYS));
        }
        let simple = DENIED
            .iter()
            .chain(DENIED_LEGACY)
            .map(|&nr| (nr, libc::EPERM))
            .chain(UNSUPPORTED.iter().map(|&nr| (nr, libc::ENOSYS)))
            .chain(NO_SOCKETS.iter().map(|&nr| (nr, libc::EACCES)));
        for (nr, errno) in simple {
            program.push(unless_nr(nr, 1));
            program.push(ret_errno(errno));
        }
        for &(nr, flags_arg) in OPENS {
            program.push(unless_nr(nr, 4));
            program.push(load(arg_low_offset(flags_arg)));
            program.push(jump(
                libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
                WRITE_FLAGS,
                0,
                1,
            ));
            program.push(ret_errno(libc::EACCES));
            program.push(ret(libc::SECCOMP_RET_ALLOW));
        }
        let mut own_pid_slots = Vec::new();
        for &nr in OWN_PID_ONLY {
            program.push(unless_nr(nr, 5));
            program.push(load(arg_low_offset(0)));
            own_pid_slots.push(program.len());
            program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 2, 0));
            program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0));
            program.push(ret_errno(libc::EPERM));
            program.push(ret(libc::SECCOMP_RET_ALLOW));
        }
        program.push(ret(libc::SECCOMP_RET_ALLOW));
        Some(SeccompFilter {
            program,
            own_pid_slots,
        })
    }

    /// Runs in the child: patches in its pid and loads the filter.
    fn install(&mut self, own_pid: libc::pid_t) -> io::Result<()> {
        for &slot in &self.own_pid_slots {
            self.program[slot].k = own_pid as u32;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        let Some(filter) = SeccompFilter::build() else {
            return;
        };
        let last = filter.program.len() - 1;
        for (index, insn) in filter.program.iter().enumerate() {
            let is_jump = insn.code as u32 & 0x07 == libc::BPF_JMP;
            if is_jump {
                assert!(
                    index + 1 + insn.jt as usize <= last && index + 1 + insn.jf as usize <= last
                );
            }
        }
        assert_eq!(filter.program[last].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(filter.own_pid_slots.len(), OWN_PID_ONLY.len());
    }
}
