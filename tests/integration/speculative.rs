//! Speculative decoding: every drafter gives token-for-token the greedy
//! output of plain decoding on every tier, and sampled output keeps its
//! distribution.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use spillway::chat::Message;
use spillway::engine::{
    DiskLayers, Drafting, Engine, GenerateParams, Generation, LoadOptions, PlacementRequest,
    SpecOptions,
};
use spillway::model::sampler::SamplingParams;
use spillway::placement::{Mode, Quant, Tier};

use crate::common::{ids, path_str, qwen05, smollm2, spillway_json};
use crate::hf::fixture;

const MIB: u64 = 1 << 20;

fn load(model: &Path, placement: PlacementRequest, cache: &Path) -> Engine {
    let mut opts = LoadOptions::new(model);
    opts.placement = PlacementRequest {
        offload_dir: cache.join("offload"),
        ..placement
    };
    opts.context_length = Some(2048);
    opts.cache_dir = Some(cache.to_path_buf());
    Engine::load(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

fn tier(mode: Mode, vram: Option<u64>, disk: Option<DiskLayers>, candle: bool) -> PlacementRequest {
    let mut r = PlacementRequest {
        mode,
        disk_layers: disk,
        simulate_with_candle: candle,
        ..PlacementRequest::default()
    };
    r.budget.vram_bytes = vram;
    r
}

/// The tiers every drafter is checked on: RAM, all layers on disk, and the
/// GPU tier's own code path (candle blocks, KV cache on the device) on
/// candle's CPU device. (A GPU simulated on the host kernels runs the RAM
/// tier's code.)
fn tiers() -> Vec<(&'static str, PlacementRequest)> {
    vec![
        ("ram", tier(Mode::CpuOnly, None, None, false)),
        (
            "disk",
            tier(Mode::CpuOnly, None, Some(DiskLayers::All), false),
        ),
        (
            "gpu-candle",
            tier(Mode::FullGpu, Some(1024 * MIB), None, true),
        ),
    ]
}

fn spec(drafting: Drafting, cache: &Path) -> SpecOptions {
    SpecOptions {
        drafting,
        max_draft: 8,
        cache_dir: Some(cache.to_path_buf()),
        // Drafting as much as allowed whatever the timings say, so the
        // counts below do not depend on the machine's load.
        fixed: true,
        forced_acceptance: None,
    }
}

fn run(e: &mut Engine, prompt: &[u32], params: &GenerateParams) -> Generation {
    let never = AtomicBool::new(false);
    e.reset();
    e.generate(prompt, params, &never, &mut |_| {}).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    }
}

/// The code-editing request of the benchmark, on the function's first
/// `lines` lines (the tests keep it short).
fn edit_prompt(lines: usize) -> Vec<Message> {
    let code: String = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/speculative/inventory.py"
    ))
    .unwrap()
    .lines()
    .take(lines)
    .map(|l| format!("{l}\n"))
    .collect();
    vec![Message::new(
        "user",
        &format!(
            "Here is the start of a Python function:\n\n```python\n{code}```\n\nRepeat this code exactly, with the parameter `threshold` renamed to `default_minimum`."
        ),
    )]
}

/// Runs `prompt` without a drafter and with each of `drafters` on `e`:
/// the same tokens every time. Returns the plain run's tokens and what
/// each drafter proposed and had accepted.
fn same_tokens(
    e: &mut Engine,
    prompt: &[u32],
    params: &GenerateParams,
    drafters: &[SpecOptions],
    what: &str,
) -> (Vec<u32>, Vec<(usize, usize)>) {
    e.set_speculation(&SpecOptions::default(), &mut |_| {})
        .unwrap();
    let plain = run(e, prompt, params);
    assert_eq!(plain.draft_proposed, 0);
    let mut drafted = Vec::new();
    for s in drafters {
        e.set_speculation(s, &mut |_| {})
            .unwrap_or_else(|err| panic!("{what}: {:?}: {err}", s.drafting));
        let r = run(e, prompt, params);
        assert_eq!(
            r.generated_tokens, plain.generated_tokens,
            "{what}: {:?} changed the greedy output",
            s.drafting
        );
        assert!(r.passes < plain.passes || r.draft_accepted == 0);
        drafted.push((r.draft_proposed, r.draft_accepted));
    }
    e.set_speculation(&SpecOptions::default(), &mut |_| {})
        .unwrap();
    (plain.generated_tokens, drafted)
}

#[test]
fn every_drafter_keeps_greedy_output_on_every_tier() {
    let cache = tempfile::tempdir().unwrap();
    let model = smollm2();
    let drafters = [
        spec(Drafting::Lookup(3), cache.path()),
        // A draft model sharing the tokenizer (here the model itself: every
        // draft token is accepted, so the longest drafts are checked).
        spec(Drafting::Model(model.clone()), cache.path()),
    ];
    let mut reference: Option<Vec<u32>> = None;
    for (name, placement) in tiers() {
        let mut e = load(&model, placement, cache.path());
        if name == "disk" {
            assert_eq!(e.placement().count(Tier::Disk), 30);
        }
        if name.starts_with("gpu") {
            assert_eq!(e.placement().count(Tier::Gpu), 30, "{name}");
        }
        let prompt = e.chat_tokens(&edit_prompt(16), true).unwrap();
        let (tokens, drafted) = same_tokens(&mut e, &prompt, &greedy(48), &drafters, name);
        // Code repeated from the prompt: lookup drafts and hits.
        assert!(drafted[0].1 > 8, "{name}: lookup accepted {:?}", drafted[0]);
        // The model drafting for itself is always right.
        assert_eq!(drafted[1].0, drafted[1].1, "{name}");
        assert!(drafted[1].1 > 24, "{name}");
        // The host kernels give the same tokens in every tier.
        if name != "gpu-candle" {
            match &reference {
                None => reference = Some(tokens),
                Some(r) => assert_eq!(&tokens, r, "{name} differs from RAM"),
            }
        }
    }
}

#[test]
fn qwen05_prompt_lookup_keeps_greedy_output() {
    let cache = tempfile::tempdir().unwrap();
    let drafters = [spec(Drafting::Lookup(3), cache.path())];
    for (name, placement) in tiers().into_iter().take(1) {
        let mut e = load(&qwen05(), placement, cache.path());
        let prompt = e.chat_tokens(&edit_prompt(10), true).unwrap();
        let (_, drafted) = same_tokens(&mut e, &prompt, &greedy(32), &drafters, name);
        assert!(drafted[0].1 > 8, "{name}: {:?}", drafted[0]);
    }
}

/// The tiny Qwen3 fixture (bf16 as stored) drafted by itself at 8 bits
/// (self-draft) and by its 4-bit conversion (a draft model), in RAM and
/// on disk.
#[test]
fn self_draft_and_draft_model_keep_greedy_output_on_the_fixture() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("qwen3_tiny_text");
    let mut q4 = LoadOptions::new(&dir);
    q4.quant = Quant::Q4KM;
    q4.cache_dir = Some(cache.path().to_path_buf());
    let draft_file = Engine::load(&q4, &mut |_| {}).unwrap().gguf.path.clone();
    let drafters = [
        spec(Drafting::SelfDraft(Quant::Q8_0), cache.path()),
        spec(Drafting::Model(draft_file), cache.path()),
        spec(Drafting::Lookup(2), cache.path()),
    ];
    for (name, placement) in tiers().into_iter().take(2) {
        let mut e = load(&dir, placement, cache.path());
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 600) as u32 + 3).collect();
        let (_, drafted) = same_tokens(&mut e, &prompt, &greedy(40), &drafters, name);
        assert!(drafted[0].1 > 0 && drafted[1].0 > 0, "{name}: {drafted:?}");
        let info = {
            e.set_speculation(&drafters[0], &mut |_| {}).unwrap();
            e.speculation().unwrap()
        };
        let draft = info.draft.expect("a self-draft is a draft model");
        assert!(draft.name.contains("draft-q8_0"), "{}", draft.name);
        assert_eq!(draft.tier, Tier::Ram);
        // `plan --draft-quant` predicts the self-draft's bytes before it is
        // made, to the byte.
        let model = e.gguf.path.clone();
        let plan = spillway_json(&[
            "plan",
            "--model",
            path_str(&model),
            "--draft-quant",
            "q8_0",
            "--mode",
            "cpu-only",
            "--json",
        ]);
        let tiers = &plan["draft"]["tiers"];
        let planned: u64 = ["gpu", "ram", "disk"]
            .iter()
            .map(|t| tiers[t]["weights_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(planned, draft.weight_bytes, "{name}");
        assert!(draft.weight_bytes < plan["weights_bytes"].as_u64().unwrap());
        assert_eq!(plan["draft"]["fits_without_disk"], true);
    }
}

/// `plan --draft-model`: the draft's bytes and tiers beside the model's;
/// with RAM for the model only, the draft would need the disk.
#[test]
fn plan_places_the_draft_after_the_model() {
    let m = smollm2();
    let m = path_str(&m);
    let plan = |ram: &[&str]| {
        let mut args = vec![
            "plan",
            "--model",
            m,
            "--draft-model",
            m,
            "--mode",
            "cpu-only",
            "--ctx",
            "1024",
            "--json",
        ];
        args.extend_from_slice(ram);
        spillway_json(&args)
    };
    let v = plan(&[]);
    assert_eq!(v["draft"]["weights_bytes"], v["weights_bytes"]);
    assert_eq!(v["draft"]["tiers"]["ram"]["layers"], 30);
    assert_eq!(v["draft"]["fits_without_disk"], true);
    // RAM for the model alone (its planned peak and 8 MiB).
    let peak = v["tiers"]["ram"]["peak_bytes"].as_u64().unwrap();
    let cap = format!("{}MiB", (peak >> 20) + 8);
    let tight = plan(&["--ram", &cap]);
    assert_eq!(tight["tiers"]["disk"]["layers"], 0, "the model itself fits");
    assert_eq!(
        tight["draft"]["fits_without_disk"], false,
        "{cap}: {}",
        tight["draft"]
    );
    let why = tight["draft"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("MiB short"), "{tight}");
}

/// Two samples of categories: whether they could come from one
/// distribution (a chi-square test at the 0.1% level, categories with
/// fewer than 10 draws pooled).
fn same_distribution(a: &[u64], b: &[u64]) -> (bool, f64, f64) {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let mut stat: f64 = 0.0;
    let mut df: f64 = -1.0;
    let (mut pa, mut pb) = (0u64, 0u64);
    let mut add = |x: u64, y: u64| {
        let (x, y) = (x as f64, y as f64);
        let k1 = (nb / na).sqrt();
        let k2 = (na / nb).sqrt();
        stat += (k1 * x - k2 * y).powi(2) / (x + y);
        df += 1.0;
    };
    for (&x, &y) in a.iter().zip(b) {
        if x + y < 10 {
            pa += x;
            pb += y;
        } else {
            add(x, y);
        }
    }
    if pa + pb > 0 {
        add(pa, pb);
    }
    // Wilson–Hilferty: the chi-square quantile at 99.9% (z = 3.09).
    let z = 3.09;
    let h = 2.0 / (9.0 * df);
    let critical = df * (1.0 - h + z * h.sqrt()).powi(3);
    (stat < critical, stat, critical)
}

/// Sampling (temperature 1, top-k 4) on a model with a 666-token
/// vocabulary: the second and third tokens of 1,200 seeded replies (the
/// first verified tokens; 16 categories at most, with what came first
/// folded in) are
/// distributed alike with and without a drafter — a lookup drafter whose
/// proposals come from a repetitive prompt, and a self-draft.
#[test]
fn sampling_with_a_drafter_keeps_the_token_distribution() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("qwen3_tiny_text");
    let mut e = load(&dir, tier(Mode::CpuOnly, None, None, false), cache.path());
    // A prompt whose end was followed by the model's own greedy
    // continuation earlier on: prompt lookup then proposes tokens the
    // model finds likely (and some it does not).
    let start: Vec<u32> = vec![11, 12, 13, 14, 15, 16];
    let greedy_run = run(&mut e, &start, &greedy(12)).generated_tokens;
    let prompt: Vec<u32> = [start.clone(), greedy_run, start].concat();
    let runs = 1200;
    let sample = |e: &mut Engine, s: &SpecOptions| -> Tally {
        e.set_speculation(s, &mut |_| {}).unwrap();
        let mut pairs: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
        let (mut proposed, mut accepted) = (0, 0);
        for seed in 0..runs {
            let params = GenerateParams {
                max_tokens: 4,
                sampling: SamplingParams {
                    temperature: 1.0,
                    top_k: 4,
                    top_p: 1.0,
                    min_p: 0.0,
                    repetition_penalty: 1.0,
                    seed,
                    ..SamplingParams::default()
                },
                ignore_eos: true,
                ..GenerateParams::default()
            };
            let r = run(e, &prompt, &params);
            *pairs
                .entry((r.generated_tokens[1], r.generated_tokens[2]))
                .or_default() += 1;
            proposed += r.draft_proposed;
            accepted += r.draft_accepted;
        }
        Tally {
            counts: pairs.into_iter().collect(),
            proposed,
            accepted,
        }
    };
    let plain = sample(&mut e, &SpecOptions::default());
    for drafter in [
        spec(Drafting::Lookup(2), cache.path()),
        spec(Drafting::SelfDraft(Quant::Q8_0), cache.path()),
    ] {
        let drafted = sample(&mut e, &drafter);
        assert!(
            drafted.proposed >= 200,
            "{:?}: {}",
            drafter.drafting,
            drafted.proposed
        );
        assert!(
            drafted.accepted > 0 && drafted.accepted < drafted.proposed,
            "{:?}: both outcomes of the rule are exercised",
            drafter.drafting
        );
        let (a, b) = plain.aligned(&drafted);
        let (ok, stat, critical) = same_distribution(&a, &b);
        assert!(
            ok,
            "{:?}: chi-square {stat:.1} over {critical:.1}: {a:?} vs {b:?}",
            drafter.drafting
        );
    }
}

/// Counts per (second, third) token of a batch of replies.
struct Tally {
    counts: Vec<((u32, u32), u64)>,
    proposed: usize,
    accepted: usize,
}

impl Tally {
    /// Both tallies' counts over the union of their categories.
    fn aligned(&self, other: &Tally) -> (Vec<u64>, Vec<u64>) {
        let mut keys: Vec<(u32, u32)> = self
            .counts
            .iter()
            .chain(&other.counts)
            .map(|x| x.0)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let get = |t: &Tally, k| t.counts.iter().find(|x| x.0 == k).map_or(0, |x| x.1);
        (
            keys.iter().map(|&k| get(self, k)).collect(),
            keys.iter().map(|&k| get(other, k)).collect(),
        )
    }
}

/// `generate --lookup-ngram` on the command line: the same tokens as
/// without it, and the drafted and accepted counts in the JSON.
#[test]
fn generate_reports_drafted_and_accepted_tokens() {
    let chat = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        chat.path(),
        serde_json::to_string(&edit_prompt(20)).unwrap(),
    )
    .unwrap();
    let model = smollm2();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            path_str(&model),
            "--chat",
            path_str(chat.path()),
            "--greedy",
            "--max-tokens",
            "40",
            "--ignore-eos",
            "--json",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let plain_args = args(&[]);
    let plain = spillway_json(&plain_args.iter().map(String::as_str).collect::<Vec<_>>());
    let spec_args = args(&["--lookup-ngram", "3", "--draft-tokens", "6"]);
    let spec = spillway_json(&spec_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        ids(&plain["generated_tokens"]),
        ids(&spec["generated_tokens"])
    );
    assert_eq!(plain["draft_proposed"], 0);
    let (p, a) = (
        spec["draft_proposed"].as_u64().unwrap(),
        spec["draft_accepted"].as_u64().unwrap(),
    );
    assert!(p > 0 && a > 0 && a <= p, "{p} {a}");
    assert!(spec["decode_passes"].as_u64() < plain["decode_passes"].as_u64());
    assert_eq!(spec["speculative"]["drafter"], "prompt lookup");
    assert_eq!(spec["speculative"]["max_draft"], 6);
}
