//! Export folders that are complete or absent: filled under a staging name beside their
//! destination, then renamed into place (and removed if SIGINT or SIGTERM ends the
//! process first).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::io::temporaries;

/// A folder filled under a temporary name beside its destination and renamed into place
/// by `commit`; dropped uncommitted, it is removed.
pub struct StagingDir {
    staging: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Refuses a destination that exists and is not an empty folder, so an export never
    /// mixes its files with older ones.
    pub fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            let empty = dest.is_dir()
                && std::fs::read_dir(dest)
                    .with_context(|| format!("{}: cannot read", dest.display()))?
                    .next()
                    .is_none();
            if !empty {
                bail!(
                    "{}: already exists and is not an empty folder; choose another output or remove it",
                    dest.display()
                );
            }
        }
        let name = dest
            .file_name()
            .with_context(|| format!("{}: not a folder path", dest.display()))?;
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create folder", parent.display()))?;
        }
        let staging = dest.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("{}: cannot remove", staging.display()))?;
        }
        temporaries::register(&staging);
        std::fs::create_dir(&staging)
            .with_context(|| format!("{}: cannot create folder", staging.display()))
            .inspect_err(|_| temporaries::unregister(&staging))?;
        Ok(Self {
            staging,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.staging
    }

    pub fn commit(mut self) -> Result<()> {
        if self.dest.is_dir() {
            // Checked empty in `new`; rename cannot replace a folder on every platform.
            std::fs::remove_dir(&self.dest)
                .with_context(|| format!("{}: cannot replace", self.dest.display()))?;
        }
        std::fs::rename(&self.staging, &self.dest)
            .with_context(|| format!("{}: cannot write", self.dest.display()))?;
        temporaries::unregister(&self.staging);
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            temporaries::unregister(&self.staging);
        }
    }
}
