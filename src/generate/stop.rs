//! Stop strings: where a completion's text must be cut.

/// Byte offset of the earliest occurrence of any stop string in `text`, if any. The
/// completion keeps `text[..offset]`.
pub fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_earliest_stop() {
        let stops = vec!["\n\n".to_string(), "END".to_string(), String::new()];
        assert_eq!(earliest_stop("abc END x\n\n", &stops), Some(4));
        assert_eq!(earliest_stop("a\n\nEND", &stops), Some(1));
        assert_eq!(earliest_stop("nothing", &stops), None);
    }
}
