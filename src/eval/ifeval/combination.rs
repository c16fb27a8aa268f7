//! `combination:*`: two responses separated by `******`, and repeating the request first.

use super::pystr;

/// `combination:two_responses`: exactly two non-blank parts around `******` that differ
/// (after stripping); a blank part is allowed only first or last.
pub(super) fn two_responses(response: &str) -> bool {
    let parts: Vec<&str> = response.split("******").collect();
    let last = parts.len() - 1;
    let mut valid = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if pystr::strip(part).is_empty() {
            if index != 0 && index != last {
                return false;
            }
        } else {
            valid.push(*part);
        }
    }
    valid.len() == 2 && pystr::strip(valid[0]) != pystr::strip(valid[1])
}

/// `combination:repeat_prompt`: the stripped response starts with the stripped request,
/// ignoring case.
pub(super) fn repeat_prompt(response: &str, prompt_to_repeat: &str) -> bool {
    pystr::lower(pystr::strip(response)).starts_with(&pystr::lower(pystr::strip(prompt_to_repeat)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two() {
        assert!(two_responses("First answer.\n******\nSecond answer."));
        assert!(two_responses("******\nA\n******\nB\n******"));
        assert!(!two_responses("Same\n******\nSame  "));
        assert!(!two_responses("A\n******\n\n******\nB"));
        assert!(!two_responses("A\n******\nB\n******\nC"));
        assert!(!two_responses(""));
        // Seven asterisks leave a stray `*` in the second part.
        assert!(two_responses("Été\n*******\nÉté"));
    }

    #[test]
    fn repeat() {
        let prompt = "Write a poem about cats.";
        assert!(repeat_prompt(
            "  write a poem about cats. Here it is...",
            prompt
        ));
        assert!(!repeat_prompt("Sure! Write a poem about cats.", prompt));
        assert!(!repeat_prompt("", prompt));
        assert!(repeat_prompt("ÉCRIS. Then", "écris."));
    }
}
