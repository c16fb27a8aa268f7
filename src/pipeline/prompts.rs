//! Prompt templates of the generating stages. The defaults are the AutoIF paper's
//! (QwenLM/AutoIF, Apache-2.0; see `../shared/data/autoif/PROMPTS.md`). Placeholders are
//! `{name}`; only the names each template documents are replaced, so literal braces
//! (the JSON example in `funcs`) need no escaping.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PromptTemplates {
    /// `{count}`: instructions asked for; `{seed_instructions}`: `- ` lines.
    pub augment: String,
    /// `{instruction}`.
    pub funcs: String,
    /// `{funcs}`: JSON list of [source, accuracy] pairs.
    pub backtranslate: String,
    /// `{instruction}` (the original), `{back_instruction}` (one back-translation); used
    /// by the `judge` consistency checker.
    pub judge: String,
    /// `{instruction}`, `{query}`.
    pub response: String,
    /// `{instruction}`, `{query}`, `{response}`.
    pub score: String,
}

impl Default for PromptTemplates {
    fn default() -> Self {
        Self {
            augment: AUGMENT.to_string(),
            funcs: FUNCS.to_string(),
            backtranslate: BACKTRANSLATE.to_string(),
            judge: JUDGE.to_string(),
            response: RESPONSE.to_string(),
            score: SCORE.to_string(),
        }
    }
}

/// Replaces each `{name}` of `values` in `template`.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

const AUGMENT: &str = "You are an expert for writing instructions. Please provide {count} different instructions that meet the following requirements:
- Instructions are about the format but not style of a response
- Whether instructions are followed can be easily evaluate by a Python function
Here are some examples of instructions we need:
{seed_instructions}
Do not generate instructions about writing style, using metaphor, or translation. Here are some examples of instructions we do not need:
- Incorporate a famous historical quote seamlessly into your answer
- Translate your answer into Pig Latin
- Use only words that are also a type of food
- Respond with a metaphor in every sentence
- Write the response as if you are a character from a Shakespearean play
Please generate one instruction per line in your response and start each line with '- '.";

const FUNCS: &str = "You are an expert for writing evaluation functions in Python to evaluate whether a response strictly follows an instruction.
Here is the instruction: {instruction}
Please write a Python function named `evaluate` to evaluate whether an input string `response` follows this instruction. If it follows, simply return True, otherwise return False.
Please response with a single JSON includes the evaluation function in the key `func`, and a list of three test cases in the key `cases`, which includes an input in the key `input` and an expected output in the key `output` in (true, false).
Here is an example of output JSON format: {\"func\": JSON_STR(use only \\n instead of \n), \"cases\": [{\"input\": str, \"output\": str}]}.";

const BACKTRANSLATE: &str = "You are an expert in converting the Python eval function code into the corresponding instruction text. I will provide the eval function code. Please strictly follow the code to convert it into the corresponding instruction text. Here's an example: \n\n[[\"def evaluate(response):\\n    return 'e' not in response.lower()\", 1.0], [\"def evaluate(response):\\n    words = response.split()\\n    for word in words:\\n        if 'e' in word.lower():\\n            return False\\n    return True\", 1.0], [\"def evaluate(response):\\n    return all('e' not in word.lower() for word in response.split())\", 1.0]] \n\n[\"Answer without using any words that contain the letter 'E'.\",\"Answer with words that do not contain the letter 'E'.\",\"Answer with words that do not contain the letter 'E'.\"] Please convert the following eval function into instructions stored in a list: \n\n{funcs}";

// Our own wording: the paper judges consistency with an NLI model and has no prompt. The
// three labels are NLI's, with "contradiction" covering a back-translation that asks for
// something else, since that is what a drifted verification function produces.
const JUDGE: &str = "You check whether two instructions about the format of a response ask for the same thing.
Instruction A: {instruction}
Instruction B: {back_instruction}
Answer `consistent` if B asks for the same thing as A, `neutral` if B asks for part of A or adds details that do not conflict with A, and `contradiction` if B asks for something different from A or conflicts with it.
Answer with one word: consistent, neutral or contradiction.";

const RESPONSE: &str = "Please answer the query strictly following the instruction.
[instruction] {instruction}
[Query] {query}";

const SCORE: &str = "You are an expert that is good at judging whether a response is following the instruction and query.
[Instruction] {instruction}
[Query] {query}
[Response] {response}
Please notice that the response may not be helpful as it needs to strictly follow the requirements in the Instruction.
You need to judge whether the response answers the query. Please first provide a detailed analysis and then give a score ranking from 0 to 10 at the last line.
Scoring 0 means the response is totally unrelated to the query, while scoring 10 means the response is helpful and highly related to the query.
Please only provide a score in the format `Score: {score}` without any other contents at the last line.";
