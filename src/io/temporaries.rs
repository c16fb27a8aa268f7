//! The hidden temporary outputs this process is writing (`.NAME.partial` files and
//! staging folders), so that SIGINT or SIGTERM removes them before the process ends:
//! their writers remove them on error and on drop, but a signal's default action ends
//! the process without running either.
//!
//! The signal handler only writes the signal's number to a pipe (all a handler may
//! safely do); a watcher thread reads it, removes what is registered, and exits with the
//! shell's code for that signal (130 for SIGINT, 143 for SIGTERM). Processes forked from
//! this one (the sandbox's workers before they exec) get the default action instead.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// The pipe's write end the handler wakes the watcher through; -1 until installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The process that installed the handler.
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

fn registered() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list intact; keep using it.
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `path` (a file or a folder) as a temporary output to remove on a signal;
/// called before the path is created, so no moment exists where it is unrecorded.
pub fn register(path: &Path) {
    registered().push(path.to_path_buf());
}

/// Forgets `path`: it was renamed into place or removed.
pub fn unregister(path: &Path) {
    let mut list = registered();
    if let Some(i) = list.iter().rposition(|p| p == path) {
        list.swap_remove(i);
    }
}

/// Installs the SIGINT and SIGTERM handlers (once per process).
pub fn remove_on_signal() -> Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| result = install());
    result
}

fn install() -> Result<()> {
    let mut fds = [0; 2];
    // Safety: plain system calls on a local array and on this process's own handlers.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            bail!(
                "cannot create the signal pipe: {}",
                std::io::Error::last_os_error()
            );
        }
        OWNER_PID.store(libc::getpid(), Ordering::SeqCst);
        WAKE_FD.store(fds[1], Ordering::SeqCst);
        let read_fd = fds[0];
        std::thread::Builder::new()
            .name("signal-cleanup".into())
            .spawn(move || watch(read_fd))?;
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                bail!(
                    "cannot install a handler for signal {signal}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Safety: getpid, signal, raise and write are async-signal-safe.
    unsafe {
        if libc::getpid() != OWNER_PID.load(Ordering::SeqCst) {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
            return;
        }
        let byte = signal as u8;
        libc::write(
            WAKE_FD.load(Ordering::SeqCst),
            (&byte as *const u8).cast(),
            1,
        );
    }
}

/// Waits for a signal's number, removes the registered outputs and ends the process.
fn watch(read_fd: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // Safety: reads one byte into a local.
        let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
    let signal = libc::c_int::from(byte);
    // Held until the process ends: a writer that registers a new temporary output (it
    // registers before creating it) waits here instead of leaving one behind.
    let list = registered();
    for path in list.iter() {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
    let name = if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("error: interrupted by {name}; temporary outputs removed");
    // Safety: ends the process without running other threads' code any further.
    unsafe { libc::_exit(128 + signal) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_and_unregister() {
        let a = Path::new("/nonexistent/.a.partial");
        register(a);
        register(a);
        unregister(a);
        assert_eq!(registered().iter().filter(|p| *p == a).count(), 1);
        unregister(a);
        assert!(!registered().iter().any(|p| p == a));
    }
}
