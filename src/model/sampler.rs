//! Turning logits into the next token: greedy, or sampled with temperature,
//! top-k, top-p and min-p, after a repetition penalty. Seeded, so a given
//! seed replays the same reply.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::transformer::argmax;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    /// OpenAI's penalties on the tokens of this reply so far: each logit
    /// drops by `frequency_penalty` times the token's count, and by
    /// `presence_penalty` once it has appeared. 0 disables.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.1,
            repetition_window: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 42,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Reused across steps: (token, probability) candidates.
    candidates: Vec<(u32, f32)>,
    /// How often each token was sampled so far (for the OpenAI penalties).
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            counts: Default::default(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `recent` is the conversation so far (for the
    /// repetition penalty). `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        let t = self.pick(logits, recent);
        if self.params.frequency_penalty != 0.0 || self.params.presence_penalty != 0.0 {
            *self.counts.entry(t).or_default() += 1;
        }
        t
    }

    fn pick(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        let p = &self.params;
        for (&t, &n) in &self.counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
            }
        }
        if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
            let start = recent.len().saturating_sub(p.repetition_window);
            let mut seen = recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    // Hugging Face's rule: shrink positive logits, grow negative ones.
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let c = &mut self.candidates;
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = c.first().map_or(0.0, |x| x.1);
        let mut sum = 0.0f32;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            sum += x.1;
        }
        for x in c.iter_mut() {
            x.1 /= sum;
        }
        if p.min_p > 0.0 {
            let floor = c.first().map_or(0.0, |x| x.1) * p.min_p;
            let keep = c.iter().take_while(|x| x.1 >= floor).count().max(1);
            c.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += x.1;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        let total: f32 = c.iter().map(|x| x.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for x in c.iter() {
            if r < x.1 {
                return x.0;
            }
            r -= x.1;
        }
        c.last().map_or_else(|| argmax(logits), |x| x.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn frequency_and_presence_penalties_count_this_reply() {
        let mut p = SamplingParams::greedy();
        p.frequency_penalty = 0.6;
        let mut s = Sampler::new(p.clone());
        // Token 0 leads by 1.0: it wins twice (penalised 0.6, then 1.2).
        let logits = [2.0, 1.0, 0.0];
        let picks: Vec<u32> = (0..3).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(picks, [0, 0, 1]);
        // Presence: one fixed penalty, however often: once both have
        // appeared, the larger logit wins again.
        p.frequency_penalty = 0.0;
        p.presence_penalty = 1.5;
        let mut s = Sampler::new(p);
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(picks, [0, 1, 0, 0]);
    }

    #[test]
    fn repetition_penalty_changes_the_winner() {
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut [1.0, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..20 {
            let p = SamplingParams {
                temperature: 1.5,
                top_k: 1,
                seed,
                repetition_penalty: 1.0,
                ..SamplingParams::default()
            };
            assert_eq!(Sampler::new(p).sample(&mut [0.5, 0.4, 0.9, 0.1], &[]), 2);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [10.0, 9.5, 0.0, -5.0];
        for seed in 0..50 {
            let p = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.1,
                repetition_penalty: 1.0,
                seed,
                ..SamplingParams::default()
            };
            let t = Sampler::new(p).sample(&mut logits.clone(), &[]);
            assert!(t < 2, "min-p let token {t} through");
            let p = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.5,
                min_p: 0.0,
                repetition_penalty: 1.0,
                seed,
                ..SamplingParams::default()
            };
            assert_eq!(Sampler::new(p).sample(&mut logits.clone(), &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_spreads() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                top_k: 0,
                min_p: 0.0,
                top_p: 1.0,
                repetition_penalty: 1.0,
                temperature: 1.0,
                ..SamplingParams::default()
            });
            (0..30)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let distinct: std::collections::HashSet<_> = run(7).into_iter().collect();
        assert!(distinct.len() > 3);
    }
}
