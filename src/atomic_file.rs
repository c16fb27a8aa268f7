//! Output files that are complete or absent: each is written under a hidden temporary
//! name beside its destination and renamed into place, so an error or a killed process
//! never leaves a half-written file.

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `bytes` to `path`, creating its folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| Ok(std::fs::write(tmp, bytes)?))
}

/// Lets `write` fill a temporary file, then renames it to `path`; on error the temporary
/// file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if let Err(err) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err.context(format!("{}: cannot write", path.display())));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.json");
        let err = write_atomically(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            0
        );
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }
}
