//! Whether Python's `json.loads` accepts a text (IFEval's `detectable_format:json_format`
//! verdict).
//!
//! `json.loads` is more permissive than RFC 8259 in ways `serde_json` is not: it accepts
//! `NaN`, `Infinity` and `-Infinity`, lone surrogate escapes such as `"\ud800"`, and any
//! nesting depth; it rejects a leading byte-order mark. Only acceptance matters here, so
//! this is a validator that builds no values.

/// Whether Python's `json.loads(text)` returns without raising `ValueError`.
pub fn loads_accepts(text: &str) -> bool {
    if text.starts_with('\u{feff}') {
        return false;
    }
    let bytes = text.as_bytes();
    let mut scanner = Scanner { s: bytes, i: 0 };
    scanner.skip_ws();
    if !scanner.value() {
        return false;
    }
    scanner.skip_ws();
    scanner.i == bytes.len()
}

/// What a container expects next while scanning.
#[derive(Clone, Copy)]
enum Open {
    Array,
    Object,
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// JSON whitespace is only these four characters, as in Python's decoder.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// One value, with containers handled by an explicit stack so nesting cannot overflow.
    fn value(&mut self) -> bool {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // Scan a value start.
            match self.peek() {
                Some(b'[') => {
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        stack.push(Open::Array);
                        continue;
                    }
                }
                Some(b'{') => {
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        if !self.member_key() {
                            return false;
                        }
                        stack.push(Open::Object);
                        continue;
                    }
                }
                _ => {
                    if !self.scalar() {
                        return false;
                    }
                }
            }
            // A value is complete: close containers or move to the next element.
            loop {
                let Some(&open) = stack.last() else {
                    return true;
                };
                self.skip_ws();
                let close = match open {
                    Open::Array => b']',
                    Open::Object => b'}',
                };
                match self.peek() {
                    Some(c) if c == close => {
                        self.i += 1;
                        stack.pop();
                    }
                    Some(b',') => {
                        self.i += 1;
                        self.skip_ws();
                        if matches!(open, Open::Object) && !self.member_key() {
                            return false;
                        }
                        break;
                    }
                    _ => return false,
                }
            }
        }
    }

    /// `"key"` then `:`, leaving the position at the member's value.
    fn member_key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.skip_ws();
        if self.peek() != Some(b':') {
            return false;
        }
        self.i += 1;
        self.skip_ws();
        true
    }

    fn scalar(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'n') => self.literal(b"null"),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'N') => self.literal(b"NaN"),
            Some(b'I') => self.literal(b"Infinity"),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += b"-Infinity".len();
                true
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, ASCII digits only; a fraction or
    /// exponent that is not complete is left unconsumed (and then fails as extra data).
    fn number(&mut self) -> bool {
        let digits = |s: &Self, mut i: usize| {
            while s.s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.i = digits(self, self.i + 1),
            _ => return false,
        }
        if self.peek() == Some(b'.') && self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit) {
            self.i = digits(self, self.i + 2);
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let mut j = self.i + 1;
            if matches!(self.s.get(j), Some(b'-' | b'+')) {
                j += 1;
            }
            let end = digits(self, j);
            if end > j {
                self.i = end;
            }
        }
        true
    }

    /// A string in strict mode: no raw control characters, only the standard escapes, and
    /// `\u` with four hex digits (lone surrogates are fine).
    fn string(&mut self) -> bool {
        self.i += 1; // opening quote
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.i += 1;
                    return true;
                }
                Some(c) if c < 0x20 => return false,
                Some(b'\\') => match self.s.get(self.i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                    Some(b'u') => {
                        let hex = self.s.get(self.i + 2..self.i + 6);
                        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return false;
                        }
                        self.i += 6;
                    }
                    _ => return false,
                },
                Some(_) => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_python_accepts() {
        for text in [
            "{}",
            "[]",
            "0",
            "-0.5e+3",
            "\"x\"",
            "null",
            "NaN",
            "-Infinity",
            "Infinity",
            "{\"a\": [1, 2, {\"b\": null}], \"c\": \"\\ud800\"}",
            " \n[1]\r\t",
            "[[[[[]]]]]",
            "{\"a\":1,\"a\":2}",
            "\"caf\u{e9} \\u00e9\"",
            "1E5",
        ] {
            assert!(loads_accepts(text), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_python_rejects() {
        for text in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "'a'",
            "{a: 1}",
            "\"\t\"",
            "\"\\x\"",
            "\"\\u12\"",
            "[1] [2]",
            "\u{feff}{}",
            "nul",
            "{\"a\" 1}",
            "tru",
            "[1 2]",
            "\u{a0}{}",
            "```json\n{}\n```",
        ] {
            assert!(!loads_accepts(text), "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(loads_accepts(&deep));
        assert!(!loads_accepts(&deep[1..]));
    }
}
