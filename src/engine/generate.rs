//! Generation: reuse the cached prefix, read the new prompt tokens in chunks,
//! then sample token by token, streaming text and honouring stop strings,
//! end-of-generation tokens, the token limit, the context and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::sampler::{Sampler, SamplingParams};
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
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 512,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
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
        let search_from = self.emitted.saturating_sub(self.max_stop_len());
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
            for (s, n, e) in &embeds {
                for t in (*s).max(first)..(s + n).min(stop) {
                    rows.push((t - first, &e[(t - s) * d..(t - s + 1) * d]));
                }
            }
            let input = Input {
                tokens: &tokens[at..end],
                pos: first,
                positions: positions.map(|p| &p[at..end]),
                embeds: &rows,
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
        }
        self.cached_images
            .extend(images.iter().map(|&(s, img)| (s, img.hash)));
        Ok(last)
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
        let mut shared = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
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
        self.kv.truncate(shared);
        // A sliding-window layer may not hold what the prefix needs; then
        // the cache starts over.
        let shared = self.kv.len();
        self.cached.truncate(shared);
        self.cached_pos.truncate(shared);
        self.cached_images.retain(|&(s, _)| s < shared);
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
        };
        let fed = self.feed_prompt(
            &prompt[shared..],
            positions.as_deref().map(|p| &p[shared..]),
            &new_images,
            LogitsFor::Last,
            cancel,
        )?;
        let Some(mut logits) = fed else {
            result.prompt_secs = started.elapsed().as_secs_f64();
            return Ok(result);
        };
        result.prompt_secs = started.elapsed().as_secs_f64();
        self.speeds.prompt_tokens_per_sec = result.prompt_tokens_per_sec();

        let decode_start = Instant::now();
        let mut sampler = Sampler::new(params.sampling.clone());
        let tokenizer = self.tokenizer.clone();
        let tokenizer = &*tokenizer;
        let mut stream = TextStream::new(tokenizer);
        let mut filter = StopFilter {
            stops: &params.stop,
            text: String::new(),
            emitted: 0,
        };
        let finish = loop {
            if cancel.load(Ordering::Relaxed) {
                break FinishReason::Cancelled;
            }
            if result.generated_tokens.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            let token = sampler.sample(&mut logits, &self.cached);
            if !params.ignore_eos && tokenizer.is_end_of_generation(token) {
                break FinishReason::EndOfGeneration;
            }
            result.generated_tokens.push(token);
            let piece = stream.push(token)?;
            let (shown, stopped) = filter.push(&piece);
            if !shown.is_empty() {
                on_text(&shown);
            }
            if stopped {
                break FinishReason::Stop;
            }
            if result.generated_tokens.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            if self.cached.len() + 1 >= context {
                break FinishReason::ContextFull;
            }
            let pos = self.cached.len();
            // Generated text continues one past the largest position so far.
            let next = (!self.cached_pos.is_empty()).then(|| [self.next_position(); 3]);
            let rope = next.as_ref().map(std::slice::from_ref);
            let input = Input {
                tokens: std::slice::from_ref(&token),
                pos,
                positions: rope,
                embeds: &[],
            };
            let out = self.step_input(input, LogitsFor::Last)?;
            logits.copy_from_slice(out);
            self.cached.push(token);
            if let Some(p) = next {
                self.cached_pos.push(p);
            }
            let steps = result.generated_tokens.len();
            self.speeds.decode_tokens_per_sec = rate(steps, decode_start.elapsed().as_secs_f64());
        };
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

    #[test]
    fn multibyte_text_is_safe() {
        let (_, text, stopped) = run(&["é!"], &["café", "é", "!"]);
        assert!(stopped);
        assert_eq!(text, "café");
    }
}
