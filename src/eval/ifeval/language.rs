//! `language:response_language`: the whole response in the requested language.

use super::langdetect;

/// `langdetect.detect(response) == language`; text langdetect finds no features in passes
/// (the reference catches the exception and returns True).
pub(super) fn response_language(response: &str, language: &str) -> bool {
    langdetect::detect(response).map_or(true, |detected| detected == language)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages() {
        assert!(response_language(
            "Это ответ на русском языке, как и просили.",
            "ru"
        ));
        assert!(!response_language(
            "This answer is in English instead.",
            "ru"
        ));
        assert!(response_language("12345 !!!", "ru"));
        assert!(response_language("", "ko"));
        assert!(response_language("이것은 한국어로 쓴 답변입니다.", "ko"));
    }
}
