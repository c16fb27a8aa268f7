//! `punctuation:*`: the punctuation instructions.

/// `punctuation:no_comma`: no ASCII comma anywhere (a full-width `，` is not a comma to
/// the reference either).
pub(super) fn no_comma(response: &str) -> bool {
    !response.contains(',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas() {
        assert!(no_comma("No commas here."));
        assert!(no_comma(""));
        assert!(no_comma("全角，逗号"));
        assert!(!no_comma("one, two"));
        assert!(!no_comma("**bold**,\n"));
        assert!(!no_comma("trailing ,   "));
    }
}
