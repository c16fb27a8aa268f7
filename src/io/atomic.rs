//! Output files that are complete or absent: each is written under a hidden temporary
//! name beside its destination and renamed into place, so an error or a killed process
//! never leaves a half-written file under the destination's name. The temporary file is
//! registered with `temporaries`, so SIGINT or SIGTERM removes it too.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::temporaries;

/// Writes `bytes` to `path`, creating its folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| Ok(std::fs::write(tmp, bytes)?))
}

/// Lets `write` fill a temporary file, then renames it to `path`; on error the temporary
/// file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_beside(path)?;
    temporaries::register(&tmp);
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    temporaries::unregister(&tmp);
    result.map_err(|err| err.context(format!("{}: cannot write", path.display())))
}

/// Pretty-printed JSON with a final newline, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomically(path, |tmp| Ok(std::fs::write(tmp, &text)?))
}

/// A JSON Lines output written as it goes: records stream into the temporary file and
/// `commit` renames it into place. Dropped uncommitted (an error, a panic), it removes
/// the temporary file.
pub struct AtomicWriter {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicWriter {
    pub fn create(target: &Path) -> Result<Self> {
        let temp = temporary_beside(target)?;
        temporaries::register(&temp);
        let file =
            File::create(&temp).with_context(|| format!("{}: cannot create", temp.display()));
        let file = file.inspect_err(|_| temporaries::unregister(&temp))?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            writer: Some(BufWriter::new(file)),
        })
    }

    pub fn write_line(&mut self, value: &impl Serialize) -> Result<()> {
        let writer = self.writer.as_mut().expect("open until commit");
        serde_json::to_writer(&mut *writer, value)?;
        writer
            .write_all(b"\n")
            .with_context(|| format!("{}: cannot write", self.temp.display()))
    }

    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("open until commit");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        let result = file
            .sync_all()
            .with_context(|| format!("{}: cannot write", self.temp.display()))
            .and_then(|()| {
                std::fs::rename(&self.temp, &self.target)
                    .with_context(|| format!("{}: cannot move into place", self.target.display()))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        temporaries::unregister(&self.temp);
        result
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.temp);
            temporaries::unregister(&self.temp);
        }
    }
}

/// `.NAME.partial` beside `path`, after creating `path`'s folder.
fn temporary_beside(path: &Path) -> Result<PathBuf> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    Ok(path.with_file_name(format!(".{}.partial", name.to_string_lossy())))
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

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut writer = AtomicWriter::create(&path).unwrap();
        writer.write_line(&1).unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut writer = AtomicWriter::create(&path).unwrap();
        writer.write_line(&2).unwrap();
        writer.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
    }
}
