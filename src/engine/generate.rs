//! Generation: reuse the cached prefix, read the new prompt tokens in chunks,
//! then sample token by token, streaming text and honouring stop strings,
//! end-of-generation tokens, the token limit, the context and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::sampler::{Sampler, SamplingParams};

use super::speculative::{Proposal, Speculation, MAX_DRAFT};
use crate::model::transformer::{Input, LogitsFor};
use crate::weights::tokenizer::TextStream;

use super::vision::{Prompt, PromptImage};
use super::{Engine, EngineError, PROMPT_CHUNK};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks, parity checks).
    pub ignore_eos: bool,
    /// Use the engine's drafter, when it has one.
    pub speculative: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 512,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            speculative: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    EndOfGeneration,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    ContextFull,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::EndOfGeneration => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    /// Prompt tokens served from the KV cache of earlier turns.
    pub reused_tokens: usize,
    pub generated_tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_secs: f64,
    pub decode_secs: f64,
    /// Speculative decoding: tokens drafted and accepted, and the model's
    /// forward passes while decoding.
    pub draft_proposed: usize,
    pub draft_accepted: usize,
    pub passes: usize,
    /// Seconds spent drafting (included in `decode_secs`).
    pub draft_secs: f64,
}

impl Generation {
    /// Prompt tokens actually computed per second.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(
            self.prompt_tokens.len() - self.reused_tokens,
            self.prompt_secs,
        )
    }

    /// Tokens per second after the first (each needs one forward pass).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(
            self.generated_tokens.len().saturating_sub(1),
            self.decode_secs,
        )
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Holds back text that might be the start of a stop string.
struct StopFilter<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl StopFilter<'_> {
    /// Appends `piece`; returns the text safe to show now and whether a stop
    /// string was found (the text is then cut before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        let mut search_from = self.emitted.saturating_sub(self.max_stop_len());
        // Back to a character's start: the text before may be multi-byte.
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            return (self.take(at.max(self.emitted)), true);
        }
        // Keep back the longest tail that could still grow into a stop string.
        let mut safe = self.text.len();
        for s in self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    safe = safe.min(self.text.len() - i);
                }
            }
        }
        (self.take(safe.max(self.emitted)), false)
    }

    fn take(&mut self, upto: usize) -> String {
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }

    fn flush(&mut self) -> String {
        self.take(self.text.len())
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

impl Engine {
    /// Runs `tokens` at the end of the cache in chunks and returns the last
    /// position's logits. Cancellation is checked between chunks.
    pub fn feed(
        &mut self,
        tokens: &[u32],
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        // New text continues one past the largest cached position.
        let positions: Option<Vec<[u32; 3]>> = self.model.hp.is_multimodal().then(|| {
            let next = self.next_position();
            (next..).take(tokens.len()).map(|i| [i; 3]).collect()
        });
        self.feed_prompt(tokens, positions.as_deref(), &[], LogitsFor::Last, cancel)
    }

    /// One past the largest rotary position in the cache (vision-language
    /// models; 0 for an empty cache).
    fn next_position(&self) -> u32 {
        self.cached_pos
            .last()
            .and_then(|p| p.iter().max())
            .map_or(0, |m| m + 1)
    }

    /// Runs `tokens` (with their rotary `positions`, when the model has
    /// them) after the cache in chunks, the embeddings of `images` (each
    /// with the absolute index of its first token) in place of their
    /// tokens, and returns the last position's logits; with
    /// `LogitsFor::All`, the logits of every position, in order.
    pub(super) fn feed_prompt(
        &mut self,
        tokens: &[u32],
        positions: Option<&[[u32; 3]]>,
        images: &[(usize, &PromptImage)],
        want: LogitsFor,
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let from = self.cached.len();
        let merge = self.vision().map_or(2, |v| v.processor.merge_size);
        let mut embeds = Vec::with_capacity(images.len());
        for &(start, img) in images {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            embeds.push((
                start,
                img.prepared.tokens(merge),
                self.image_embeddings(img)?,
            ));
        }
        let d = self.model.hp.n_embd;
        let mut last: Option<Vec<f32>> = None;
        let mut at = 0;
        while at < tokens.len() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let end = (at + PROMPT_CHUNK).min(tokens.len());
            let (first, stop) = (from + at, from + end);
            let mut rows: Vec<(usize, &[f32])> = Vec::new();
            let mut deepstack: Vec<(usize, usize, &[f32])> = Vec::new();
            for (s, n, e) in &embeds {
                // The embeddings, then one block per DeepStack layer.
                let levels = e.len() / (n * d).max(1);
                for t in (*s).max(first)..(s + n).min(stop) {
                    let row = |level: usize| {
                        let at = level * n * d + (t - s) * d;
                        &e[at..at + d]
                    };
                    rows.push((t - first, row(0)));
                    for level in 1..levels {
                        deepstack.push((level - 1, t - first, row(level)));
                    }
                }
            }
            let input = Input {
                tokens: &tokens[at..end],
                pos: first,
                positions: positions.map(|p| &p[at..end]),
                embeds: &rows,
                deepstack: &deepstack,
            };
            let logits = self.step_input(input, want)?;
            match (want, &mut last) {
                (LogitsFor::All, Some(all)) => all.extend_from_slice(logits),
                _ => last = Some(logits.to_vec()),
            }
            self.cached.extend_from_slice(&tokens[at..end]);
            if let Some(p) = positions {
                self.cached_pos.extend_from_slice(&p[at..end]);
            }
            at = end;
            if tokens.len() > PROMPT_CHUNK {
                if let Some(report) = self.prompt_progress.as_mut() {
                    report(at, tokens.len());
                }
            }
        }
        self.cached_images
            .extend(images.iter().map(|&(s, img)| (s, img.hash)));
        Ok(last)
    }

    /// Sets (or clears) what hears of a long prompt's progress: tokens
    /// computed and tokens in all, after each chunk.
    pub fn on_prompt_progress(&mut self, report: Option<Box<dyn FnMut(usize, usize) + Send>>) {
        self.prompt_progress = report;
    }

    /// Generates a reply to `prompt` (the whole conversation as tokens). The
    /// longest prefix already in the KV cache is reused, so a new turn only
    /// computes its new tokens. `on_text` receives text as it is decoded.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        self.generate_prompt(&Prompt::text(prompt.to_vec()), params, cancel, on_text)
    }

    /// [`Engine::generate`] for a prompt that may hold images.
    pub fn generate_prompt(
        &mut self,
        full: &Prompt,
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let prompt = full.tokens.as_slice();
        let context = self.context_length();
        if prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= context {
            return Err(EngineError::ContextExceeded {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        let positions = self.prompt_positions(full)?;
        // Reuse the shared prefix, but always recompute the last prompt token:
        // its logits start the reply. A prefix ends before the first image
        // that is not the one cached there (image tokens all look alike).
        let mut shared = self.shared_prefix(prompt);
        let merge = self.vision().map_or(2, |v| v.processor.merge_size);
        let starts = self.image_starts(full);
        for (k, (&start, img)) in starts.iter().zip(&full.images).enumerate() {
            if start >= shared {
                break;
            }
            let same = self.cached_images.get(k) == Some(&(start, img.hash));
            if !same || start + img.prepared.tokens(merge) > shared {
                shared = start;
                break;
            }
        }
        // A sliding-window layer may not hold what the prefix needs; then
        // the cache starts over.
        let shared = self.rewind(shared);
        // The images still to compute: those at or after the cut.
        let new_images: Vec<(usize, &PromptImage)> = starts
            .iter()
            .copied()
            .zip(&full.images)
            .filter(|&(s, _)| s >= shared)
            .collect();

        let started = Instant::now();
        let mut result = Generation {
            prompt_tokens: prompt.to_vec(),
            reused_tokens: shared,
            generated_tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Cancelled,
            prompt_secs: 0.0,
            decode_secs: 0.0,
            draft_proposed: 0,
            draft_accepted: 0,
            passes: 0,
            draft_secs: 0.0,
        };
        let fed = self.feed_prompt(
            &prompt[shared..],
            positions.as_deref().map(|p| &p[shared..]),
            &new_images,
            LogitsFor::Last,
            cancel,
        )?;
        let Some(logits) = fed else {
            result.prompt_secs = started.elapsed().as_secs_f64();
            return Ok(result);
        };
        let target_secs = started.elapsed().as_secs_f64();
        // A draft model reads the prompt too, now: its time is the prompt's,
        // not the reply's.
        let text_only = full.images.is_empty();
        if params.speculative && text_only {
            if let Some(sp) = self.spec.as_deref_mut() {
                sp.prefill(prompt, cancel)?;
            }
        }
        result.prompt_secs = started.elapsed().as_secs_f64();
        self.speeds.prompt_tokens_per_sec = rate(prompt.len() - shared, target_secs);

        let decode_start = Instant::now();
        let tokenizer = self.tokenizer.clone();
        let mut em = Emitter {
            params,
            tokenizer: &tokenizer,
            stream: TextStream::new(&tokenizer),
            filter: StopFilter {
                stops: &params.stop,
                text: String::new(),
                emitted: 0,
            },
            generated: Vec::new(),
            on_text,
        };
        // The drafter is moved out while decoding (it may be a second
        // engine) and put back whatever happens.
        let mut spec = if params.speculative {
            self.spec.take()
        } else {
            None
        };
        if let Some(sp) = spec.as_deref_mut() {
            let computed = prompt.len() - shared;
            if computed >= 16 {
                sp.set_prompt_rate(target_secs / computed as f64);
            }
        }
        let decoded = self.decode(
            logits,
            &mut em,
            spec.as_deref_mut(),
            text_only,
            decode_start,
            cancel,
        );
        if spec.is_some() {
            self.spec = spec;
        }
        let (finish, stats) = decoded?;
        result.draft_proposed = stats.proposed;
        result.draft_accepted = stats.accepted;
        result.passes = stats.passes;
        result.draft_secs = stats.draft_secs;
        result.generated_tokens = std::mem::take(&mut em.generated);
        let on_text = em.on_text;
        let mut filter = em.filter;
        if finish != FinishReason::Stop {
            let rest = filter.flush();
            if !rest.is_empty() {
                on_text(&rest);
            }
        }
        result.text = filter.text;
        result.finish = finish;
        result.decode_secs = decode_start.elapsed().as_secs_f64();
        Ok(result)
    }
}

/// Turns decided tokens into text: end-of-generation, stop strings and the
/// token limit end the reply.
struct Emitter<'a, 'b> {
    params: &'a GenerateParams,
    tokenizer: &'a crate::weights::tokenizer::TextTokenizer,
    stream: TextStream<'a>,
    filter: StopFilter<'a>,
    generated: Vec<u32>,
    on_text: &'b mut dyn FnMut(&str),
}

impl Emitter<'_, '_> {
    /// Adds `token` to the reply; returns why the reply ends, if it does.
    fn emit(&mut self, token: u32) -> Result<Option<FinishReason>, EngineError> {
        if !self.params.ignore_eos && self.tokenizer.is_end_of_generation(token) {
            return Ok(Some(FinishReason::EndOfGeneration));
        }
        self.generated.push(token);
        let piece = self.stream.push(token)?;
        let (shown, stopped) = self.filter.push(&piece);
        if !shown.is_empty() {
            (self.on_text)(&shown);
        }
        if stopped {
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated.len() >= self.params.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }
}

/// What a reply's decoding did.
#[derive(Debug, Default, Clone, Copy)]
struct DecodeStats {
    proposed: usize,
    accepted: usize,
    passes: usize,
    draft_secs: f64,
}

impl Engine {
    /// Decodes from the prompt's last `logits` until the reply ends. With a
    /// drafter, each token decided is followed by a draft checked in the
    /// same pass as that token; without one (or when drafting does not
    /// pay), one token a pass.
    fn decode(
        &mut self,
        mut logits: Vec<f32>,
        em: &mut Emitter<'_, '_>,
        mut spec: Option<&mut Speculation>,
        text_only: bool,
        decode_start: Instant,
        cancel: &AtomicBool,
    ) -> Result<(FinishReason, DecodeStats), EngineError> {
        let context = self.context_length();
        let params = em.params;
        let mut sampler = Sampler::new(params.sampling.clone());
        let mut draft_sampler = Sampler::new(SamplingParams {
            seed: params.sampling.seed ^ 0x5eed_d4af,
            ..params.sampling.clone()
        });
        let mut stats = DecodeStats::default();
        let vocab = self.model.hp.n_vocab;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok((FinishReason::Cancelled, stats));
            }
            if em.generated.len() >= params.max_tokens {
                return Ok((FinishReason::Length, stats));
            }
            let mut token = sampler.sample(&mut logits, &self.cached);
            if let Some(f) = em.emit(token)? {
                return Ok((f, stats));
            }
            // `token` is decided and shown; it is fed next, with a draft
            // after it when there is one, until a pass leaves no decided
            // token to feed.
            loop {
                if self.cached.len() + 1 >= context {
                    return Ok((FinishReason::ContextFull, stats));
                }
                let base = self.cached.len();
                // A draft never runs past the context or the token limit
                // (the last token of a round is the model's own).
                let cap = MAX_DRAFT
                    .min(context.saturating_sub(base + 2))
                    .min(params.max_tokens.saturating_sub(em.generated.len() + 1));
                let draft_start = Instant::now();
                let proposal = match spec.as_deref_mut() {
                    Some(sp) => match sp.draft_len(cap) {
                        0 => Proposal::default(),
                        k => {
                            // The context with `token` after it, for the
                            // drafter to read (taken off again at once).
                            self.cached.push(token);
                            let p = sp.propose(
                                &self.cached,
                                k,
                                text_only,
                                &mut draft_sampler,
                                vocab,
                                cancel,
                            );
                            self.cached.pop();
                            p?
                        }
                    },
                    None => Proposal::default(),
                };
                stats.draft_secs += draft_start.elapsed().as_secs_f64();
                let pass_start = Instant::now();
                if proposal.tokens.is_empty() {
                    self.feed_one(token, &mut logits)?;
                    stats.passes += 1;
                    if let Some(sp) = spec.as_deref_mut() {
                        sp.observe_pass(1, pass_start.elapsed().as_secs_f64());
                    }
                    self.speeds.decode_tokens_per_sec =
                        rate(em.generated.len(), decode_start.elapsed().as_secs_f64());
                    break;
                }
                let nd = proposal.tokens.len();
                let mut batch = Vec::with_capacity(nd + 1);
                batch.push(token);
                batch.extend_from_slice(&proposal.tokens);
                let positions: Option<Vec<[u32; 3]>> = (!self.cached_pos.is_empty()).then(|| {
                    let next = self.next_position();
                    (next..).take(nd + 1).map(|i| [i; 3]).collect()
                });
                let Some(mut rows) =
                    self.feed_prompt(&batch, positions.as_deref(), &[], LogitsFor::All, cancel)?
                else {
                    self.rewind(base);
                    return Ok((FinishReason::Cancelled, stats));
                };
                stats.passes += 1;
                let sp = spec
                    .as_deref_mut()
                    .expect("a proposal comes from a drafter");
                sp.observe_pass(nd + 1, pass_start.elapsed().as_secs_f64());
                // Check the draft token by token against the model's own
                // choice at each position.
                let mut accepted = 0;
                let mut finish = None;
                let mut next = None;
                for (i, row) in rows.chunks_exact_mut(vocab).enumerate() {
                    let recent = &self.cached[..base + 1 + i];
                    let (t, ok) = match (proposal.tokens.get(i), sp.forced.as_mut()) {
                        (Some(&d), None) => {
                            sampler.verify(row, recent, d, proposal.q[i].as_deref())
                        }
                        // A benchmark's forced acceptance (random weights).
                        (Some(&d), Some((rate, dice))) => {
                            if rand::Rng::random::<f64>(dice) < *rate {
                                (d, true)
                            } else {
                                (sampler.sample(row, recent), false)
                            }
                        }
                        (None, _) => (sampler.sample(row, recent), false),
                    };
                    if let Some(f) = em.emit(t)? {
                        finish = Some(f);
                        break;
                    }
                    if !ok {
                        next = Some(t);
                        break;
                    }
                    accepted += 1;
                }
                sp.observe_round(nd, accepted);
                stats.proposed += nd;
                stats.accepted += accepted;
                // Keep the decided token and the accepted draft; the rest of
                // the pass is rolled back (the cache just forgets it).
                let keep = base + 1 + accepted;
                self.kv.truncate(keep);
                let kept = self.kv.len();
                if kept < keep {
                    // A sliding window no longer holds what the kept
                    // tokens need (it keeps two prompt chunks of history,
                    // so this takes a pass that moved it): recompute them.
                    let multimodal = !self.cached_pos.is_empty();
                    if !self.cached_images.is_empty() || multimodal && kept > 0 {
                        return Err(EngineError::Invalid(
                            "the sliding-window cache could not roll back a draft".into(),
                        ));
                    }
                    let redo = self.cached[kept..keep].to_vec();
                    let redo_pos = self.cached_pos.get(kept..keep).map(<[_]>::to_vec);
                    self.rewind(kept);
                    if self
                        .feed_prompt(&redo, redo_pos.as_deref(), &[], LogitsFor::Last, cancel)?
                        .is_none()
                    {
                        return Ok((FinishReason::Cancelled, stats));
                    }
                } else {
                    self.rewind(keep);
                }
                self.speeds.decode_tokens_per_sec =
                    rate(em.generated.len(), decode_start.elapsed().as_secs_f64());
                if let Some(f) = finish {
                    return Ok((f, stats));
                }
                match next {
                    Some(t) => token = t,
                    None => unreachable!("a round ends with the model's own token"),
                }
                if cancel.load(Ordering::Relaxed) {
                    return Ok((FinishReason::Cancelled, stats));
                }
            }
        }
    }

    /// Feeds one decided token after the cache (the decode step); its
    /// logits go to `logits`.
    fn feed_one(&mut self, token: u32, logits: &mut [f32]) -> Result<(), EngineError> {
        let pos = self.cached.len();
        // Generated text continues one past the largest position so far.
        let next = (!self.cached_pos.is_empty()).then(|| [self.next_position(); 3]);
        let rope = next.as_ref().map(std::slice::from_ref);
        let input = Input {
            tokens: std::slice::from_ref(&token),
            pos,
            positions: rope,
            embeds: &[],
            deepstack: &[],
        };
        logits.copy_from_slice(self.step_input(input, LogitsFor::Last)?);
        self.cached.push(token);
        if let Some(p) = next {
            self.cached_pos.push(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        let mut out = Vec::new();
        for p in pieces {
            let (shown, stop) = f.push(p);
            out.push(shown);
            if stop {
                return (out, f.text, true);
            }
        }
        out.push(f.flush());
        (out, f.text, false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_held_back_and_cut() {
        let (shown, text, stopped) = run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]);
        assert!(stopped);
        assert_eq!(text, "Hello");
        assert_eq!(shown.concat(), "Hello");
        assert_eq!(shown[1], "", "the partial stop must not be shown");
    }

    #[test]
    fn near_miss_is_released() {
        let (shown, text, stopped) = run(&["END!"], &["the E", "ND", "S x"]);
        assert!(!stopped);
        assert_eq!(text, "the ENDS x");
        assert_eq!(shown.concat(), "the ENDS x");
    }

    /// A long multi-byte text before a short stop string: the search
    /// starts a stop's length back, which can fall inside a character.
    #[test]
    fn a_search_start_inside_a_character_moves_back() {
        let (shown, text, stopped) = run(
            &["</score>"],
            &["<score>", "+35", "％", "\u{fffd}", "x", "</score>"],
        );
        assert!(stopped);
        assert_eq!(text, "<score>+35％\u{fffd}x");
        assert_eq!(shown.concat(), text);
        // "xéx" is 4 bytes: a 2-byte stop's search starts at byte 2, the
        // middle of the é.
        let (shown, text, stopped) = run(&["ab"], &["xéx", "a", "b"]);
        assert!(stopped);
        assert_eq!(text, "xéx");
        assert_eq!(shown.concat(), "xéx");
    }

    #[test]
    fn multibyte_text_is_safe() {
        let (_, text, stopped) = run(&["é!"], &["café", "é", "!"]);
        assert!(stopped);
        assert_eq!(text, "café");
    }
}
