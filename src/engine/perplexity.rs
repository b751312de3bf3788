//! Perplexity the way llama.cpp's `llama-perplexity` computes it, so the two
//! figures compare directly: the text is tokenized once (with BOS when the
//! model adds one), cut into non-overlapping chunks of `ctx` tokens whose
//! first token becomes BOS, and only the second half of each chunk is scored.

use std::sync::atomic::AtomicBool;

use crate::model::transformer::{log_softmax_at, LogitsFor};

use super::{Engine, EngineError, PROMPT_CHUNK};

#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub ctx: usize,
    /// Running perplexity after each chunk.
    pub per_chunk: Vec<f64>,
}

impl Engine {
    /// The logits at every position of `tokens` (row-major, one row of
    /// `n_vocab` per token), from an empty cache: for parity checks against
    /// a reference implementation.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.logits_in_passes(tokens, PROMPT_CHUNK)
    }

    /// [`Engine::logits_all`] with passes of `step` tokens (1: as decoding
    /// runs), from an empty cache.
    pub fn logits_in_passes(
        &mut self,
        tokens: &[u32],
        step: usize,
    ) -> Result<Vec<f32>, EngineError> {
        if step == 0 || step > PROMPT_CHUNK {
            return Err(EngineError::Invalid(format!(
                "passes of {step} tokens (1 to {PROMPT_CHUNK})"
            )));
        }
        self.reset();
        let mut out = Vec::with_capacity(tokens.len() * self.model.hp.n_vocab);
        for (i, chunk) in tokens.chunks(step).enumerate() {
            let logits = self.step(chunk, i * step, LogitsFor::All)?;
            out.extend_from_slice(logits);
        }
        self.reset();
        Ok(out)
    }

    /// The experts each token of the last forward pass was routed to, per
    /// layer (`tokens × n_expert_used`, most probable first); empty for
    /// dense models.
    pub fn last_routes(&self) -> &[Vec<u32>] {
        &self.scratch.routes
    }

    /// Tokens each layer's experts served since the model was loaded
    /// (`n_layer × n_expert`; empty for dense models).
    pub fn expert_tokens(&self) -> &[Vec<u64>] {
        &self.scratch.expert_tokens
    }

    /// The share of routed tokens the busiest tenth of each layer's experts
    /// took (0.1 when routing is uniform), over all layers.
    pub fn busiest_tenth_share(&self) -> Option<f64> {
        let (mut top, mut all) = (0u64, 0u64);
        for counts in &self.scratch.expert_tokens {
            let mut c = counts.clone();
            c.sort_unstable_by(|a, b| b.cmp(a));
            top += c.iter().take(c.len().div_ceil(10)).sum::<u64>();
            all += c.iter().sum::<u64>();
        }
        (all > 0).then(|| top as f64 / all as f64)
    }

    /// `chunks = None` scores every whole chunk of the text.
    pub fn perplexity(
        &mut self,
        text: &str,
        ctx: usize,
        chunks: Option<usize>,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Perplexity, EngineError> {
        if ctx < 4 {
            return Err(EngineError::Invalid(format!(
                "--ctx {ctx} is too small (at least 4)"
            )));
        }
        if ctx > self.context_length() {
            return Err(EngineError::ContextExceeded {
                prompt_tokens: ctx,
                context: self.context_length(),
            });
        }
        let tokens = self.text_tokens(text)?;
        let available = tokens.len() / ctx;
        let n_chunks = chunks.map_or(available, |c| c.min(available));
        if n_chunks == 0 {
            return Err(EngineError::Invalid(format!(
                "the text has {} tokens, fewer than one chunk of {ctx}",
                tokens.len()
            )));
        }
        let bos = self
            .tokenizer
            .special
            .add_bos
            .then(|| self.tokenizer.special.bos.as_ref().map(|b| b.0))
            .flatten();
        let first = ctx / 2;
        let mut nll = 0.0f64;
        let mut count = 0usize;
        let mut per_chunk = Vec::with_capacity(n_chunks);
        self.reset();
        for c in 0..n_chunks {
            let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            self.reset();
            for (b, batch) in chunk.chunks(PROMPT_CHUNK).enumerate() {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    self.reset();
                    return Err(EngineError::Invalid("cancelled".into()));
                }
                let pos = b * PROMPT_CHUNK;
                let vocab = self.model.hp.n_vocab;
                let logits = self.step(batch, pos, LogitsFor::All)?;
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    let p = pos + j;
                    if p >= first && p + 1 < ctx {
                        nll -= log_softmax_at(row, chunk[p + 1] as usize);
                        count += 1;
                    }
                }
                self.cached.extend_from_slice(batch);
            }
            per_chunk.push((nll / count as f64).exp());
            progress(c + 1, n_chunks);
        }
        self.reset();
        Ok(Perplexity {
            ppl: (nll / count as f64).exp(),
            chunks: n_chunks,
            scored_tokens: count,
            ctx,
            per_chunk,
        })
    }
}
