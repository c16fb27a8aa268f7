//! `json.dumps`, byte for byte: separators, `ensure_ascii`, indentation, key order and
//! Python's float repr (minijinja's own `tojson` and `serde_json` both differ).

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};
use std::fmt::Write;

/// `json.dumps(value)` with Python's defaults, for JSON built with `serde_json`.
pub fn dumps(value: &serde_json::Value) -> String {
    DumpOptions::default()
        .dumps(&from_json(value))
        .expect("a serde_json value holds only JSON-serializable kinds")
}

/// `value` as the template engine's value (objects keep their key order), which is what
/// the writer walks.
fn from_json(value: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match value {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            (None, None) => Value::from(n.as_f64().expect("a JSON number is i64, u64 or f64")),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => items.iter().map(from_json).collect(),
        Json::Object(map) => Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), from_json(v)))),
    }
}

/// The keyword arguments of `json.dumps` that change its output.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    pub sort_keys: bool,
    /// The indentation of one level; `None` writes everything on one line.
    pub indent: Option<String>,
    /// (between items, between a key and its value)
    pub separators: (String, String),
}

impl Default for DumpOptions {
    /// Python's: `ensure_ascii=True`, no indentation, `", "` and `": "`.
    fn default() -> Self {
        Self {
            ensure_ascii: true,
            sort_keys: false,
            indent: None,
            separators: (", ".into(), ": ".into()),
        }
    }
}

impl DumpOptions {
    /// `json.dumps(value, **self)`.
    pub fn dumps(&self, value: &Value) -> Result<String, Error> {
        let mut out = String::new();
        write_value(&mut out, value, self, 0)?;
        Ok(out)
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    options: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value)?,
        ValueKind::String => write_string(
            out,
            value.as_str().unwrap_or_default(),
            options.ensure_ascii,
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, options, depth, |out, item| {
                write_value(out, item, options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                options,
                depth,
                |out, (key, item)| {
                    write_string(out, key, options.ensure_ascii);
                    out.push_str(&options.separators.1);
                    write_value(out, item, options, depth + 1)
                },
            )?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    options: &DumpOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push_str(&options.separators.0);
        }
        if let Some(indent) = &options.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, item)?;
    }
    if let Some(indent) = &options.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into their JSON spelling.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None | ValueKind::Bool | ValueKind::Number => {
            let mut out = String::new();
            write_value(&mut out, key, &DumpOptions::default(), 0)?;
            Ok(out)
        }
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

fn write_number(out: &mut String, value: &Value) -> Result<(), Error> {
    if value.is_integer() {
        write!(out, "{value}").expect("writing to a String");
    } else {
        let float = f64::try_from(value.clone())?;
        out.push_str(&python_float_repr(float));
    }
    Ok(())
}

/// Python's `repr(float)` as `json.dumps` writes it: the shortest round-trip digits, positional
/// for exponents -5 < e < 16 (always with a fractional part), scientific otherwise.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} always has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-5 < exponent && exponent < 16) {
        return format!(
            "{sign}{mantissa}e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    }
    let body = if exponent >= 0 {
        let point = exponent as usize + 1;
        if digits.len() <= point {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    } else {
        format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
    };
    format!("{sign}{body}")
}

fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e20, "1.5e+20"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.25e-7, "-1.25e-07"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "Infinity"),
            (f64::NAN, "NaN"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float_repr(x), python, "repr({x})");
        }
    }

    #[test]
    fn strings_escape_like_python() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\nd\u{1}é😀\u{7f}", false);
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é😀\u{7f}\"");
        let mut out = String::new();
        write_string(&mut out, "é😀\u{7f}", true);
        assert_eq!(out, r#""\u00e9\ud83d\ude00\u007f""#);
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let value = serde_json::json!({"b": [true, false, null, 3], "a": "é\"\n\u{1F600}\u{7f}"});
        assert_eq!(
            dumps(&value),
            r#"{"b": [true, false, null, 3], "a": "\u00e9\"\n\ud83d\ude00\u007f"}"#
        );
    }
}
