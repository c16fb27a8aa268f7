//! Training data: SFT and preference records in the layouts LLaMA-Factory and TRL read,
//! rendered with the model's chat template into token ids with a loss mask, and grouped
//! by length into right-padded batches.
//!
//! Tokens are produced exactly as the engine sees a prompt at inference time: the
//! conversation up to an assistant turn is rendered with `add_generation_prompt` and
//! tokenized without adding BOS (the template writes what it needs); the assistant piece
//! that follows is tokenized on its own. Labels cover the reply and its end-of-turn token,
//! not the template's text after it (ChatML's trailing newline).

use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::Model;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;

/// How the records of a data file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// Detect from the first record's keys.
    Auto,
    /// LLaMA-Factory alpaca: `instruction`, `input`, `output` (or `chosen`/`rejected`),
    /// optional `system`.
    Alpaca,
    /// LLaMA-Factory sharegpt: `conversations` of `{from, value}` (preference: plus
    /// `chosen`/`rejected` turns), optional `system`.
    Sharegpt,
    /// `messages` of `{role, content}` (TRL / OpenAI style).
    Messages,
    /// TRL preference: `prompt`, `chosen`, `rejected` as strings or message lists (or
    /// `chosen`/`rejected` whole conversations sharing an implicit prompt).
    Trl,
}

/// One SFT conversation; every assistant turn is trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

/// One preference record: a prompt conversation and two candidate replies.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

/// Token ids with a per-token flag: `labels[j]` means token `j` is a training target
/// (predicted from position `j - 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub labels: Vec<bool>,
}

impl Tokenized {
    pub fn target_count(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }
}

/// A tokenized preference pair: the same prompt with each reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: Tokenized,
    pub rejected: Tokenized,
}

/// The records of a JSON Lines or JSON array file; a file without records is refused.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let records = crate::io::read_json_records(path)?;
    if records.is_empty() {
        bail!("{}: no records", path.display());
    }
    Ok(records)
}

fn has(record: &Value, key: &str) -> bool {
    record.get(key).is_some_and(|v| !v.is_null())
}

fn detect_sft(record: &Value) -> Result<DataFormat> {
    if has(record, "conversations") {
        Ok(DataFormat::Sharegpt)
    } else if has(record, "messages") {
        Ok(DataFormat::Messages)
    } else if has(record, "instruction") && has(record, "output") {
        Ok(DataFormat::Alpaca)
    } else {
        bail!("cannot tell the SFT format: expected `instruction`/`output` (alpaca), `conversations` (sharegpt) or `messages`")
    }
}

fn detect_preference(record: &Value) -> Result<DataFormat> {
    if !has(record, "chosen") || !has(record, "rejected") {
        bail!("a preference record needs `chosen` and `rejected`");
    }
    if has(record, "conversations") {
        Ok(DataFormat::Sharegpt)
    } else if has(record, "instruction") {
        Ok(DataFormat::Alpaca)
    } else {
        Ok(DataFormat::Trl)
    }
}

fn string_field(record: &Value, key: &str) -> Result<String> {
    match record.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("`{key}` must be a string"),
        None => bail!("missing `{key}`"),
    }
}

fn optional_string(record: &Value, key: &str) -> Result<Option<String>> {
    match record.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bail!("`{key}` must be a string"),
    }
}

/// LLaMA-Factory joins instruction and input with a newline.
fn alpaca_prompt(record: &Value) -> Result<Vec<Message>> {
    let mut user = string_field(record, "instruction")?;
    if let Some(input) = optional_string(record, "input")?.filter(|s| !s.is_empty()) {
        user = format!("{user}\n{input}");
    }
    let mut messages = Vec::new();
    if let Some(system) = optional_string(record, "system")?.filter(|s| !s.is_empty()) {
        messages.push(Message::new("system", system));
    }
    messages.push(Message::new("user", user));
    Ok(messages)
}

fn sharegpt_turn(turn: &Value) -> Result<Message> {
    let from = string_field(turn, "from")?;
    let role = match from.as_str() {
        "human" | "user" => "user",
        "gpt" | "assistant" => "assistant",
        "system" => "system",
        other => bail!("unsupported sharegpt speaker `{other}` (expected human, gpt or system)"),
    };
    Ok(Message::new(role, string_field(turn, "value")?))
}

fn sharegpt_messages(record: &Value) -> Result<Vec<Message>> {
    let turns = record
        .get("conversations")
        .and_then(Value::as_array)
        .context("`conversations` must be a list")?;
    let mut messages = Vec::new();
    if let Some(system) = optional_string(record, "system")?.filter(|s| !s.is_empty()) {
        messages.push(Message::new("system", system));
    }
    for turn in turns {
        messages.push(sharegpt_turn(turn)?);
    }
    Ok(messages)
}

fn message_list(value: &Value, key: &str) -> Result<Vec<Message>> {
    let list = value
        .as_array()
        .with_context(|| format!("`{key}` must be a list of messages"))?;
    list.iter()
        .map(|m| {
            Ok(Message::new(
                string_field(m, "role").with_context(|| format!("in `{key}`"))?,
                string_field(m, "content").with_context(|| format!("in `{key}`"))?,
            ))
        })
        .collect()
}

fn check_conversation(messages: &[Message]) -> Result<()> {
    if !messages.iter().any(|m| m.role == "assistant") {
        bail!("the conversation has no assistant turn to train on");
    }
    if messages.first().is_some_and(|m| m.role == "assistant") {
        bail!("the conversation starts with an assistant turn, which has no prompt");
    }
    Ok(())
}

/// Parses SFT records; an error names the file and the record.
pub fn parse_sft(records: &[Value], format: DataFormat, path: &Path) -> Result<Vec<Conversation>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let at = || format!("{}: record {}", path.display(), i + 1);
        let fmt = match format {
            DataFormat::Auto => detect_sft(record).with_context(at)?,
            DataFormat::Trl => bail!(
                "{}: --format trl is for preference data; SFT takes alpaca, sharegpt or messages",
                path.display()
            ),
            f => f,
        };
        let messages = match fmt {
            DataFormat::Alpaca => {
                let mut m = alpaca_prompt(record).with_context(at)?;
                m.push(Message::new(
                    "assistant",
                    string_field(record, "output").with_context(at)?,
                ));
                m
            }
            DataFormat::Sharegpt => sharegpt_messages(record).with_context(at)?,
            _ => message_list(record.get("messages").unwrap_or(&Value::Null), "messages")
                .with_context(at)?,
        };
        check_conversation(&messages).with_context(at)?;
        out.push(Conversation { messages });
    }
    Ok(out)
}

/// A reply given as a string, one `{from, value}` / `{role, content}` turn, or a list
/// holding one assistant message.
fn reply_text(value: &Value, key: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Object(_) if value.get("value").is_some() => Ok(sharegpt_turn(value)?.content),
        Value::Object(_) => Ok(string_field(value, "content")?),
        Value::Array(_) => {
            let messages = message_list(value, key)?;
            match messages.as_slice() {
                [m] if m.role == "assistant" => Ok(m.content.clone()),
                _ => bail!("`{key}` must hold exactly one assistant message"),
            }
        }
        _ => bail!("`{key}` must be a string or a message"),
    }
}

fn trl_pair(record: &Value) -> Result<PreferencePair> {
    let chosen = record.get("chosen").unwrap_or(&Value::Null);
    let rejected = record.get("rejected").unwrap_or(&Value::Null);
    match record.get("prompt") {
        Some(Value::String(p)) => Ok(PreferencePair {
            prompt: vec![Message::new("user", p.clone())],
            chosen: reply_text(chosen, "chosen")?,
            rejected: reply_text(rejected, "rejected")?,
        }),
        Some(p @ Value::Array(_)) => Ok(PreferencePair {
            prompt: message_list(p, "prompt")?,
            chosen: reply_text(chosen, "chosen")?,
            rejected: reply_text(rejected, "rejected")?,
        }),
        Some(_) => bail!("`prompt` must be a string or a list of messages"),
        None => {
            // Implicit prompt: two whole conversations that differ in the last turn.
            let c = message_list(chosen, "chosen")?;
            let r = message_list(rejected, "rejected")?;
            let shared = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            match (&c[shared..], &r[shared..]) {
                ([a], [b]) if a.role == "assistant" && b.role == "assistant" => Ok(PreferencePair {
                    prompt: c[..shared].to_vec(),
                    chosen: a.content.clone(),
                    rejected: b.content.clone(),
                }),
                _ => bail!("without `prompt`, `chosen` and `rejected` must be conversations that differ only in a final assistant turn"),
            }
        }
    }
}

/// Parses preference records; an error names the file and the record.
pub fn parse_preferences(
    records: &[Value],
    format: DataFormat,
    path: &Path,
) -> Result<Vec<PreferencePair>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let at = || format!("{}: record {}", path.display(), i + 1);
        let fmt = match format {
            DataFormat::Auto => detect_preference(record).with_context(at)?,
            f => f,
        };
        let pair = match fmt {
            DataFormat::Alpaca => PreferencePair {
                prompt: alpaca_prompt(record).with_context(at)?,
                chosen: reply_text(record.get("chosen").unwrap_or(&Value::Null), "chosen").with_context(at)?,
                rejected: reply_text(record.get("rejected").unwrap_or(&Value::Null), "rejected").with_context(at)?,
            },
            DataFormat::Sharegpt => PreferencePair {
                prompt: sharegpt_messages(record).with_context(at)?,
                chosen: reply_text(record.get("chosen").unwrap_or(&Value::Null), "chosen").with_context(at)?,
                rejected: reply_text(record.get("rejected").unwrap_or(&Value::Null), "rejected").with_context(at)?,
            },
            DataFormat::Messages => bail!("{}: --format messages is for SFT data; preference data takes alpaca, sharegpt or trl", path.display()),
            _ => trl_pair(record).with_context(at)?,
        };
        if pair.prompt.is_empty() || pair.prompt.last().is_some_and(|m| m.role == "assistant") {
            return Err(anyhow!("the prompt must end with a user turn")).with_context(at);
        }
        out.push(pair);
    }
    Ok(out)
}

/// Renders conversations with the model's chat template and tokenizes them.
pub struct Renderer<'m> {
    model: &'m Model,
    template: &'m ChatTemplate,
}

impl<'m> Renderer<'m> {
    pub fn new(model: &'m Model) -> Result<Self> {
        let template = model.chat_template.as_ref().with_context(|| {
            format!(
                "{}: the model has no chat template to render training data with",
                model.name
            )
        })?;
        Ok(Self { model, template })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.model.tokenizer.encode_raw(text)
    }

    /// The text an assistant reply adds after the generation prompt, split into the reply
    /// (through its end-of-turn token) and the template's text after it.
    fn reply_tokens(&self, reply_text: &str) -> Result<(Vec<u32>, usize)> {
        let ids = self.encode(reply_text)?;
        let eos = &self.model.eos_token_ids;
        let trained = ids
            .iter()
            .position(|t| eos.contains(t))
            .map_or(ids.len(), |p| p + 1);
        Ok((ids, trained))
    }

    /// `(prompt text, reply text)`: the conversation before turn `i` with the generation
    /// prompt, and what rendering turn `i` appends to it.
    fn split_turn(&self, messages: &[Message], i: usize) -> Result<(String, String)> {
        let prompt = self.template.render(&messages[..i], true)?;
        let full = self.template.render(&messages[..=i], false)?;
        let reply = full.strip_prefix(&prompt).with_context(|| {
            "the chat template renders a conversation that does not start with its own generation prompt, so the reply tokens cannot be located".to_string()
        })?;
        Ok((prompt, reply.to_string()))
    }

    /// Token ids of a whole conversation with labels on every assistant reply.
    pub fn sft(&self, conversation: &Conversation) -> Result<Tokenized> {
        let messages = &conversation.messages;
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        let mut rendered = String::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let (prompt, reply) = self.split_turn(messages, i)?;
            let new_prompt = prompt.strip_prefix(&rendered).with_context(|| {
                "the chat template renders an earlier turn differently once later turns exist"
                    .to_string()
            })?;
            let p = self.encode(new_prompt)?;
            labels.extend(std::iter::repeat_n(false, p.len()));
            ids.extend(p);
            let (r, trained) = self.reply_tokens(&reply)?;
            labels.extend((0..r.len()).map(|k| k < trained));
            ids.extend(r);
            rendered = prompt + &reply;
        }
        Ok(Tokenized { ids, labels })
    }

    /// The prompt's tokens followed by each reply's, labels on the replies.
    pub fn preference(&self, pair: &PreferencePair) -> Result<TokenizedPair> {
        let with = |reply: &str| -> Result<Tokenized> {
            let mut messages = pair.prompt.clone();
            messages.push(Message::new("assistant", reply));
            let (prompt, reply) = self.split_turn(&messages, messages.len() - 1)?;
            let mut ids = self.encode(&prompt)?;
            let mut labels = vec![false; ids.len()];
            let (r, trained) = self.reply_tokens(&reply)?;
            // Only the trained part: the reply's log-probability is what DPO compares.
            ids.extend_from_slice(&r[..trained]);
            labels.extend(std::iter::repeat_n(true, trained));
            Ok(Tokenized { ids, labels })
        };
        Ok(TokenizedPair {
            chosen: with(&pair.chosen)?,
            rejected: with(&pair.rejected)?,
        })
    }
}

/// Cuts a sequence to `max_len` tokens; None when no target is left.
pub fn truncate(mut t: Tokenized, max_len: usize) -> Option<Tokenized> {
    t.ids.truncate(max_len);
    t.labels.truncate(max_len);
    // The first token has no context to be predicted from.
    if let Some(first) = t.labels.first_mut() {
        *first = false;
    }
    (t.target_count() > 0).then_some(t)
}

/// Renders and tokenizes SFT conversations, cut to `max_len`; returns them and how many
/// were dropped because no response token fit.
pub fn tokenize_sft(
    model: &Model,
    conversations: &[Conversation],
    max_len: usize,
) -> Result<(Vec<Tokenized>, usize)> {
    let renderer = Renderer::new(model)?;
    let mut out = Vec::with_capacity(conversations.len());
    for (i, c) in conversations.iter().enumerate() {
        let t = renderer
            .sft(c)
            .with_context(|| format!("record {}", i + 1))?;
        out.extend(truncate(t, max_len));
    }
    let dropped = conversations.len() - out.len();
    Ok((out, dropped))
}

/// Renders and tokenizes preference pairs, each side cut to `max_len`; returns them and
/// how many were dropped because a reply had no token left.
pub fn tokenize_preferences(
    model: &Model,
    pairs: &[PreferencePair],
    max_len: usize,
) -> Result<(Vec<TokenizedPair>, usize)> {
    let renderer = Renderer::new(model)?;
    let mut out = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let t = renderer
            .preference(p)
            .with_context(|| format!("record {}", i + 1))?;
        if let (Some(chosen), Some(rejected)) =
            (truncate(t.chosen, max_len), truncate(t.rejected, max_len))
        {
            out.push(TokenizedPair { chosen, rejected });
        }
    }
    let dropped = pairs.len() - out.len();
    Ok((out, dropped))
}

/// Groups example indices into batches of similar length: sorted by `lengths`, cut into
/// runs of `batch_size`. The order of the batches is shuffled per epoch by the trainer.
pub fn length_grouped_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Packs items of `tokens[i]` tokens into rows of at most `capacity` (first fit, longest
/// first; an item larger than a row gets a row of its own) and groups `rows_per_batch`
/// consecutive rows into a batch of item indices. Deterministic: the trainer shuffles
/// the batches per epoch.
pub fn packed_batches(tokens: &[usize], capacity: usize, rows_per_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(tokens[i]), i));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        match rows
            .iter_mut()
            .find(|(used, _)| used + tokens[i] <= capacity)
        {
            Some((used, items)) => {
                *used += tokens[i];
                items.push(i);
            }
            None => rows.push((tokens[i], vec![i])),
        }
    }
    rows.chunks(rows_per_batch.max(1))
        .map(|chunk| chunk.iter().flat_map(|(_, items)| items.clone()).collect())
        .collect()
}

/// Cuts a batch into consecutive pieces of at most `max_tokens` tokens (`tokens(i)` of
/// item `i`; batches carry no padding); an item larger than that goes alone. 0: no limit.
pub fn split_by_tokens(
    batch: &[usize],
    tokens: impl Fn(usize) -> usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    if max_tokens == 0 {
        return vec![batch.to_vec()];
    }
    let mut pieces: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for &i in batch {
        match pieces.last_mut() {
            Some(piece) if filled + tokens(i) <= max_tokens => {
                piece.push(i);
                filled += tokens(i);
            }
            _ => {
                pieces.push(vec![i]);
                filled = tokens(i);
            }
        }
    }
    pieces
}

/// Sequences laid back to back with no padding (each attends only to itself, from
/// position 0), and where their targets are.
pub struct TokenBatch {
    /// `[tokens]` u32.
    pub input_ids: Tensor,
    /// Each sequence's `(first token, length)` in `input_ids`.
    pub segments: Vec<(usize, usize)>,
    /// Indices into `input_ids` of the positions that predict each target.
    pub positions: Tensor,
    /// `[targets]` u32 token ids.
    pub targets: Tensor,
    /// Number of targets of each sequence, in order.
    pub targets_per_sequence: Vec<usize>,
    /// Tokens in the batch.
    pub tokens: usize,
}

impl TokenBatch {
    pub fn new(sequences: &[&Tokenized], device: &Device) -> Result<Self> {
        let mut ids = Vec::with_capacity(sequences.iter().map(|s| s.ids.len()).sum());
        let mut segments = Vec::with_capacity(sequences.len());
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut per_seq = Vec::with_capacity(sequences.len());
        for s in sequences {
            let first = ids.len();
            ids.extend_from_slice(&s.ids);
            segments.push((first, s.ids.len()));
            let before = targets.len();
            for (j, (&id, &label)) in s.ids.iter().zip(&s.labels).enumerate() {
                if label && j > 0 {
                    positions.push((first + j - 1) as u32);
                    targets.push(id);
                }
            }
            per_seq.push(targets.len() - before);
        }
        let (n, tokens) = (targets.len(), ids.len());
        Ok(Self {
            input_ids: Tensor::from_vec(ids, tokens, device)?,
            segments,
            positions: Tensor::from_vec(positions, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            targets_per_sequence: per_seq,
            tokens,
        })
    }

    pub fn target_count(&self) -> usize {
        self.targets_per_sequence.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batches_split_within_the_token_budget() {
        let widths = [100, 300, 200, 50, 700];
        let w = |i: usize| widths[i];
        assert_eq!(
            split_by_tokens(&[0, 1, 2, 3], w, 600),
            vec![vec![0, 1, 2], vec![3]]
        );
        assert_eq!(
            split_by_tokens(&[1, 2, 4, 3], w, 500),
            vec![vec![1, 2], vec![4], vec![3]]
        );
        assert_eq!(split_by_tokens(&[0, 1], w, 0), vec![vec![0, 1]]);
    }

    fn p() -> &'static Path {
        Path::new("data.jsonl")
    }

    #[test]
    fn detects_and_parses_sft_layouts() -> Result<()> {
        let records = vec![
            json!({"instruction": "Say hi", "input": "politely", "output": "Hello.", "system": "Be brief."}),
            json!({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}),
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        ];
        let parsed = parse_sft(&records, DataFormat::Auto, p())?;
        assert_eq!(
            parsed[0].messages,
            vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Say hi\npolitely"),
                Message::new("assistant", "Hello."),
            ]
        );
        assert_eq!(parsed[1], parsed[2]);
        let err = parse_sft(&[json!({"text": "x"})], DataFormat::Auto, p()).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("data.jsonl: record 1: cannot tell"),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn parses_preference_layouts() -> Result<()> {
        let expected = PreferencePair {
            prompt: vec![Message::new("user", "q")],
            chosen: "good".into(),
            rejected: "bad".into(),
        };
        let records = vec![
            json!({"instruction": "q", "chosen": "good", "rejected": "bad"}),
            json!({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}),
            json!({"prompt": "q", "chosen": "good", "rejected": "bad"}),
            json!({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]}),
            json!({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}),
        ];
        for pair in parse_preferences(&records, DataFormat::Auto, p())? {
            assert_eq!(pair, expected);
        }
        assert!(parse_preferences(
            &[json!({"prompt": "q", "chosen": "x"})],
            DataFormat::Auto,
            p()
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn packing_fills_rows_longest_first() {
        // Rows of 10, longest first: [12] alone, [8, 2], [7, 3], [5, 4, 1]; two per batch.
        let tokens = [5, 8, 2, 7, 3, 4, 1, 12];
        assert_eq!(
            packed_batches(&tokens, 10, 2),
            vec![vec![7, 1, 2], vec![3, 4, 0, 5, 6]]
        );
        let all: usize = packed_batches(&tokens, 10, 1).iter().map(|b| b.len()).sum();
        assert_eq!(all, tokens.len(), "every item in exactly one row");
    }

    #[test]
    fn batches_group_by_length_and_lay_sequences_back_to_back() -> Result<()> {
        assert_eq!(
            length_grouped_batches(&[5, 1, 4, 2], 2),
            vec![vec![1, 3], vec![2, 0]]
        );
        let a = Tokenized {
            ids: vec![7, 8, 9],
            labels: vec![false, true, true],
        };
        let b = Tokenized {
            ids: vec![4, 5],
            labels: vec![false, true],
        };
        let batch = TokenBatch::new(&[&a, &b], &Device::Cpu)?;
        assert_eq!(batch.input_ids.to_vec1::<u32>()?, vec![7, 8, 9, 4, 5]);
        assert_eq!(batch.segments, vec![(0, 3), (3, 2)]);
        assert_eq!(batch.positions.to_vec1::<u32>()?, vec![0, 1, 3]);
        assert_eq!(batch.targets.to_vec1::<u32>()?, vec![8, 9, 5]);
        assert_eq!(batch.targets_per_sequence, vec![2, 1]);
        assert_eq!(batch.tokens, 5);
        Ok(())
    }
}
