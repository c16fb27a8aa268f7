//! The `tojson` filter as transformers defines it for chat templates: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, byte
//! for byte (minijinja's own `tojson` escapes HTML characters and spaces differently).

use crate::pyjson::DumpOptions;
use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};

/// `value | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<i64> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let options = DumpOptions {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        // Python: a negative indent means no indentation, but newlines all the same.
        indent: indent.map(|width| " ".repeat(usize::try_from(width).unwrap_or(0))),
        separators: match separators.as_deref() {
            Some([item, key]) => (item.clone(), key.clone()),
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings",
                ))
            }
            // Python drops the space after ',' when indenting, since newlines follow.
            None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
            None => (", ".to_owned(), ": ".to_owned()),
        },
    };
    kwargs.assert_all_used()?;
    Ok(Value::from_safe_string(options.dumps(value)?))
}
