//! The worker's view of the file system: inside its own mount namespace, a small tmpfs
//! becomes the root and holds read-only bind mounts of only what the interpreter needs
//! (`/usr`, the top-level library folders or their symlinks, the dynamic loader's cache,
//! the time zone, and the interpreter's own prefix when it lives elsewhere, as with
//! pyenv or a virtualenv). No home, no `/proc`, no `/dev`, no `/tmp`, no run folder.
//!
//! The steps are prepared in the parent (`FsView::new`) and replayed by the child with
//! plain system calls (`FsView::enter`) after it has unshared its mount namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::syscall::check;

/// Top-level entries bound (folders) or recreated (symlinks) when they exist.
const SYSTEM_ENTRIES: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
];
/// Single files bound when they exist: the loader's cache and the local time zone.
const SYSTEM_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/localtime"];

enum Step {
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Bind {
        source: CString,
        target: CString,
        /// Flags of the read-only remount: the source's locked flags must be kept.
        remount: libc::c_ulong,
    },
}

/// The prepared view; `root` is an empty folder that becomes the worker's `/`.
pub(crate) struct FsView {
    root: CString,
    steps: Vec<Step>,
}

impl FsView {
    /// Plans the view for `python` (the interpreter as it will be executed), built on
    /// the empty folder `root`.
    pub fn new(root: &Path, python: &Path) -> io::Result<FsView> {
        let mut view = FsView {
            root: cstring(root)?,
            steps: Vec::new(),
        };
        let mut made: Vec<PathBuf> = Vec::new();
        let mut bound: Vec<PathBuf> = Vec::new();
        for entry in SYSTEM_ENTRIES.iter().map(Path::new) {
            let Ok(meta) = entry.symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry)?;
                view.steps.push(Step::Symlink {
                    target: cstring(&target)?,
                    link: cstring(&root.join(relative(entry)))?,
                });
            } else if meta.is_dir() {
                view.bind(root, entry, &mut made)?;
                bound.push(entry.to_path_buf());
            }
        }
        for file in SYSTEM_FILES.iter().map(Path::new) {
            let Ok(meta) = file.symlink_metadata() else {
                continue;
            };
            view.mkdirs(root, file.parent().unwrap_or(Path::new("/")), &mut made)?;
            if meta.file_type().is_symlink() {
                view.steps.push(Step::Symlink {
                    target: cstring(&std::fs::read_link(file)?)?,
                    link: cstring(&root.join(relative(file)))?,
                });
            } else if meta.is_file() {
                view.steps
                    .push(Step::Touch(cstring(&root.join(relative(file)))?));
                view.bind(root, file, &mut made)?;
            }
        }
        // The interpreter's prefix (…/bin/python → …), as given and with links resolved.
        let resolved = python.canonicalize()?;
        for exe in [python, resolved.as_path()] {
            let Some(prefix) = exe.parent().and_then(Path::parent) else {
                continue;
            };
            let prefix = prefix.canonicalize()?;
            if prefix == Path::new("/") || bound.iter().any(|b| prefix.starts_with(b)) {
                continue;
            }
            view.bind(root, &prefix, &mut made)?;
            bound.push(prefix);
        }
        Ok(view)
    }

    fn mkdirs(&mut self, root: &Path, dir: &Path, made: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut path = PathBuf::from("/");
        for part in relative(dir).components() {
            path.push(part);
            if !made.contains(&path) {
                self.steps
                    .push(Step::Mkdir(cstring(&root.join(relative(&path)))?));
                made.push(path.clone());
            }
        }
        Ok(())
    }

    /// Binds `source` (a folder, or a file already touched) at the same path in the view.
    fn bind(&mut self, root: &Path, source: &Path, made: &mut Vec<PathBuf>) -> io::Result<()> {
        if source.is_dir() {
            self.mkdirs(root, source, made)?;
        }
        let locked = locked_flags(source)?;
        self.steps.push(Step::Bind {
            source: cstring(source)?,
            target: cstring(&root.join(relative(source)))?,
            remount: libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | locked,
        });
        Ok(())
    }

    /// Runs in the child, inside a fresh mount namespace: builds the view and makes it
    /// the root, read-only.
    pub fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY (all calls): system calls on NUL-terminated strings owned by `self`.
        unsafe {
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=64k".as_ptr().cast(),
            ))?;
            for step in &self.steps {
                match step {
                    Step::Mkdir(path) => check(libc::mkdir(path.as_ptr(), 0o755))?,
                    Step::Touch(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Symlink { target, link } => {
                        check(libc::symlink(target.as_ptr(), link.as_ptr()))?
                    }
                    Step::Bind {
                        source,
                        target,
                        remount,
                    } => {
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            null,
                            libc::MS_BIND,
                            std::ptr::null(),
                        ))?;
                        check(libc::mount(
                            null,
                            target.as_ptr(),
                            null,
                            *remount,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            // The view becomes `/`; the old root is detached and unreachable.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ))
        }
    }
}

/// Mount flags of the file system holding `path` that an unprivileged remount must keep.
fn locked_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let path = cstring(path)?;
    // SAFETY: statvfs fills the zeroed struct.
    let flags = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        check(libc::statvfs(path.as_ptr(), &mut stat))?;
        stat.f_flag
    };
    let keep = [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(keep
        .iter()
        .filter(|(st, _)| flags & st != 0)
        .fold(0, |all, (_, ms)| all | ms))
}

fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", path.display())))
}

/// A new empty directory: the worker's cwd and the mount point of its view.
pub(crate) fn fresh_workdir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "autoif-verify-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
