//! The engine's library API: conversation state across turns, cancellation,
//! stop strings, and moving layers between tiers while chatting.

use std::sync::atomic::{AtomicBool, Ordering};

use spillway::chat::Message;
use spillway::engine::{
    DiskLayers, Engine, EngineError, FinishReason, GenerateParams, LoadOptions,
};
use spillway::model::sampler::SamplingParams;
use spillway::placement::Tier;

use crate::common::smollm2;

fn load(disk: DiskLayers) -> Engine {
    let mut opts = LoadOptions::new(smollm2());
    opts.placement.disk_layers = Some(disk);
    opts.context_length = Some(1024);
    Engine::load(&opts, &mut |_| {}).expect("SmolLM2 loads")
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: false,
        speculative: true,
    }
}

#[test]
fn second_turn_reuses_the_cache_and_matches_a_fresh_run() {
    let never = AtomicBool::new(false);
    let mut e = load(DiskLayers::None);
    let mut conv = vec![Message::new("user", "Name a fruit.")];
    let p1 = e.chat_tokens(&conv, true).unwrap();
    let r1 = e.generate(&p1, &greedy(12), &never, &mut |_| {}).unwrap();
    assert_eq!(r1.reused_tokens, 0);
    conv.push(Message::new("assistant", &r1.text));
    conv.push(Message::new("user", "And a vegetable?"));
    let p2 = e.chat_tokens(&conv, true).unwrap();
    let r2 = e.generate(&p2, &greedy(12), &never, &mut |_| {}).unwrap();
    // Everything up to the first reply's end is served from the cache.
    let shared = p1.iter().zip(&p2).take_while(|(a, b)| a == b).count();
    assert!(shared >= p1.len(), "turn 2 does not extend turn 1");
    assert!(
        r2.reused_tokens >= p1.len(),
        "reused {} of {}",
        r2.reused_tokens,
        p2.len()
    );
    assert!(r2.reused_tokens < p2.len());

    let mut fresh = load(DiskLayers::None);
    let r2_fresh = fresh
        .generate(&p2, &greedy(12), &never, &mut |_| {})
        .unwrap();
    assert_eq!(r2.generated_tokens, r2_fresh.generated_tokens);
}

#[test]
fn cancellation_stops_between_tokens() {
    let cancel = AtomicBool::new(false);
    let mut e = load(DiskLayers::Count(10));
    let prompt = e
        .chat_tokens(&[Message::new("user", "Count from one to fifty.")], true)
        .unwrap();
    let mut pieces = 0;
    let mut params = greedy(200);
    params.ignore_eos = true;
    let r = e
        .generate(&prompt, &params, &cancel, &mut |_| {
            pieces += 1;
            if pieces == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(
        r.generated_tokens.len() < 10,
        "{} tokens after cancel",
        r.generated_tokens.len()
    );
    // The engine is usable afterwards.
    cancel.store(false, Ordering::Relaxed);
    let again = e
        .generate(&prompt, &greedy(4), &cancel, &mut |_| {})
        .unwrap();
    assert_eq!(again.generated_tokens.len(), 4);
}

#[test]
fn stop_string_ends_the_reply_before_it() {
    let never = AtomicBool::new(false);
    let mut e = load(DiskLayers::None);
    let prompt = e
        .chat_tokens(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let full = e
        .generate(&prompt, &greedy(24), &never, &mut |_| {})
        .unwrap();
    let word = full
        .text
        .split_whitespace()
        .nth(3)
        .expect("a reply of several words")
        .to_string();
    let mut params = greedy(24);
    params.stop = vec![word.clone()];
    let mut streamed = String::new();
    let cut = e
        .generate(&prompt, &params, &never, &mut |p| streamed.push_str(p))
        .unwrap();
    assert_eq!(cut.finish, FinishReason::Stop);
    assert!(
        !cut.text.contains(&word),
        "{:?} still holds {word:?}",
        cut.text
    );
    assert!(full.text.starts_with(&cut.text));
    assert_eq!(streamed, cut.text);
}

#[test]
fn max_tokens_and_context_limits() {
    let never = AtomicBool::new(false);
    let mut opts = LoadOptions::new(smollm2());
    opts.context_length = Some(48);
    let mut e = Engine::load(&opts, &mut |_| {}).unwrap();
    let prompt = e
        .chat_tokens(&[Message::new("user", "Hello!")], true)
        .unwrap();
    assert!(prompt.len() < 40);
    let mut params = greedy(500);
    params.ignore_eos = true;
    let r = e.generate(&prompt, &params, &never, &mut |_| {}).unwrap();
    assert_eq!(r.finish, FinishReason::ContextFull);
    assert!(prompt.len() + r.generated_tokens.len() <= 48);
    let long: Vec<u32> = vec![100; 48];
    assert!(matches!(
        e.generate(&long, &greedy(1), &never, &mut |_| {}),
        Err(EngineError::ContextExceeded {
            prompt_tokens: 48,
            context: 48
        })
    ));
}

#[test]
fn layers_move_between_tiers_mid_conversation() {
    let never = AtomicBool::new(false);
    let mut e = load(DiskLayers::None);
    let prompt = e
        .chat_tokens(&[Message::new("user", "Tell me about owls.")], true)
        .unwrap();
    let mut params = greedy(8);
    params.ignore_eos = true;
    let before = e.generate(&prompt, &params, &never, &mut |_| {}).unwrap();
    for i in (0..e.store().n_layers()).step_by(2) {
        e.set_tier(i, Tier::Disk).unwrap();
    }
    assert!(e.store().tier_bytes(Tier::Disk) > 0);
    // Same conversation: the cache is kept, the answer is the same.
    let after = e.generate(&prompt, &params, &never, &mut |_| {}).unwrap();
    assert_eq!(after.reused_tokens, prompt.len() - 1);
    assert_eq!(before.generated_tokens, after.generated_tokens);
    for i in 0..e.store().n_layers() {
        e.set_tier(i, Tier::Ram).unwrap();
    }
    assert_eq!(e.store().tier_bytes(Tier::Disk), 0);
}

/// Each KV cache type, K and V apart, on a real model: a 200-token
/// prompt (tiled attention) and then 20 tokens one at a time (the
/// per-query kernel) give last logits near the f32 cache's (q4_0, stored
/// rotated, furthest) and the same greedy next token. Their perplexity
/// against llama.cpp's with the same types is tested in generation.rs.
#[test]
fn every_cache_type_stays_near_f32_attention() {
    use spillway::engine::{CacheType as C, KvTypes};
    let never = AtomicBool::new(false);
    let tokens: Vec<u32> = (0..220u32).map(|i| 100 + (i * 7919) % 20_000).collect();
    let logits = |types: KvTypes| {
        let mut opts = LoadOptions::new(smollm2());
        opts.context_length = Some(512);
        opts.kv_types = types;
        let mut e = Engine::load(&opts, &mut |_| {}).expect("SmolLM2 loads");
        let mut last = e.feed(&tokens[..200], &never).unwrap().unwrap();
        for t in &tokens[200..] {
            last = e.feed(&[*t], &never).unwrap().unwrap();
        }
        last
    };
    let argmax = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    let reference = logits(KvTypes::F32);
    let mut diffs = Vec::new();
    // Bounds about twice the changes seen (0.59, 0.50, 2.06: this 135M
    // model's logits span about ±30 on this unnatural token sequence).
    for (types, near) in [
        (KvTypes::new(C::F16, C::F16), 1.2),
        (KvTypes::new(C::Q8_0, C::Q8_0), 1.0),
        (KvTypes::new(C::Q4_0, C::Q4_0), 4.0),
    ] {
        let l = logits(types);
        let d = l
            .iter()
            .zip(&reference)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        diffs.push(format!("{types}: {d:.4}"));
        assert!(d < near, "{types}: logits move by {d} (bound {near})");
        assert_eq!(argmax(&l), argmax(&reference), "{types}");
    }
    eprintln!(
        "largest logit change against an f32 cache: {}",
        diffs.join(", ")
    );
}

/// A prompt longer than one chunk reports its progress after each chunk
/// (the window shows "Reading the prompt: N of M tokens"); a short one
/// does not.
#[test]
fn a_long_prompt_reports_its_progress() {
    let never = AtomicBool::new(false);
    let mut e = load(DiskLayers::None);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    e.on_prompt_progress(Some(Box::new(move |done, total| {
        s.lock().unwrap().push((done, total));
    })));
    let prompt: Vec<u32> = (0..900u32).map(|i| 100 + i % 500).collect();
    e.generate(&prompt, &greedy(1), &never, &mut |_| {})
        .unwrap();
    let chunk = spillway::engine::PROMPT_CHUNK;
    let want: Vec<(usize, usize)> = (1..)
        .map(|k| (k * chunk).min(900))
        .take(900usize.div_ceil(chunk))
        .map(|d| (d, 900))
        .collect();
    assert_eq!(*seen.lock().unwrap(), want);
    seen.lock().unwrap().clear();
    e.reset();
    e.generate(&prompt[..20], &greedy(1), &never, &mut |_| {})
        .unwrap();
    assert!(seen.lock().unwrap().is_empty());
}
