//! The local engine: continuous batching over the decoder's packed inference path.
//!
//! Every (request, sample) pair is a job. Up to `max_batch` jobs are active, each in its
//! own KV-cache slot. One step packs the pending tokens of every active job (a whole
//! prompt for a job just admitted, one token for the rest) into a single forward pass,
//! samples one token per job from the logits at its last position, and retires finished
//! jobs; their slots take the next queued jobs in the same loop iteration.
//!
//! On the CPU, the prompt tokens every job starts with (a chat template's opening) are
//! computed once and copied into each slot, and each step runs as two passes over halves
//! of its jobs at once (`forward`). Neither changes a token.

use super::sampler::Sampler;
use super::stop::earliest_stop;
use super::{Backend, Completion, FinishReason, Prompt, Request};
use crate::model::decoder::Segment;
use crate::model::kv_cache::{HostPrecision, KvCache};
use crate::model::lora::Adapters;
use crate::model::ops::quant::Precision;
use crate::model::transfer;
use crate::model::Model;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together (KV-cache slots).
    pub max_batch: usize,
    /// Prompt tokens admitted into one step, bounding a step's activation memory. A
    /// longer prompt is still admitted, alone.
    pub max_prefill_tokens: usize,
    /// Whether to run the LoRA adapters (when attached).
    pub adapters: Adapters,
    /// The projections' arithmetic: `Int8` (the default) runs CPU f32 weights through
    /// int8 copies, several times faster and within sampling noise of `Exact`, which
    /// keeps the loaded weights.
    pub precision: Precision,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Keep the KV cache as tensors, and so decode through the decoder's batched tensor
    /// path, even on the CPU in f32 where host kernels run by default: the path a GPU
    /// takes, checked on the CPU by tests. Elsewhere the cache keeps tensors anyway.
    pub tensor_kv_cache: bool,
    /// How the CPU's f32 KV cache keeps keys and values (`HostPrecision`).
    pub kv_cache: HostPrecision,
    /// When every active job is greedy without a repetition penalty and the precision is
    /// `Exact` on the CPU in f32, pick tokens with the decoder's screened LM head
    /// (`Decoder::greedy_tokens`: the same tokens bit for bit, most of the head in int8)
    /// rather than the full exact logits. Off only to check that equality.
    pub greedy_screen: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_prefill_tokens: 4096,
            adapters: Adapters::On,
            precision: Precision::default(),
            progress: true,
            tensor_kv_cache: false,
            kv_cache: HostPrecision::F32,
            greedy_screen: true,
        }
    }
}

/// Timing of the last `generate` call, for benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Seconds until every job admitted in the first step had its first token.
    pub first_step_s: f64,
    pub total_s: f64,
    pub prompt_tokens: usize,
    /// Prompt tokens copied from the prefix every job shares rather than computed.
    pub shared_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Tokens picked by the screened LM head (`EngineOptions::greedy_screen`), and of
    /// those the ones whose row the screen left to the full exact head.
    pub screened_tokens: usize,
    pub full_head_tokens: usize,
}

pub struct LocalEngine<'m> {
    model: &'m Model,
    options: EngineOptions,
    stats: EngineStats,
}

/// One (request, sample) in flight.
struct Job {
    request: usize,
    sample: usize,
    prompt_len: usize,
    /// Prompt then generated tokens, for the repetition penalty.
    history: Vec<u32>,
    /// Tokens the next step feeds for this job.
    pending: Vec<u32>,
    sampler: Sampler,
    max_new: usize,
}

/// The state of one `run`: queued jobs, the job in each KV-cache slot, finished jobs.
struct Batch {
    queue: VecDeque<Job>,
    active: Vec<Option<Job>>,
    cache: KvCache,
    /// The cache slot after `active`'s holding the prompt tokens every job starts with
    /// (the chat template's opening), and how many: each admitted job copies them
    /// rather than computing them again.
    shared_prefix: Option<(usize, usize)>,
    done: Vec<Completion>,
    stats: EngineStats,
}

impl Batch {
    /// Packs every active job's pending tokens, except the followers', which share their
    /// leader's prefill.
    fn pack(&self, followers: &[(usize, usize)]) -> Packed {
        let mut packed = Packed {
            tokens: Vec::new(),
            positions: Vec::new(),
            segments: Vec::new(),
            last_rows: Vec::new(),
        };
        for (slot, job) in self.active.iter().enumerate() {
            let Some(job) = job else { continue };
            if followers.iter().any(|&(f, _)| f == slot) {
                continue;
            }
            let past = self.cache.slot(slot).map(|s| s.len()).unwrap_or(0);
            packed.segments.push(Segment {
                slot,
                start: packed.tokens.len(),
                len: job.pending.len(),
            });
            packed
                .positions
                .extend((past..past + job.pending.len()).map(|p| p as u32));
            packed.tokens.extend_from_slice(&job.pending);
            packed.last_rows.push((packed.tokens.len() - 1) as u32);
        }
        packed
    }
}

/// The pending tokens of a step's jobs, one segment per job, as one forward pass takes
/// them.
struct Packed {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    segments: Vec<Segment>,
    /// Each segment's last row: where its next token's logits come from.
    last_rows: Vec<u32>,
}

impl Packed {
    /// The segments `which` (indices into `segments`, in that order) as a pass of their own.
    fn subset(&self, which: &[usize]) -> Packed {
        let mut part = Packed {
            tokens: Vec::new(),
            positions: Vec::new(),
            segments: Vec::with_capacity(which.len()),
            last_rows: Vec::with_capacity(which.len()),
        };
        for &i in which {
            let seg = self.segments[i];
            let rows = seg.start..seg.start + seg.len;
            part.segments.push(Segment {
                start: part.tokens.len(),
                ..seg
            });
            part.tokens.extend_from_slice(&self.tokens[rows.clone()]);
            part.positions.extend_from_slice(&self.positions[rows]);
            part.last_rows.push((part.tokens.len() - 1) as u32);
        }
        part
    }

    /// The segments in two groups of about equal work, each in the original order, or
    /// `None` with fewer than two segments. A segment's work is its rows' projections
    /// plus its attention over what each row sees; the weight of one attended position
    /// against one row of projections is SmolLM2's measured ratio, close enough for
    /// other models since each stream's idle thread steals from the other.
    fn halves(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        const POSITION_WORK: f64 = 0.002;
        if self.segments.len() < 2 {
            return None;
        }
        let work = |i: usize| {
            let seg = &self.segments[i];
            let past = self.positions[seg.start] as f64;
            let rows = seg.len as f64;
            rows * (1.0 + POSITION_WORK * (past + (rows + 1.0) / 2.0))
        };
        let mut by_work: Vec<usize> = (0..self.segments.len()).collect();
        by_work.sort_by(|&a, &b| work(b).total_cmp(&work(a)));
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let (mut first_work, mut second_work) = (0.0, 0.0);
        for i in by_work {
            if first_work <= second_work {
                first_work += work(i);
                first.push(i);
            } else {
                second_work += work(i);
                second.push(i);
            }
        }
        first.sort_unstable();
        second.sort_unstable();
        Some((first, second))
    }
}

impl<'m> LocalEngine<'m> {
    pub fn new(model: &'m Model, options: EngineOptions) -> Self {
        Self {
            model,
            options,
            stats: EngineStats::default(),
        }
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Token ids of a prompt: chat messages through the model's template (no special
    /// tokens added by the tokenizer, the template has them), raw text as the tokenizer
    /// config says.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => self.model.tokenizer.encode(text),
            Prompt::Chat(messages) => {
                let template = self.model.chat_template.as_ref().with_context(|| {
                    format!(
                        "{}: the model has no chat template; pass raw prompts instead",
                        self.model.name
                    )
                })?;
                let text = template.render(messages, true)?;
                self.model.tokenizer.encode_raw(&text)
            }
        }
    }

    fn run(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let started = Instant::now();
        let decoder = &self.model.decoder;
        let queue = self.queue_jobs(requests)?;
        let total_jobs = queue.len();
        let progress = self.progress_bar(total_jobs as u64);
        let c = decoder.config();
        let slots = self.options.max_batch.max(1).min(total_jobs.max(1));
        let mut cache = KvCache::new(
            slots,
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            decoder.dtype(),
            decoder.device(),
        )
        .with_host_precision(self.options.kv_cache);
        if self.options.tensor_kv_cache {
            cache = cache.with_tensor_storage();
        }
        // Slotted tensor storage shares one position axis: sized once, for the longest job.
        let longest = queue.iter().map(|j| j.prompt_len + j.max_new).max();
        cache.reserve(longest.unwrap_or(0))?;
        let mut batch = Batch {
            queue,
            active: (0..slots).map(|_| None).collect(),
            cache,
            shared_prefix: None,
            done: Vec::with_capacity(total_jobs),
            stats: EngineStats::default(),
        };
        self.prefill_shared_prefix(&mut batch)?;
        let mut first_step = true;
        loop {
            let followers = self.admit(&mut batch, &progress)?;
            if batch.active.iter().all(Option::is_none) {
                if batch.queue.is_empty() {
                    break;
                }
                continue;
            }
            let packed = batch.pack(&followers);
            let hidden = self.forward(&mut batch.cache, &packed)?;
            for &(slot, leader) in &followers {
                let prompt_len = batch.active[slot].as_ref().unwrap().prompt_len;
                batch.cache.copy_prefix(leader, slot, prompt_len)?;
            }
            let tokens = match self.greedy(requests, &mut batch, &packed.segments, &hidden)? {
                Some(tokens) => place(tokens, &packed.segments, &followers, slots),
                None => {
                    let logits = self.logits(&hidden)?;
                    self.sample(requests, &mut batch, &packed.segments, logits, &followers)
                }
            };
            if first_step {
                batch.stats.first_step_s = started.elapsed().as_secs_f64();
                first_step = false;
            }
            self.retire(requests, &mut batch, &tokens, &progress)?;
            let secs = started.elapsed().as_secs_f64();
            progress.set_message(format!(
                "{:.1} tok/s",
                batch.stats.generated_tokens as f64 / secs
            ));
        }
        progress.finish_and_clear();
        batch.stats.total_s = started.elapsed().as_secs_f64();
        self.stats = batch.stats;
        let mut done = batch.done;
        done.sort_by_key(|c| (c.request_index, c.sample_index));
        Ok(done)
    }

    /// One job per (request, sample), in request order, each with its prompt tokenized.
    fn queue_jobs(&self, requests: &[Request]) -> Result<VecDeque<Job>> {
        let max_positions = self.model.decoder.max_positions();
        let mut queue = VecDeque::new();
        for (r, req) in requests.iter().enumerate() {
            let bytes = match &req.prompt {
                Prompt::Text(text) => text.len(),
                Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
            };
            let at_least = self.model.tokenizer.min_tokens(bytes);
            if at_least >= max_positions {
                bail!(
                    "request {r}: prompt of {bytes} bytes is at least {at_least} tokens, more than the model's {max_positions} positions"
                );
            }
            let ids = self.prompt_ids(&req.prompt)?;
            if ids.is_empty() {
                bail!("request {r}: the prompt is empty after tokenization");
            }
            if ids.len() >= max_positions {
                bail!(
                    "request {r}: prompt of {} tokens leaves no room in the model's {max_positions} positions",
                    ids.len()
                );
            }
            for s in 0..req.n {
                queue.push_back(Job {
                    request: r,
                    sample: s,
                    prompt_len: ids.len(),
                    history: ids.clone(),
                    pending: ids.clone(),
                    sampler: Sampler::new(&req.params, s),
                    max_new: req.params.max_new_tokens.min(max_positions - ids.len()),
                });
            }
        }
        Ok(queue)
    }

    /// With host KV buffers and several jobs, computes the prompt tokens every queued job
    /// starts with once, in a slot of its own, and leaves each job only the rest to feed.
    /// Each row's keys and values depend only on the rows before it, so a copy holds the
    /// bits a job's own prefill would have written.
    fn prefill_shared_prefix(&self, batch: &mut Batch) -> Result<()> {
        // Below this many tokens the copy saves less than it costs to set up.
        const WORTH_SHARING: usize = 4;
        if !batch.cache.is_host() || batch.queue.len() < 2 {
            return Ok(());
        }
        let mut jobs = batch.queue.iter();
        let first = &jobs.next().expect("two jobs").pending;
        // Short of the shortest prompt: every job still feeds at least one token.
        let mut len = first.len() - 1;
        for job in jobs {
            let common = first.iter().zip(&job.pending).take_while(|(a, b)| a == b);
            len = len.min(common.count()).min(job.pending.len() - 1);
        }
        if len < WORTH_SHARING {
            return Ok(());
        }
        let prefix_slot = batch.cache.num_slots();
        let prefix = Packed {
            tokens: first[..len].to_vec(),
            positions: (0..len as u32).collect(),
            segments: vec![Segment {
                slot: prefix_slot,
                start: 0,
                len,
            }],
            last_rows: vec![len as u32 - 1],
        };
        batch.cache.add_slot()?;
        batch.cache.allocate(prefix_slot, len)?;
        self.forward_one(&mut batch.cache, &prefix)?;
        for job in batch.queue.iter_mut() {
            job.pending.drain(..len);
        }
        batch.shared_prefix = Some((prefix_slot, len));
        Ok(())
    }

    /// Moves queued jobs into free slots, within the prefill budget. Samples of one request
    /// admitted together share one prefill: the first is the leader, the others copy its
    /// cache and its first-token logits. Returns those followers as (slot, leader slot).
    fn admit(&self, batch: &mut Batch, progress: &ProgressBar) -> Result<Vec<(usize, usize)>> {
        let mut budget = self.options.max_prefill_tokens;
        let mut admitted_any = false;
        let mut followers: Vec<(usize, usize)> = Vec::new();
        let mut leaders: Vec<(usize, usize)> = Vec::new(); // (request, slot)
        for (slot, entry) in batch.active.iter_mut().enumerate() {
            if entry.is_some() {
                continue;
            }
            let Some(next) = batch.queue.front() else {
                break;
            };
            let leader = leaders
                .iter()
                .find(|(r, _)| *r == next.request)
                .map(|&(_, s)| s);
            if admitted_any && leader.is_none() && next.pending.len() > budget {
                break;
            }
            let job = batch.queue.pop_front().unwrap();
            batch.stats.prompt_tokens += job.prompt_len;
            if job.max_new == 0 {
                batch
                    .done
                    .push(self.finish(&job, FinishReason::Length, None)?);
                progress.inc(1);
                continue;
            }
            match leader {
                Some(leader_slot) => followers.push((slot, leader_slot)),
                None => {
                    budget = budget.saturating_sub(job.pending.len());
                    leaders.push((job.request, slot));
                }
            }
            admitted_any = true;
            batch.cache.allocate(slot, job.prompt_len + job.max_new)?;
            if let Some((prefix_slot, len)) = batch.shared_prefix {
                batch.cache.copy_prefix(prefix_slot, slot, len)?;
                batch.stats.shared_prompt_tokens += len;
            }
            *entry = Some(job);
        }
        Ok(followers)
    }

    /// The packed forward pass over `packed`: the final hidden states at each segment's
    /// last row. Its host↔device copies go through `transfer`: these three uploads, the
    /// decoder's one, and (in `logits`) the logits.
    fn forward(&self, cache: &mut KvCache, packed: &Packed) -> Result<Tensor> {
        let streams = cache.is_host() && rayon::current_num_threads() >= 2;
        let Some((first, second)) = packed.halves().filter(|_| streams) else {
            return self.forward_one(cache, packed);
        };
        // Two passes over disjoint halves at once rather than one pass whose every op
        // waits for both threads: a thread that finishes its share steals from the other
        // half, and one half's attention (bound by memory) overlaps the other's
        // projections (bound by the FMA units). Each row's arithmetic is the same either
        // way (the products and attention are per row), so are the tokens.
        let (first_part, second_part) = (packed.subset(&first), packed.subset(&second));
        let second_slots: Vec<usize> = second_part.segments.iter().map(|s| s.slot).collect();
        let mut second_cache = cache.split_off(&second_slots)?;
        let (first_hidden, second_hidden) = rayon::join(
            || self.forward_one(cache, &first_part),
            || self.forward_one(&mut second_cache, &second_part),
        );
        cache.rejoin(second_cache);
        let hidden = Tensor::cat(&[first_hidden?, second_hidden?], 0)?;
        // Back to the packed order: segment `i` sits at its rank in `first ++ second`.
        let mut order = vec![0u32; packed.segments.len()];
        for (rank, &i) in first.iter().chain(&second).enumerate() {
            order[i] = rank as u32;
        }
        let order = transfer::upload_u32(&order, hidden.device())?;
        Ok(hidden.index_select(&order, 0)?)
    }

    /// One packed forward pass over `packed`.
    fn forward_one(&self, cache: &mut KvCache, packed: &Packed) -> Result<Tensor> {
        let decoder = &self.model.decoder;
        let dev = decoder.device();
        let tokens = transfer::upload_u32(&packed.tokens, dev)?;
        let positions = transfer::upload_u32(&packed.positions, dev)?;
        let hidden = decoder.forward_packed(
            &tokens,
            &positions,
            &packed.segments,
            cache,
            self.options.adapters,
            self.options.precision,
        )?;
        let rows = transfer::upload_u32(&packed.last_rows, dev)?;
        Ok(hidden.index_select(&rows, 0)?)
    }

    /// The f32 logits of each last-row hidden state, downloaded.
    fn logits(&self, hidden: &Tensor) -> Result<Vec<Vec<f32>>> {
        let decoder = &self.model.decoder;
        transfer::download_rows_f32(&decoder.logits(hidden, self.options.precision)?)
    }

    /// Each segment's token from the screened LM head (`Decoder::greedy_tokens`) when
    /// the step allows it: screening on, `Exact` precision, host cache, every active job
    /// plain greedy. End-of-sequence tokens are excluded as `sample` masks them. `None`
    /// when the step needs the full logits.
    fn greedy(
        &self,
        requests: &[Request],
        batch: &mut Batch,
        segments: &[Segment],
        hidden: &Tensor,
    ) -> Result<Option<Vec<u32>>> {
        let applies = self.options.greedy_screen
            && self.options.precision == Precision::Exact
            && batch.cache.is_host()
            && batch
                .active
                .iter()
                .flatten()
                .all(|j| j.sampler.is_plain_greedy());
        if !applies {
            return Ok(None);
        }
        let eos_ids = &self.model.eos_token_ids;
        let exclude: Vec<&[u32]> = segments
            .iter()
            .map(|seg| {
                let job = batch.active[seg.slot].as_ref().expect("an active job");
                let held = job.history.len() - job.prompt_len
                    < requests[job.request].params.min_new_tokens;
                if held {
                    eos_ids.as_slice()
                } else {
                    &[]
                }
            })
            .collect();
        let Some(picked) = self.model.decoder.greedy_tokens(hidden, &exclude)? else {
            return Ok(None);
        };
        batch.stats.screened_tokens += picked.tokens.len();
        batch.stats.full_head_tokens += picked.full_head_rows;
        Ok(Some(picked.tokens))
    }

    /// One token per active job from its logits row (a follower's is its leader's). The
    /// end-of-sequence tokens are masked until a job has its `min_new_tokens`. Sampling is
    /// per sequence with its own generator, so it parallelises without changing any draw.
    fn sample(
        &self,
        requests: &[Request],
        batch: &mut Batch,
        segments: &[Segment],
        logits: Vec<Vec<f32>>,
        followers: &[(usize, usize)],
    ) -> Vec<Option<u32>> {
        let mut rows: Vec<Option<Vec<f32>>> = (0..batch.active.len()).map(|_| None).collect();
        for (seg, row) in segments.iter().zip(logits) {
            rows[seg.slot] = Some(row);
        }
        for &(slot, leader) in followers {
            rows[slot] = rows[leader].clone();
        }
        let eos_ids = &self.model.eos_token_ids;
        batch
            .active
            .par_iter_mut()
            .zip(rows.into_par_iter())
            .map(|(job, row)| {
                let (job, mut row) = (job.as_mut()?, row?);
                if job.history.len() - job.prompt_len < requests[job.request].params.min_new_tokens
                {
                    for &eos in eos_ids {
                        row[eos as usize] = f32::NEG_INFINITY;
                    }
                }
                Some(job.sampler.sample(&mut row, &job.history))
            })
            .collect()
    }

    /// Appends each slot's new token to its job, and finishes the jobs that hit an
    /// end-of-sequence token, a stop string or their length, freeing their slots.
    fn retire(
        &self,
        requests: &[Request],
        batch: &mut Batch,
        tokens: &[Option<u32>],
        progress: &ProgressBar,
    ) -> Result<()> {
        for (slot, token) in tokens.iter().enumerate() {
            let Some(token) = *token else { continue };
            let job = batch.active[slot].as_mut().unwrap();
            let params = &requests[job.request].params;
            let eos = self.model.eos_token_ids.contains(&token);
            if !eos {
                job.history.push(token);
            }
            batch.stats.generated_tokens += 1;
            let generated = job.history.len() - job.prompt_len;
            let stop_at = if !eos && !params.stop.is_empty() {
                let text = self
                    .model
                    .tokenizer
                    .decode(&job.history[job.prompt_len..], true)?;
                earliest_stop(&text, &params.stop)
            } else {
                None
            };
            let finish = if eos || stop_at.is_some() {
                Some(FinishReason::Stop)
            } else if generated >= job.max_new {
                Some(FinishReason::Length)
            } else {
                None
            };
            match finish {
                Some(reason) => {
                    let job = batch.active[slot].take().unwrap();
                    batch.cache.free(slot);
                    batch.done.push(self.finish(&job, reason, stop_at)?);
                    progress.inc(1);
                }
                None => job.pending = vec![token],
            }
        }
        Ok(())
    }

    fn finish(
        &self,
        job: &Job,
        reason: FinishReason,
        stop_at: Option<usize>,
    ) -> Result<Completion> {
        let ids = job.history[job.prompt_len..].to_vec();
        let mut text = self.model.tokenizer.decode(&ids, true)?;
        if let Some(at) = stop_at {
            text.truncate(at);
        }
        Ok(Completion {
            request_index: job.request,
            sample_index: job.sample,
            text,
            token_ids: ids,
            finish_reason: reason,
        })
    }

    fn progress_bar(&self, total: u64) -> ProgressBar {
        if !self.options.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "generating {bar:30} {pos}/{len} [{elapsed_precise} < {eta}] {msg}",
            )
            .expect("valid progress template"),
        );
        bar
    }
}

/// Per slot, the token of its segment (`tokens` in segment order) or, for a follower,
/// its leader's: what `sample` gives when every job is greedy.
fn place(
    tokens: Vec<u32>,
    segments: &[Segment],
    followers: &[(usize, usize)],
    slots: usize,
) -> Vec<Option<u32>> {
    let mut placed = vec![None; slots];
    for (seg, token) in segments.iter().zip(tokens) {
        placed[seg.slot] = Some(token);
    }
    for &(slot, leader) in followers {
        placed[slot] = placed[leader];
    }
    placed
}

impl Backend for LocalEngine<'_> {
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        self.run(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments `(slot, past, rows)` packed one after another.
    fn packed(segments: &[(usize, u32, usize)]) -> Packed {
        let mut p = Packed {
            tokens: Vec::new(),
            positions: Vec::new(),
            segments: Vec::new(),
            last_rows: Vec::new(),
        };
        for &(slot, past, len) in segments {
            let start = p.tokens.len();
            p.segments.push(Segment { slot, start, len });
            p.tokens
                .extend((0..len as u32).map(|t| 1000 * slot as u32 + t));
            p.positions.extend(past..past + len as u32);
            p.last_rows.push((start + len - 1) as u32);
        }
        p
    }

    #[test]
    fn halves_balance_the_work_and_keep_the_order() {
        // One long prefill against many decoding rows: the prefill goes alone.
        let p = packed(&[(0, 10, 1), (1, 0, 40), (2, 300, 1), (3, 20, 1), (4, 5, 1)]);
        let (first, second) = p.halves().unwrap();
        assert_eq!((first, second), (vec![1], vec![0, 2, 3, 4]));
        // Equal decoding rows split evenly, each half in packed order.
        let p = packed(&(0..6).map(|s| (s, 100, 1)).collect::<Vec<_>>());
        let (first, second) = p.halves().unwrap();
        assert_eq!((first.len(), second.len()), (3, 3));
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        assert!(second.windows(2).all(|w| w[0] < w[1]));
        assert!(packed(&[(0, 0, 5)]).halves().is_none());
    }

    #[test]
    fn a_subset_is_a_pass_of_its_own() {
        let p = packed(&[(0, 7, 2), (1, 0, 3), (2, 4, 1)]);
        let part = p.subset(&[0, 2]);
        assert_eq!(part.tokens, vec![0, 1, 2000]);
        assert_eq!(part.positions, vec![7, 8, 4]);
        assert_eq!(
            part.segments,
            vec![
                Segment {
                    slot: 0,
                    start: 0,
                    len: 2
                },
                Segment {
                    slot: 2,
                    start: 2,
                    len: 1
                }
            ]
        );
        assert_eq!(part.last_rows, vec![1, 2]);
    }
}
