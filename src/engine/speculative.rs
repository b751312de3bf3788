//! Speculative decoding: a cheap drafter proposes the next few tokens, the
//! model checks them all in one batched pass (every weight, and every disk
//! layer, read once for all of them), and keeps the longest prefix its own
//! sampling agrees with, plus one token of its own. Greedy output is token
//! for token what one-token decoding gives (the host kernels compute a
//! token's row with the same bits in any batch up to
//! [`BATCH_INVARIANT_ROWS`]); sampled output follows the same distribution
//! (the acceptance rule of `Sampler::verify`).
//!
//! Drafters: prompt lookup (the continuation of the latest earlier
//! occurrence of the last few tokens — free, good at edits and quotes), a
//! draft model with the same vocabulary, and a self-draft (the same model
//! quantized lower, made once from the loaded file into the cache). The
//! number of tokens drafted each round follows the measured acceptance and
//! the measured cost of a pass: a pass of `n` tokens costs about `a + b·n`,
//! where `a` (reading the weights: large when layers sit on disk) is paid
//! once, so the more the placement is bound by reading weights, the more
//! tokens a pass checks.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::kernels::matmul::BATCH_INVARIANT_ROWS;
use crate::model::sampler::Sampler;
use crate::placement::{Mode, Quant, Tier};

use super::{Engine, EngineError, LoadOptions, Notice};

/// The most tokens one verification pass drafts.
pub const MAX_DRAFT: usize = BATCH_INVARIANT_ROWS - 1;

/// Default draft length cap.
pub const DEFAULT_DRAFT: usize = 8;

/// Rounds between probes while drafting does not pay: at first, and at
/// most (the interval doubles after each probe).
const PROBE_FIRST: usize = 16;
const PROBE_LAST: usize = 256;

/// Default longest n-gram prompt lookup matches.
pub const DEFAULT_NGRAM: usize = 3;

/// Which drafter, as the user asks for it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Drafting {
    #[default]
    Off,
    /// Prompt lookup with n-grams up to this long.
    Lookup(usize),
    /// A draft model with the same vocabulary.
    Model(PathBuf),
    /// The loaded model quantized lower.
    SelfDraft(Quant),
}

impl Drafting {
    pub fn label(&self) -> &'static str {
        match self {
            Drafting::Off => "off",
            Drafting::Lookup(_) => "prompt lookup",
            Drafting::Model(_) => "draft model",
            Drafting::SelfDraft(_) => "self-draft",
        }
    }
}

/// Speculative decoding as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecOptions {
    pub drafting: Drafting,
    /// The most tokens a round drafts (1..=[`MAX_DRAFT`]).
    pub max_draft: usize,
    /// Where a self-draft is cached (default: the converted-model cache).
    pub cache_dir: Option<PathBuf>,
    /// Always draft `max_draft` tokens (no adapting): tests and the
    /// benchmark of a pass's cost per draft length.
    pub fixed: bool,
    /// Benchmarks of random-weight models only: each drafted token is
    /// accepted with this probability whatever the model says (the output
    /// is then not the model's), to measure the mechanics at a chosen
    /// acceptance rate.
    pub forced_acceptance: Option<f64>,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            drafting: Drafting::Off,
            max_draft: DEFAULT_DRAFT,
            cache_dir: None,
            fixed: false,
            forced_acceptance: None,
        }
    }
}

/// What the window and `plan` show of the drafter.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecInfo {
    pub drafting: Drafting,
    /// A draft model's file name, weight bytes and the tier it runs in.
    pub draft: Option<DraftInfo>,
    pub max_draft: usize,
    /// Drafted and accepted tokens since the drafter was set up.
    pub proposed: u64,
    pub accepted: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DraftInfo {
    pub name: String,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub tier: Tier,
}

impl SpecInfo {
    pub fn acceptance(&self) -> Option<f64> {
        (self.proposed > 0).then(|| self.accepted as f64 / self.proposed as f64)
    }
}

pub(super) enum Drafter {
    Lookup { ngram: usize },
    Model(Box<Engine>),
}

/// The next tokens a drafter proposes, each with the distribution it was
/// drawn from (`None`: the drafter always proposes it).
#[derive(Debug, Default)]
pub(super) struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Option<Vec<(u32, f32)>>>,
}

pub struct Speculation {
    pub(super) drafter: Drafter,
    pub(super) drafting: Drafting,
    pub(super) max_draft: usize,
    fixed: bool,
    /// See [`SpecOptions::forced_acceptance`]: the rate and its dice.
    pub(super) forced: Option<(f64, rand::rngs::StdRng)>,
    costs: Costs,
    /// Decayed counts of drafted tokens checked and accepted.
    checked: f64,
    accepted: f64,
    /// Rounds since the last probe while drafting looked unprofitable,
    /// and the rounds between probes (doubling while they keep failing).
    idle_rounds: usize,
    probe_every: usize,
    pub(super) total_proposed: u64,
    pub(super) total_accepted: u64,
}

/// Measured costs: target passes by their token count, drafting per token.
#[derive(Debug, Default)]
struct Costs {
    /// Decayed sums for a least-squares line `secs = a + b·n`.
    w: f64,
    sn: f64,
    snn: f64,
    st: f64,
    snt: f64,
    /// Seconds per token of a batched pass, from the prompt (a prior for
    /// `b` until passes of several sizes are seen).
    prior_b: Option<f64>,
    draft_secs: f64,
    draft_tokens: f64,
}

const DECAY: f64 = 0.9;

impl Costs {
    fn observe(&mut self, n: usize, secs: f64) {
        let n = n as f64;
        self.w = self.w * DECAY + 1.0;
        self.sn = self.sn * DECAY + n;
        self.snn = self.snn * DECAY + n * n;
        self.st = self.st * DECAY + secs;
        self.snt = self.snt * DECAY + n * secs;
    }

    fn observe_draft(&mut self, tokens: usize, secs: f64) {
        self.draft_secs = self.draft_secs * DECAY + secs;
        self.draft_tokens = self.draft_tokens * DECAY + tokens as f64;
    }

    /// (a, b) of `secs = a + b·n`, once any pass was seen.
    fn line(&self) -> Option<(f64, f64)> {
        if self.w <= 0.0 {
            return None;
        }
        let mean_n = self.sn / self.w;
        let mean_t = self.st / self.w;
        let var = self.snn / self.w - mean_n * mean_n;
        let b = if var > 0.25 {
            ((self.snt / self.w - mean_n * mean_t) / var).max(0.0)
        } else {
            self.prior_b.unwrap_or(0.1 * mean_t / mean_n.max(1.0))
        };
        let b = b.min(mean_t / mean_n.max(1.0));
        Some(((mean_t - b * mean_n).max(0.0), b))
    }

    fn draft_per_token(&self) -> f64 {
        if self.draft_tokens > 0.0 {
            self.draft_secs / self.draft_tokens
        } else {
            0.0
        }
    }
}

/// Tokens a round yields on average when each drafted token is accepted
/// with probability `alpha` and `k` are drafted: 1 + α + … + α^k.
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    (0..=k).map(|i| alpha.powi(i as i32)).sum()
}

/// The draft length that gives the most tokens per second for a pass
/// costing `a + b·n` seconds over `n` tokens, drafting at `c` seconds a
/// token, and acceptance `alpha`; 0 when drafting does not pay.
pub fn best_draft_len(alpha: f64, a: f64, b: f64, c: f64, max: usize) -> usize {
    let rate = |k: usize| expected_tokens(alpha, k) / (a + b * (k + 1) as f64 + c * k as f64);
    (0..=max)
        .max_by(|&x, &y| rate(x).total_cmp(&rate(y)).then(y.cmp(&x)))
        .unwrap_or(0)
}

/// The mode a draft model is placed in, after a model placed in `model`:
/// the fastest tier left (the model's own caps and modes are its own),
/// except that a CPU-only model gets a CPU-only draft.
pub fn draft_mode(model: Mode) -> Mode {
    match model {
        Mode::CpuOnly => Mode::CpuOnly,
        _ => Mode::Auto,
    }
}

/// Prompt lookup: the tokens that followed the latest earlier occurrence
/// of the context's last `n` tokens, for the longest `n ≤ ngram` that
/// occurs, at most `k`.
pub fn lookup(ctx: &[u32], ngram: usize, k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    for n in (1..=ngram).rev() {
        if ctx.len() <= n {
            continue;
        }
        let tail = &ctx[ctx.len() - n..];
        for i in (0..ctx.len() - n).rev() {
            if &ctx[i..i + n] == tail {
                return ctx[i + n..].iter().take(k).copied().collect();
            }
        }
    }
    Vec::new()
}

impl Speculation {
    fn new(drafter: Drafter, opts: &SpecOptions) -> Self {
        use rand::SeedableRng;
        Speculation {
            drafter,
            drafting: opts.drafting.clone(),
            max_draft: opts.max_draft.clamp(1, MAX_DRAFT),
            fixed: opts.fixed,
            forced: opts
                .forced_acceptance
                .map(|r| (r.clamp(0.0, 1.0), rand::rngs::StdRng::seed_from_u64(7))),
            costs: Costs::default(),
            // A prior of one accepted in two.
            checked: 2.0,
            accepted: 1.0,
            idle_rounds: 0,
            probe_every: PROBE_FIRST,
            total_proposed: 0,
            total_accepted: 0,
        }
    }

    /// The acceptance rate measured so far (decayed).
    pub fn alpha(&self) -> f64 {
        (self.accepted / self.checked).clamp(0.0, 0.98)
    }

    pub(super) fn set_prompt_rate(&mut self, secs_per_token: f64) {
        if secs_per_token.is_finite() && secs_per_token > 0.0 {
            self.costs.prior_b = Some(secs_per_token);
        }
    }

    pub(super) fn observe_pass(&mut self, n: usize, secs: f64) {
        self.costs.observe(n, secs);
    }

    /// Records a round: `proposed` drafted, `accepted` of them kept, and
    /// whether one was refused (the tokens checked).
    pub(super) fn observe_round(&mut self, proposed: usize, accepted: usize) {
        let checked = (accepted + usize::from(accepted < proposed)) as f64;
        self.checked = self.checked * DECAY + checked;
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.total_proposed += proposed as u64;
        self.total_accepted += accepted as u64;
    }

    /// How many tokens to draft now, at most `cap`.
    pub(super) fn draft_len(&mut self, cap: usize) -> usize {
        let max = self.max_draft.min(cap);
        if max == 0 || self.fixed {
            return max;
        }
        let Some((a, b)) = self.costs.line() else {
            return max.min(4);
        };
        let c = self.costs.draft_per_token();
        let k = best_draft_len(self.alpha(), a, b, c, max);
        if k > 0 {
            self.idle_rounds = 0;
            self.probe_every = PROBE_FIRST;
            return k;
        }
        // Drafting looks unprofitable. When even drafts that are always
        // right would not pay (a draft as slow as the model), never probe;
        // otherwise probe now and then, less often while probes fail, so a
        // change (a repetitive stretch of text) is noticed.
        if best_draft_len(0.98, a, b, c, max) == 0 {
            return 0;
        }
        self.idle_rounds += 1;
        if self.idle_rounds >= self.probe_every {
            self.idle_rounds = 0;
            self.probe_every = (self.probe_every * 2).min(PROBE_LAST);
            return 1;
        }
        0
    }

    /// Drafts up to `k` tokens to follow `ctx` (everything the model has
    /// seen, then the token about to be fed).
    pub(super) fn propose(
        &mut self,
        ctx: &[u32],
        k: usize,
        text_only: bool,
        draft_sampler: &mut Sampler,
        target_vocab: usize,
        cancel: &AtomicBool,
    ) -> Result<Proposal, EngineError> {
        let started = Instant::now();
        let p = match &mut self.drafter {
            Drafter::Lookup { ngram } => {
                let tokens = lookup(ctx, *ngram, k);
                Proposal {
                    q: vec![None; tokens.len()],
                    tokens,
                }
            }
            // A draft model sees text only; an image prompt is drafted by
            // nothing (its image tokens would mean nothing to it).
            Drafter::Model(_) if !text_only => Proposal::default(),
            Drafter::Model(draft) => {
                draft_tokens(draft, ctx, k, draft_sampler, target_vocab, cancel)?
            }
        };
        self.costs
            .observe_draft(p.tokens.len().max(1), started.elapsed().as_secs_f64());
        Ok(p)
    }

    /// Brings a draft model's cache to the prompt `ctx` (reusing what it
    /// shares), so drafting the reply's first tokens reads one token.
    pub(super) fn prefill(&mut self, ctx: &[u32], cancel: &AtomicBool) -> Result<(), EngineError> {
        if let Drafter::Model(draft) = &mut self.drafter {
            if ctx.len() < draft.context_length() {
                let kept = draft.rewind_to_prefix(ctx);
                draft.feed(&ctx[kept..], cancel)?;
            }
        }
        Ok(())
    }

    pub(super) fn info(&self) -> SpecInfo {
        let draft = match &self.drafter {
            Drafter::Lookup { .. } => None,
            Drafter::Model(e) => {
                let p = e.placement();
                let tier = [Tier::Gpu, Tier::Ram, Tier::Disk]
                    .into_iter()
                    .max_by_key(|&t| p.count(t))
                    .unwrap_or(Tier::Ram);
                Some(DraftInfo {
                    name: e
                        .gguf
                        .path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    weight_bytes: p.weights.total(),
                    kv_bytes: p.kv.total(),
                    tier,
                })
            }
        };
        SpecInfo {
            drafting: self.drafting.clone(),
            draft,
            max_draft: self.max_draft,
            proposed: self.total_proposed,
            accepted: self.total_accepted,
        }
    }
}

/// A draft model's `k` tokens after `ctx`: its cache is brought to `ctx`
/// (reusing the shared prefix), then it decodes with its own sampler.
fn draft_tokens(
    draft: &mut Engine,
    ctx: &[u32],
    k: usize,
    sampler: &mut Sampler,
    target_vocab: usize,
    cancel: &AtomicBool,
) -> Result<Proposal, EngineError> {
    let mut out = Proposal::default();
    let room = draft.context_length().saturating_sub(ctx.len() + 1);
    let k = k.min(room);
    if k == 0 {
        return Ok(out);
    }
    let kept = draft.rewind_to_prefix(ctx);
    let Some(mut logits) = draft.feed(&ctx[kept..], cancel)? else {
        return Ok(out);
    };
    for i in 0..k {
        let (t, q) = sampler.sample_with_dist(&mut logits, draft.cached_tokens());
        if t as usize >= target_vocab {
            break;
        }
        out.tokens.push(t);
        out.q.push(q);
        if i + 1 < k {
            match draft.feed(&[t], cancel)? {
                Some(l) => logits = l,
                None => break,
            }
        }
    }
    Ok(out)
}

impl Engine {
    /// Sets up speculative decoding (or turns it off). A draft model is
    /// loaded now, after this model, into the fastest tier left: the RAM
    /// and VRAM this model holds are already taken when it is planned. A
    /// draft that would need the disk is refused: it would cost more than
    /// it saves.
    pub fn set_speculation(
        &mut self,
        opts: &SpecOptions,
        progress: &mut dyn FnMut(super::LoadStage),
    ) -> Result<Vec<Notice>, EngineError> {
        self.spec = None;
        let mut drafter = match &opts.drafting {
            Drafting::Off => return Ok(Vec::new()),
            Drafting::Lookup(n) => Drafter::Lookup {
                ngram: (*n).clamp(1, 8),
            },
            Drafting::Model(path) => Drafter::Model(Box::new(self.load_draft(path, progress)?)),
            Drafting::SelfDraft(quant) => {
                let src = self.gguf.path.clone();
                let path = crate::weights::convert::cached_requantized(
                    &src,
                    *quant,
                    opts.cache_dir.clone(),
                    &mut |done, total| {
                        progress(super::LoadStage::Quantizing { done, total });
                        Ok(())
                    },
                )
                .map_err(|e| EngineError::Invalid(format!("cannot make the self-draft: {e}")))?;
                Drafter::Model(Box::new(self.load_draft(&path, progress)?))
            }
        };
        let mut notices = Vec::new();
        if let Drafter::Model(d) = &mut drafter {
            notices.extend(d.take_notices());
        }
        let spec = Speculation::new(drafter, opts);
        self.spec = Some(Box::new(spec));
        Ok(notices)
    }

    fn load_draft(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(super::LoadStage),
    ) -> Result<Engine, EngineError> {
        let mut opts = LoadOptions::new(path);
        opts.context_length = Some(self.context_length());
        opts.kv_types = self.kv.types();
        opts.placement.offload_dir = self.placing.request.offload_dir.clone();
        opts.placement.mode = draft_mode(self.placing.request.mode);
        let draft = Engine::load(&opts, progress)?;
        let on_disk = draft.placement().count(Tier::Disk);
        if on_disk > 0 {
            return Err(EngineError::Invalid(format!(
                "the draft model {} does not fit in RAM or VRAM beside this model ({on_disk} of its layers would be on disk, slower than what it saves); choose a smaller draft or prompt lookup",
                path.display()
            )));
        }
        let (ours, theirs) = (self.tokenizer(), draft.tokenizer());
        let shared = self.hparams().n_vocab.min(draft.hparams().n_vocab);
        let differs = (0..shared as u32).find(|&id| ours.token(id) != theirs.token(id));
        if let Some(id) = differs {
            return Err(EngineError::Invalid(format!(
                "the draft model {} has another vocabulary (token {id} is {:?} there, {:?} here); a draft model must share the tokenizer",
                path.display(),
                theirs.token(id).unwrap_or_default(),
                ours.token(id).unwrap_or_default()
            )));
        }
        Ok(draft)
    }

    /// The drafter in use, if any.
    pub fn speculation(&self) -> Option<SpecInfo> {
        self.spec.as_ref().map(|s| s.info())
    }

    /// Drops the cache past the longest prefix shared with `ctx` (always
    /// leaving its last token to compute); returns the tokens kept.
    pub(super) fn rewind_to_prefix(&mut self, ctx: &[u32]) -> usize {
        let shared = self.shared_prefix(ctx);
        self.rewind(shared)
    }

    /// How many leading tokens of `ctx` the cache holds, leaving at least
    /// its last token to compute (its logits are the ones wanted).
    pub(super) fn shared_prefix(&self, ctx: &[u32]) -> usize {
        self.cached
            .iter()
            .zip(ctx)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ctx.len().saturating_sub(1))
    }

    /// Keeps the first `n` cached tokens (fewer when a sliding window no
    /// longer holds what they need); returns how many are kept.
    pub(super) fn rewind(&mut self, n: usize) -> usize {
        self.kv.truncate(n);
        let kept = self.kv.len();
        self.cached.truncate(kept);
        self.cached_pos.truncate(kept);
        self.cached_images.retain(|&(s, _)| s < kept);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_the_latest_longest_match() {
        // "a b c d ... a b c" → "d" follows the earlier "a b c".
        let ctx = [1, 2, 3, 4, 5, 9, 2, 3, 7, 1, 2, 3];
        assert_eq!(lookup(&ctx, 3, 4), vec![4, 5, 9, 2]);
        // Only the bigram "2 3" matches: its latest earlier occurrence.
        let ctx = [1, 2, 3, 4, 8, 2, 3, 7, 6, 2, 3];
        assert_eq!(lookup(&ctx, 3, 2), vec![7, 6]);
        assert_eq!(lookup(&ctx, 1, 1), vec![7]);
        assert!(lookup(&[5, 6, 7], 3, 4).is_empty());
        assert!(lookup(&ctx, 3, 0).is_empty());
    }

    #[test]
    fn draft_length_follows_acceptance_and_the_cost_of_reading_weights() {
        // Reading the weights dominates (a disk layer): long drafts pay
        // even at modest acceptance.
        let disk = best_draft_len(0.6, 1.0, 0.01, 0.0, 16);
        // Compute dominates (b close to a): short drafts or none.
        let compute = best_draft_len(0.6, 0.01, 0.02, 0.0, 16);
        assert!(disk >= 6, "{disk}");
        assert!(compute <= 1, "{compute}");
        // No acceptance: never draft.
        assert_eq!(best_draft_len(0.0, 1.0, 0.01, 0.0, 16), 0);
        // High acceptance, cheap drafts: draft to the cap.
        assert_eq!(best_draft_len(0.95, 1.0, 0.01, 0.001, 8), 8);
        assert!((expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn the_cost_line_is_fitted_from_passes_of_several_sizes() {
        let mut c = Costs::default();
        for _ in 0..3 {
            for n in [1usize, 3, 6, 9] {
                c.observe(n, 0.5 + 0.02 * n as f64);
            }
        }
        let (a, b) = c.line().unwrap();
        assert!((a - 0.5).abs() < 1e-9 && (b - 0.02).abs() < 1e-9, "{a} {b}");
        // One size only: the prompt's rate stands in for b.
        let mut c = Costs {
            prior_b: Some(0.01),
            ..Costs::default()
        };
        c.observe(1, 0.3);
        let (a, b) = c.line().unwrap();
        assert!((b - 0.01).abs() < 1e-12 && (a - 0.29).abs() < 1e-9);
    }
}
