//! JSON Lines: one record per line, blank lines skipped. A bad line fails with
//! `FILE:LINE:` (the line as counted in the file) and what is wrong with it, bytes that
//! are not UTF-8 too. Lone surrogate escapes read as Python's `json` reads them
//! (`text::from_json_str`).

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

use super::atomic::write_atomic;
use super::text::{decode_utf8, from_json_str, read_text};

/// Every record of a JSON Lines file (none for an empty file).
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    parse_lines(&read_text(path)?, path)
}

/// Like [`read_jsonl`], or `None` when the file does not exist.
pub fn read_jsonl_if_exists<T: DeserializeOwned>(path: &Path) -> Result<Option<Vec<T>>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_lines(&decode_utf8(bytes, &path.display().to_string())?, path).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// The records of a JSON Lines file or of a file holding one JSON array (data sets come
/// both ways).
pub fn read_json_records(path: &Path) -> Result<Vec<Value>> {
    let text = read_text(path)?;
    if text.trim_start().starts_with('[') {
        return from_json_str(&text)
            .map_err(|e| anyhow!("{}: not a valid JSON array: {e}", path.display()));
    }
    parse_lines(&text, path)
}

/// Writes `records` one per line to `path`, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    write_atomic(path, &to_jsonl(records)?)
}

/// `records` as JSON Lines bytes, each line ending in a newline.
pub fn to_jsonl<T: Serialize>(records: &[T]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for record in records {
        serde_json::to_writer(&mut buf, record)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

fn parse_lines<T: DeserializeOwned>(text: &str, path: &Path) -> Result<Vec<T>> {
    parse_jsonl(text, &path.display().to_string())
}

/// The records of JSON Lines `text`; errors name `source` (a path, or a hub address).
pub fn parse_jsonl<T: DeserializeOwned>(text: &str, source: &str) -> Result<Vec<T>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            from_json_str(line).map_err(|e| {
                let what = if e.is_data() {
                    "not a valid record"
                } else {
                    "not valid JSON"
                };
                anyhow!("{source}:{}: {what}: {e}", i + 1)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Row {
        n: u32,
    }

    #[test]
    fn errors_name_the_file_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, "{\"n\": 1}\n\n{\"n\": \n").unwrap();
        let err = read_jsonl::<Row>(&path).unwrap_err().to_string();
        assert!(err.contains("rows.jsonl:3: not valid JSON"), "{err}");
        std::fs::write(&path, "{\"n\": 1}\n{\"n\": \"x\"}\n").unwrap();
        let err = read_jsonl::<Row>(&path).unwrap_err().to_string();
        assert!(err.contains("rows.jsonl:2: not a valid record"), "{err}");
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rows.jsonl");
        assert!(read_jsonl_if_exists::<Row>(&path).unwrap().is_none());
        write_jsonl(&path, &[Row { n: 1 }, Row { n: 2 }]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(
            read_jsonl::<Row>(&path).unwrap(),
            [Row { n: 1 }, Row { n: 2 }]
        );
        std::fs::write(&path, "[{\"n\": 3}]").unwrap();
        assert_eq!(read_json_records(&path).unwrap().len(), 1);
    }
}
