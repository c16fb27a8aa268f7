//! OS-level confinement of a worker, applied between `fork` and `exec` so that the
//! Python interpreter itself starts confined. In order: a new session (one `killpg`
//! reaches everything), death with the supervisor, every descriptor but stdio and the
//! worker's three channels closed at `exec`, user + network + PID +
//! mount namespaces with a read-only view of only the interpreter's files (see
//! `filesystem`), an init process that holds the PID namespace, resource limits and the
//! seccomp allow-list (see `seccomp`). docs/verify.md says what each layer stops.
//!
//! Everything the child runs is prepared in the parent: after `fork` only
//! async-signal-safe system calls run, with no allocation.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use libc::c_int;

use super::filesystem::{fresh_workdir, FsView};
use super::seccomp::{BpfProgram, Filters};
use super::syscall::check;

/// The confinement layers; rlimits, the session and descriptor hygiene always apply.
/// `Sandbox::new` refuses to start unless all of them work here (or the caller allowed a
/// weaker sandbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layers {
    /// User, network and PID namespaces: no network, not even loopback; no process
    /// outside the worker is visible or can be signalled; the worker dies with its
    /// supervisor because the supervisor's child holds the namespace's init.
    pub namespaces: bool,
    /// A mount namespace whose root is a read-only view of only what Python needs.
    pub filesystem: bool,
    /// Seccomp allow-list with argument filters.
    pub seccomp: bool,
}

impl Layers {
    pub const ALL: Layers = Layers {
        namespaces: true,
        filesystem: true,
        seccomp: true,
    };
}

/// Resource limits of one worker process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    /// Hard CPU-time limit over the worker's life; the worker lowers its soft limit per batch.
    pub cpu_seconds: u64,
    pub open_files: u64,
}

/// The worker's user and group id inside its user namespace: not root there.
const INNER_ID: u32 = 1000;

/// What a child applies to itself before `exec`.
pub(crate) struct Confinement {
    limits: [(c_int, u64); 7],
    namespaces: bool,
    /// `/proc/self/uid_map` and `gid_map` lines for the new user namespace.
    id_maps: [Vec<u8>; 2],
    view: Option<FsView>,
    filter: Option<BpfProgram>,
    channels: [RawFd; 3],
}

impl Confinement {
    /// `start_filter` and `view` take effect when their layer is on; `channels` are the
    /// descriptors the worker keeps besides stdio (-1: none).
    pub fn new(
        limits: Limits,
        layers: Layers,
        start_filter: Option<&BpfProgram>,
        view: Option<FsView>,
        channels: [RawFd; 3],
    ) -> Self {
        Confinement {
            limits: [
                (libc::RLIMIT_AS as c_int, limits.memory_bytes),
                (libc::RLIMIT_CPU as c_int, limits.cpu_seconds),
                (libc::RLIMIT_NOFILE as c_int, limits.open_files),
                (libc::RLIMIT_FSIZE as c_int, 0),
                (libc::RLIMIT_CORE as c_int, 0),
                (libc::RLIMIT_MEMLOCK as c_int, 0),
                (libc::RLIMIT_MSGQUEUE as c_int, 0),
            ],
            namespaces: layers.namespaces,
            // SAFETY: geteuid and getegid have no preconditions.
            id_maps: unsafe {
                [
                    format!("{INNER_ID} {} 1", libc::geteuid()).into_bytes(),
                    format!("{INNER_ID} {} 1", libc::getegid()).into_bytes(),
                ]
            },
            view: if layers.filesystem { view } else { None },
            filter: start_filter.filter(|_| layers.seccomp).cloned(),
            channels,
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
            self.close_others_on_exec()?;
            if self.namespaces {
                let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWPID;
                if self.view.is_some() {
                    flags |= libc::CLONE_NEWNS;
                }
                check(libc::unshare(flags))?;
                self.map_ids()?;
            }
            if let Some(view) = &self.view {
                view.enter()?;
            }
            if self.namespaces {
                // The next child is the PID namespace's init: it runs python, this
                // process stays outside and holds it.
                let init = libc::fork();
                check(init)?;
                if init > 0 {
                    hold(init);
                }
                // Dies with the holder, which dies with the supervisor's spawner thread.
                check(libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                ))?;
            }
            for &(resource, value) in &self.limits {
                let limit = libc::rlimit {
                    rlim_cur: value as libc::rlim_t,
                    rlim_max: value as libc::rlim_t,
                };
                check(libc::setrlimit(resource as _, &limit))?;
            }
            if let Some(filter) = &mut self.filter {
                filter.install(libc::getpid(), self.namespaces)?;
            }
        }
        Ok(())
    }

    /// Maps the caller's user and group to `INNER_ID` in its new user namespace: files it
    /// creates while building the view need an owner there, and as a non-root user
    /// there python keeps no capabilities after `exec`.
    unsafe fn map_ids(&self) -> io::Result<()> {
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", &self.id_maps[0])?;
        write_file(c"/proc/self/gid_map", &self.id_maps[1])
    }

    /// Marks every descriptor above stderr close-on-exec except the channels (which lose
    /// the mark): whatever the launching process left open is gone in the worker.
    /// Marking rather than closing keeps `Command`'s own error pipe working until `exec`.
    unsafe fn close_others_on_exec(&self) -> io::Result<()> {
        let mut keep = self.channels;
        keep.sort_unstable();
        let mut first: libc::c_uint = 3;
        for fd in keep.into_iter().filter(|&fd| fd >= 3) {
            let fd = fd as libc::c_uint;
            if fd > first {
                close_range_on_exec(first, fd - 1)?;
            }
            first = fd + 1;
            check(libc::fcntl(fd as c_int, libc::F_SETFD, 0))?;
        }
        close_range_on_exec(first, libc::c_uint::MAX)
    }
}

unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    check(fd)?;
    let written = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    if written != data.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `close_range(first, last, CLOSE_RANGE_CLOEXEC)`.
unsafe fn close_range_on_exec(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    check(libc::syscall(
        libc::SYS_close_range,
        first,
        last,
        libc::CLOSE_RANGE_CLOEXEC,
    ) as c_int)
}

/// The holder's whole life after forking the namespace's init: close everything, wait,
/// and end the way init ended so the supervisor sees the worker's real fate.
unsafe fn hold(init: libc::pid_t) -> ! {
    libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0);
    let mut status = 0;
    while libc::waitpid(init, &mut status, 0) < 0 {
        if *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

/// Starts `python` under all layers and, if that fails, under each on its own; returns
/// the layers that work here and, for each one that does not, its name and why.
/// `filters` is None where this architecture has no system-call table.
pub(crate) fn probe_layers(
    python: &Path,
    limits: Limits,
    filters: Option<&Filters>,
) -> (Layers, Vec<(&'static str, String)>) {
    let start = filters.map(|f| &f.start);
    if start.is_some() && probe(python, limits, start, Layers::ALL).is_ok() {
        return (Layers::ALL, Vec::new());
    }
    let mut problems = Vec::new();
    let mut works = |name, layers| {
        probe(python, limits, start, layers)
            .map_err(|reason| problems.push((name, reason)))
            .is_ok()
    };
    let none = Layers {
        namespaces: false,
        filesystem: false,
        seccomp: false,
    };
    let namespaces = works(
        "namespaces (user, network, PID)",
        Layers {
            namespaces: true,
            ..none
        },
    );
    let filesystem = namespaces
        && works(
            "filesystem (mount namespace view)",
            Layers {
                namespaces: true,
                filesystem: true,
                ..none
            },
        );
    let seccomp = match start {
        Some(_) => works(
            "seccomp",
            Layers {
                seccomp: true,
                ..none
            },
        ),
        None => {
            problems.push((
                "seccomp",
                format!("no system-call table for {}", std::env::consts::ARCH),
            ));
            false
        }
    };
    if problems.is_empty() {
        problems.push((
            "all layers together",
            "each starts python on its own, all of them together do not".to_string(),
        ));
        return (none, problems);
    }
    (
        Layers {
            namespaces,
            filesystem,
            seccomp,
        },
        problems,
    )
}

fn probe(
    python: &Path,
    limits: Limits,
    start: Option<&BpfProgram>,
    layers: Layers,
) -> Result<(), String> {
    let workdir = fresh_workdir().map_err(|e| e.to_string())?;
    let result = (|| {
        let view = if layers.filesystem {
            Some(FsView::new(&workdir, python).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let mut command = Command::new(python);
        // ctypes: the worker installs its per-function filter through it.
        command
            .args(["-I", "-B", "-c", "import ctypes"])
            .env_clear()
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Confinement::new(limits, layers, start, view, [-1; 3]).attach(&mut command);
        let output = command.output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or("").trim().to_string();
            Err(format!("python exited with {}: {last}", output.status))
        }
    })();
    let _ = std::fs::remove_dir(&workdir);
    result
}
