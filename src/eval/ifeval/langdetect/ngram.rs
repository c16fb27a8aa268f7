//! langdetect's character normalisation and n-gram window (`langdetect.utils.ngram`):
//! each character is folded to a representative of its script class before n-grams of up
//! to three characters are taken, and all-capital words are skipped.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// The longest n-gram.
pub const N_GRAM: usize = 3;

const CJK_DATA: &str = include_str!("../data/langdetect_cjk.txt");

/// Every CJK ideograph in one of langdetect's classes maps to the class's first ideograph;
/// a later class wins where classes overlap, as in langdetect's dictionary.
fn cjk_map() -> &'static HashMap<char, char> {
    static MAP: OnceLock<HashMap<char, char>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        for class in CJK_DATA
            .split('\n')
            .filter(|l| !l.is_empty() && !l.starts_with("# "))
        {
            let representative = class.chars().next().expect("non-empty class");
            for c in class.chars() {
                map.insert(c, representative);
            }
        }
        map
    })
}

/// `NGram.normalize(ch)`: the block-wise folding of one character.
pub fn normalize(c: char) -> char {
    match c as u32 {
        0x00..=0x7F => {
            if c.is_ascii_alphabetic() {
                c
            } else {
                ' '
            }
        }
        0x80..=0xFF => {
            if matches!(c, '\u{a0}' | '\u{ab}' | '\u{b0}' | '\u{bb}') {
                ' '
            } else {
                c
            }
        }
        // Latin Extended-B: Romanian comma-below letters become cedilla letters.
        0x180..=0x24F => match c {
            '\u{219}' => '\u{15f}',
            '\u{21b}' => '\u{163}',
            _ => c,
        },
        0x2000..=0x206F => ' ',
        // Arabic: Farsi yeh becomes Arabic yeh.
        0x600..=0x6FF => {
            if c == '\u{6cc}' {
                '\u{64a}'
            } else {
                c
            }
        }
        0x1E00..=0x1EFF => {
            if c >= '\u{1ea0}' {
                '\u{1ec3}'
            } else {
                c
            }
        }
        0x3040..=0x309F => '\u{3042}',
        0x30A0..=0x30FF => '\u{30a2}',
        0x3100..=0x312F | 0x31A0..=0x31BF => '\u{3105}',
        0x4E00..=0x9FFF => cjk_map().get(&c).copied().unwrap_or(c),
        0xAC00..=0xD7AF => '\u{ac00}',
        _ => c,
    }
}

/// `NGram.normalize_vi(text)`: a Vietnamese vowel followed by a combining tone mark becomes
/// the precomposed letter.
pub fn normalize_vi(text: &str) -> String {
    const VOWELS: &str = "AEIOUYaeiouyÂÊÔâêôĂăƠơƯư";
    const MARKS: &str = "\u{300}\u{301}\u{303}\u{309}\u{323}";
    const COMPOSED: [&str; 5] = [
        "ÀÈÌÒÙỲàèìòùỳẦỀỒầềồẰằỜờỪừ",
        "ÁÉÍÓÚÝáéíóúýẤẾỐấếốẮắỚớỨứ",
        "ÃẼĨÕŨỸãẽĩõũỹẪỄỖẫễỗẴẵỠỡỮữ",
        "ẢẺỈỎỦỶảẻỉỏủỷẨỂỔẩểổẲẳỞởỬử",
        "ẠẸỊỌỤỴạẹịọụỵẬỆỘậệộẶặỢợỰự",
    ];
    static RE: OnceLock<Regex> = OnceLock::new();
    let re =
        RE.get_or_init(|| Regex::new(&format!("([{VOWELS}])([{MARKS}])")).expect("valid regex"));
    re.replace_all(text, |caps: &regex::Captures| {
        let position = |set: &str, s: &str| {
            set.chars()
                .position(|c| s.starts_with(c))
                .expect("matched class")
        };
        let vowel = position(VOWELS, &caps[1]);
        let mark = position(MARKS, &caps[2]);
        COMPOSED[mark]
            .chars()
            .nth(vowel)
            .expect("table covers every vowel")
            .to_string()
    })
    .into_owned()
}

/// The sliding window of the last (up to three) normalised characters.
pub struct NGramWindow {
    grams: Vec<char>,
    /// Set while inside a word of capitals, whose n-grams langdetect ignores.
    pub capital_word: bool,
}

impl NGramWindow {
    pub fn new() -> Self {
        NGramWindow {
            grams: vec![' '],
            capital_word: false,
        }
    }

    /// `NGram.add_char(ch)`.
    pub fn add_char(&mut self, c: char) {
        let c = normalize(c);
        let last = *self.grams.last().expect("window is never empty");
        if last == ' ' {
            self.grams.clear();
            self.grams.push(' ');
            self.capital_word = false;
            if c == ' ' {
                return;
            }
        } else if self.grams.len() >= N_GRAM {
            self.grams.remove(0);
        }
        self.grams.push(c);
        if c.is_uppercase() {
            if last.is_uppercase() {
                self.capital_word = true;
            }
        } else {
            self.capital_word = false;
        }
    }

    /// The last `n` characters, if the window holds that many.
    pub fn last(&self, n: usize) -> Option<&[char]> {
        self.grams
            .len()
            .checked_sub(n)
            .map(|start| &self.grams[start..])
    }
}
