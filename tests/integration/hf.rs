//! Hugging Face folders against the reference implementation: the tiny
//! fixtures in tests/fixtures (copied from ../shared/fixtures, made with
//! Hugging Face transformers; see their README.md) converted and run.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use spillway::chat::template::Message;
use spillway::engine::{Engine, LoadOptions};
use spillway::placement::Quant;

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture folder, to change.
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    copy
}

struct Reference {
    input_ids: Vec<u32>,
    /// positions × vocab
    logits: Vec<f32>,
    generated: Vec<u32>,
}

fn reference(dir: &Path) -> Reference {
    let t =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids = |name: &str| -> Vec<u32> {
        t[name]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    };
    let logits: &Tensor = &t["logits"];
    Reference {
        input_ids: ids("input_ids"),
        logits: logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        generated: ids("generated_ids"),
    }
}

pub(crate) fn load(dir: &Path, quant: Quant, cache: &Path) -> Engine {
    let mut opts = LoadOptions::new(dir);
    opts.quant = quant;
    opts.cache_dir = Some(cache.to_path_buf());
    // Parity with transformers (f32 throughout) wants an f32 cache.
    opts.kv_types = spillway::engine::KvTypes::F32;
    Engine::load(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn messages(dir: &Path) -> Vec<Message> {
    serde_json::from_slice(&std::fs::read(dir.join("messages.json")).unwrap()).unwrap()
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `spillway generate --model DIR --chat CHAT --greedy --ignore-eos
/// --max-tokens 8 EXTRA --json` with the cache in `cache`: its JSON.
pub(crate) fn greedy8(dir: &Path, chat: &Path, extra: &[&str], cache: &Path) -> serde_json::Value {
    let mut args = vec![
        "--chat",
        chat.to_str().unwrap(),
        "--greedy",
        "--ignore-eos",
        "--max-tokens",
        "8",
    ];
    args.extend_from_slice(extra);
    generate_json(dir, &args, cache)
}

/// The generated ids of a `generate --json` answer.
pub(crate) fn tokens_of(json: &serde_json::Value) -> Vec<i64> {
    json["generated_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// The fixture's chat, greedy, 8 tokens, computed in f32 under `quant`.
fn greedy_cli(dir: &Path, quant: &str, cache: &Path) -> Vec<u32> {
    let json = greedy8(
        dir,
        &dir.join("messages.json"),
        &["--dtype", "f32", "--quant", quant],
        cache,
    );
    tokens_of(&json).into_iter().map(|t| t as u32).collect()
}

/// `spillway generate --model DIR ARGS --json` with converted models cached
/// in `cache`: its JSON.
pub(crate) fn generate_json(dir: &Path, args: &[&str], cache: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["generate", "--model"])
        .arg(dir)
        .args(args)
        .arg("--json")
        .env("SPILLWAY_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Fixture `name` converted as stored: the chat template (with its
/// thinking switch set as `thinking` says) gives the reference's prompt
/// ids, and the logits at every position are the reference's within 1e-3.
/// Returns the reference, the engine, the prompt ids and the logit error.
fn stored_matches_reference(
    name: &str,
    thinking: Option<bool>,
    cache: &Path,
) -> (Reference, Engine, Vec<u32>, f32) {
    let dir = fixture(name);
    let r = reference(&dir);
    let mut e = load(&dir, Quant::AsStored, cache);
    e.set_template_thinking(thinking);
    let ids = e.chat_tokens(&messages(&dir), true).unwrap();
    assert_eq!(ids, r.input_ids, "{name}: prompt ids");
    let logits = e.logits_all(&ids).unwrap();
    let err = max_abs_diff(&logits, &r.logits);
    eprintln!("{name}: as stored, max |logit - reference| = {err:.2e}");
    assert!(err < 1e-3, "{name}: logits differ by {err}");
    (r, e, ids, err)
}

/// Prompt ids from the chat template, logits at every position (f32,
/// weights as stored) and the 8 greedy tokens match transformers; Q8_0 keeps
/// the greedy tokens; the 4-bit scheme's logit error stays where it was
/// measured.
#[test]
fn hugging_face_folders_match_transformers() {
    let cache = tempfile::tempdir().unwrap();
    // (fixture, bounds on the max logit error of Q8_0 and of the 4-bit
    // scheme: ×1.5 what was measured when this test was written, 0.72/4.39
    // and 0.84/5.72, on logits of absmax ~18. The fixtures' rows of 64 and
    // 128 are not whole Q4_K super-blocks, so the 4-bit scheme falls back
    // to Q5_0 and Q8_0 as llama.cpp does; the >1 GB test covers Q4_K.)
    for (name, q8_bound, q4_bound) in [("mistral_tiny", 1.1, 6.6), ("qwen2_tiny_text", 1.3, 8.6)] {
        let dir = fixture(name);
        let (r, _, ids, err) = stored_matches_reference(name, None, cache.path());
        assert_eq!(
            greedy_cli(&dir, "none", cache.path()),
            r.generated,
            "{name}: greedy"
        );

        assert_eq!(
            greedy_cli(&dir, "q8_0", cache.path()),
            r.generated,
            "{name}: Q8_0 greedy"
        );
        let mut q8 = load(&dir, Quant::Q8_0, cache.path());
        let q8_err = max_abs_diff(&q8.logits_all(&ids).unwrap(), &r.logits);

        let mut q4 = load(&dir, Quant::Q4KM, cache.path());
        let q4_err = max_abs_diff(&q4.logits_all(&ids).unwrap(), &r.logits);
        eprintln!("{name}: Q8_0 max logit error {q8_err:.3}, Q4_K_M {q4_err:.3}");
        assert!(q8_err < q8_bound, "{name}: Q8_0 logit error {q8_err}");
        assert!(q8_err < q4_err, "{name}: 8-bit is not closer than 4-bit");
        assert!(q4_err < q4_bound, "{name}: Q4_K_M logit error {q4_err}");
        // Quantization really happened: not the stored weights again.
        assert!(q4_err > 10.0 * err);
    }
}

/// The second load of a folder comes from the cache; a changed source file
/// makes a new entry.
#[test]
fn converted_folders_are_cached_by_source() {
    let cache = tempfile::tempdir().unwrap();
    let src = copy_of(&fixture("qwen2_tiny_text"));
    let entries = || std::fs::read_dir(cache.path()).unwrap().count();
    drop(load(src.path(), Quant::Q8_0, cache.path()));
    assert_eq!(entries(), 1);
    drop(load(src.path(), Quant::Q8_0, cache.path()));
    assert_eq!(entries(), 1, "the second load converted again");
    drop(load(src.path(), Quant::Q4KM, cache.path()));
    assert_eq!(entries(), 2);
    // Touching the config is a new source.
    let config = src.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&config, format!("{text}\n")).unwrap();
    drop(load(src.path(), Quant::Q8_0, cache.path()));
    assert_eq!(entries(), 3);
    // No temporary file is left behind.
    for e in std::fs::read_dir(cache.path()).unwrap().flatten() {
        assert!(
            e.path().extension().is_some_and(|x| x == "gguf"),
            "{:?}",
            e.path()
        );
    }
}

/// A truncated shard is a clear error naming the file, and nothing is
/// cached.
#[test]
fn a_truncated_checkpoint_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let src = copy_of(&fixture("mistral_tiny"));
    let weights = src.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let mut opts = LoadOptions::new(src.path());
    opts.cache_dir = Some(cache.path().to_path_buf());
    let err = Engine::load(&opts, &mut |_| {})
        .err()
        .expect("loaded a truncated file")
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(cache.path()).map_or(0, |d| d.count()), 0);
}

/// A shard that shrinks after the folder was opened (a download still being
/// written, a file replaced underneath) is an I/O error when its tensors
/// are read, not a SIGBUS that kills the process (the reads are positioned
/// reads, not a memory map).
#[test]
fn a_shard_that_shrinks_while_read_is_an_error_not_a_signal() {
    let src = copy_of(&fixture("mistral_tiny"));
    let folder = spillway::weights::hf::HfFolder::open(src.path()).unwrap();
    let weights = src.path().join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut errors = 0;
    for name in folder.tensors.keys() {
        if folder.read_f32(name).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0, "every tensor read from a 4 KiB file");
}

/// Writes a safetensors file of bf16 tensors with pseudo-random values,
/// streamed (never held whole); returns its size.
fn write_bf16_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) -> u64 {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let mut state = seed | 1;
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, shape) in tensors {
        let n: usize = shape.iter().product();
        // Values of a fan-in-scaled matrix (or norm gains near 1).
        let scale = if shape.len() == 1 {
            0.1
        } else {
            1.0 / (shape[1] as f32).sqrt()
        };
        let base = if shape.len() == 1 { 1.0 } else { 0.0 };
        for i in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            buf.extend_from_slice(&half::bf16::from_f32(base + scale * u * 1.7).to_le_bytes());
            if buf.len() >= 1 << 20 || i + 1 == n {
                f.write_all(&buf).unwrap();
                buf.clear();
            }
        }
    }
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// A synthetic bf16 checkpoint over 1 GB in two shards: converted to the
/// 4-bit scheme (Q4_K) within one shard's mapping plus two layers of peak
/// memory, and a second load from the cache in under 10% of the first
/// load's time.
#[test]
fn a_large_checkpoint_quantizes_within_memory_and_loads_from_the_cache() {
    let (d, ff, heads, kv_heads, layers, vocab) =
        (2048usize, 5632usize, 16usize, 4usize, 12usize, 700usize);
    let hd = d / heads;
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "hidden_size": d, "intermediate_size": ff, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "vocab_size": vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    });
    std::fs::write(src.path().join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("mistral_tiny").join(f), src.path().join(f)).unwrap();
    }
    let layer = |i: usize| -> Vec<(String, Vec<usize>)> {
        let p = format!("model.layers.{i}.");
        vec![
            (format!("{p}input_layernorm.weight"), vec![d]),
            (format!("{p}self_attn.q_proj.weight"), vec![d, d]),
            (
                format!("{p}self_attn.k_proj.weight"),
                vec![kv_heads * hd, d],
            ),
            (
                format!("{p}self_attn.v_proj.weight"),
                vec![kv_heads * hd, d],
            ),
            (format!("{p}self_attn.o_proj.weight"), vec![d, d]),
            (format!("{p}post_attention_layernorm.weight"), vec![d]),
            (format!("{p}mlp.gate_proj.weight"), vec![ff, d]),
            (format!("{p}mlp.up_proj.weight"), vec![ff, d]),
            (format!("{p}mlp.down_proj.weight"), vec![d, ff]),
        ]
    };
    let layer_bytes: u64 = layer(0)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * 2)
        .sum();
    let mut first = vec![("model.embed_tokens.weight".to_string(), vec![vocab, d])];
    let mut second = Vec::new();
    for i in 0..layers {
        if i < layers / 2 {
            first.extend(layer(i))
        } else {
            second.extend(layer(i))
        }
    }
    second.push(("model.norm.weight".into(), vec![d]));
    second.push(("lm_head.weight".into(), vec![vocab, d]));
    let shards = [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ];
    let mut weight_map = serde_json::Map::new();
    let mut sizes = Vec::new();
    for (i, (file, tensors)) in shards.iter().enumerate() {
        sizes.push(write_bf16_safetensors(
            &src.path().join(file),
            tensors,
            7 + i as u64,
        ));
        for (name, _) in tensors.iter() {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        src.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let total: u64 = sizes.iter().sum();
    assert!(total > 1 << 30, "{total} bytes");

    let generate = || {
        generate_json(
            src.path(),
            &[
                "--quant",
                "q4_k_m",
                "--prompt",
                "Hello",
                "--raw",
                "--max-tokens",
                "1",
                "--greedy",
            ],
            cache.path(),
        )
    };
    let one = generate();
    let two = generate();
    let (t1, t2) = (
        one["load_seconds"].as_f64().unwrap(),
        two["load_seconds"].as_f64().unwrap(),
    );
    let peak = one["load_peak_rss_bytes"].as_u64().unwrap();
    let bound = sizes.iter().max().unwrap() + 2 * layer_bytes;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "checkpoint {:.0} MiB in shards of {:.0}/{:.0} MiB, layers of {:.0} MiB: first load (converting) {t1:.2} s, \
         peak RSS {:.0} MiB (bound {:.0} MiB); second load from the cache {t2:.3} s ({:.1}%)",
        mib(total), mib(sizes[0]), mib(sizes[1]), mib(layer_bytes), mib(peak), mib(bound), 100.0 * t2 / t1
    );
    assert!(peak < bound, "peak RSS {peak} over {bound}");
    assert!(t2 < 0.1 * t1, "second load {t2:.3} s vs first {t1:.3} s");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    // The layers really are Q4_K (with the Q4_K_M mix's Q6_K).
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let g = spillway::weights::gguf::GgufFile::open(&entry).unwrap();
    let ty = |n: &str| g.tensor(n).unwrap().ggml_type.to_string();
    assert_eq!(ty("blk.5.ffn_gate.weight"), "Q4_K");
    assert_eq!(ty("output.weight"), "Q6_K");
    assert_eq!(ty("blk.0.ffn_down.weight"), "Q6_K");
}

/// The chat-template arguments the fixture's reference used
/// (`enable_thinking`), from its reference.json.
fn thinking_of(dir: &Path) -> Option<bool> {
    let text = std::fs::read(dir.join("reference.json")).ok()?;
    let r: serde_json::Value = serde_json::from_slice(&text).unwrap();
    r["prompt"]["chat_template_kwargs"]["enable_thinking"].as_bool()
}

/// `router_topk_ids.{layer}` of a fixture: each token's experts.
fn reference_routes(dir: &Path, layer: usize) -> Vec<Vec<u32>> {
    let t =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids = &t[&format!("router_topk_ids.{layer}")];
    ids.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// Qwen3 (q/k norms, explicit head size, thinking template), Qwen3-MoE
/// (routing, stacked experts from per-expert checkpoint tensors) and Gemma
/// 3 (sandwich norms, scaled embeddings, GELU, sliding-window layers with
/// their own rotary base, query_pre_attn_scalar): prompt ids, f32 logits
/// within 1e-3, greedy tokens, and for the MoE the experts every prompt
/// token was routed to, against transformers; and Llama 3.1's rotary
/// scaling (llama3_rope_tiny, made by tests/reference/llama3_rope_fixture.py;
/// leaving the scaling out moves its logits by 0.7). Q8_0's logit error
/// stays bounded.
#[test]
fn qwen3_moe_gemma3_and_llama3_rope_match_transformers() {
    let cache = tempfile::tempdir().unwrap();
    for name in [
        "qwen3_tiny_text",
        "qwen3_moe_tiny",
        "gemma3_tiny_text",
        "llama3_rope_tiny",
    ] {
        let dir = fixture(name);
        let thinking = thinking_of(&dir);
        let (r, e, ids, _) = stored_matches_reference(name, thinking, cache.path());
        if name == "qwen3_moe_tiny" {
            for layer in 0..2 {
                let want = reference_routes(&dir, layer);
                let got = &e.last_routes()[layer];
                let k = want[0].len();
                for (t, w) in want.iter().enumerate() {
                    let mut a = got[t * k..(t + 1) * k].to_vec();
                    let mut b = w.clone();
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "{name}: layer {layer} token {t} experts");
                }
            }
        }
        // The CLI's default is a direct answer; the MoE reference thinks.
        let think: &[&str] = if thinking == Some(false) {
            &[]
        } else {
            &["--think"]
        };
        let mut args = vec!["--dtype", "f32", "--quant", "none"];
        args.extend_from_slice(think);
        let json = greedy8(&dir, &dir.join("messages.json"), &args, cache.path());
        let greedy: Vec<u32> = tokens_of(&json).into_iter().map(|t| t as u32).collect();
        assert_eq!(greedy, r.generated, "{name}: greedy");
        let mut q8 = load(&dir, Quant::Q8_0, cache.path());
        let q8_err = max_abs_diff(&q8.logits_all(&ids).unwrap(), &r.logits);
        eprintln!("{name}: Q8_0 max logit error {q8_err:.3}");
        assert!(q8_err < 1.5, "{name}: Q8_0 logit error {q8_err}");
    }
}

/// A sliding-window layer keeps only its window: a Gemma 3 prompt longer
/// than the layer's buffer (window + two passes) run in passes of 512, of 7
/// and of one token gives the same logits, though each moves the window's
/// keys to the front at different points.
#[test]
fn sliding_window_cache_agrees_across_pass_sizes() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("gemma3_tiny_text");
    let mut e = load(&dir, Quant::AsStored, cache.path());
    let vocab = e.hparams().n_vocab as u32;
    let tokens: Vec<u32> = (0..1300u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let whole = e.logits_in_passes(&tokens, 512).unwrap();
    for step in [7, 1] {
        let other = e.logits_in_passes(&tokens, step).unwrap();
        let err = max_abs_diff(&whole, &other);
        assert!(err < 1e-3, "passes of {step}: logits differ by {err}");
    }
}

/// Mixture-of-experts placement on the Qwen3-MoE fixture: with every
/// layer on disk the dense parts stay in RAM and experts are read only when
/// routed. Without an expert cache every routed expert of every pass is
/// read (each read one expert's bytes) and the greedy tokens are the RAM
/// ones; with a cache of every expert each is read once at most; with a
/// cache of 3 of 8 (least recently used out) the tokens are the same again.
/// Reading the next layer's predicted experts ahead changes no token.
#[test]
fn moe_experts_on_disk_are_read_when_routed() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("qwen3_moe_tiny");
    let r = reference(&dir);
    let chat = dir.join("messages.json");
    let base = ["--dtype", "f32", "--quant", "none", "--think"];
    let ram = greedy8(&dir, &chat, &base, cache.path());
    assert_eq!(
        tokens_of(&ram),
        r.generated.iter().map(|&t| t as i64).collect::<Vec<_>>()
    );
    assert_eq!(
        ram["experts"]["misses"].as_u64(),
        Some(0),
        "RAM layers read nothing"
    );
    // One expert's bytes in this file (bf16 gate, up and down of 32 × 64).
    let expert_bytes = 3 * 32 * 64 * 2;
    // Reading ahead off: every expert read is a routed one.
    for (cap, most_misses) in [("0", None), ("8", Some(2 * 8)), ("3", None)] {
        let mut args = base.to_vec();
        args.extend(["--disk-layers", "all", "--expert-cache", cap]);
        args.push("--no-expert-read-ahead");
        let out = greedy8(&dir, &chat, &args, cache.path());
        assert_eq!(
            tokens_of(&out),
            tokens_of(&ram),
            "expert cache {cap}: tokens"
        );
        assert!(out["tiers"].as_array().unwrap().iter().all(|t| t == "disk"));
        let x = &out["experts"];
        let (hits, misses) = (x["hits"].as_u64().unwrap(), x["misses"].as_u64().unwrap());
        assert_eq!(
            x["bytes_read"].as_u64(),
            Some(misses * expert_bytes),
            "cache {cap}"
        );
        assert!(misses > 0);
        match most_misses {
            Some(m) => assert!(
                misses <= m && hits > 0,
                "cache {cap}: {hits} hits, {misses} misses"
            ),
            None if cap == "0" => {
                // The prompt pass routes to 8 + 7 distinct experts, each
                // of the 7 decode passes to 2 per layer.
                assert_eq!(hits, 0);
                assert_eq!(misses, 15 + 7 * 2 * 2, "every routed expert read");
            }
            None => assert!(
                hits > 0 && misses < 15 + 7 * 2 * 2,
                "cache {cap}: {hits}/{misses}"
            ),
        }
        assert_eq!(x["read_ahead"].as_u64(), Some(0));
    }
    // Reading ahead on (the default): layer 0 predicts layer 1's experts in
    // each pass (2 a decode pass; the prompt's are at most the 8 this model
    // has, one group). The tokens are the same; every routed expert is read
    // on demand or was read ahead; a read costs one expert's bytes.
    for cap in ["0", "3"] {
        let mut args = base.to_vec();
        args.extend(["--disk-layers", "all", "--expert-cache", cap]);
        let out = greedy8(&dir, &chat, &args, cache.path());
        assert_eq!(tokens_of(&out), tokens_of(&ram), "read ahead, cache {cap}");
        let x = &out["experts"];
        let n = |k: &str| x[k].as_u64().unwrap();
        let (misses, ahead, used) = (n("misses"), n("read_ahead"), n("read_ahead_used"));
        // The last pass's reads ahead may still be in flight at the end.
        let bytes = n("bytes_read");
        assert_eq!(bytes % expert_bytes, 0, "cache {cap}: whole experts");
        assert!(
            bytes >= (misses + used) * expert_bytes && bytes <= (misses + ahead) * expert_bytes,
            "cache {cap}: {bytes} bytes for {misses} misses, {used} of {ahead} read ahead used"
        );
        assert!(
            ahead > 0 && ahead <= 8 + 7 * 2,
            "cache {cap}: {ahead} read ahead"
        );
        assert!(
            used > 0 && used <= ahead,
            "cache {cap}: {used} of {ahead} used"
        );
        if cap == "0" {
            assert_eq!(n("hits"), used, "with no cache only reads ahead hit");
            assert_eq!(misses + used, 15 + 7 * 2 * 2);
        }
    }
}

/// `plan` of Qwen3-30B-A3B (48 layers of 128 experts) under a RAM cap
/// keeps every dense part in RAM and gives the rest of the RAM to the
/// experts, evenly; with room for everything, every layer is in RAM.
#[test]
fn moe_plan_splits_layers_into_dense_parts_and_experts() {
    let config = fixture("configs/qwen3-30b-a3b/config.json");
    let plan = |ram: &str| -> serde_json::Value {
        crate::common::spillway_json(&[
            "plan",
            "--model",
            config.to_str().unwrap(),
            "--quant",
            "q4_k_m",
            "--ctx",
            "4096",
            "--ram",
            ram,
            "--vram",
            "0",
            "--disk",
            "100GiB",
            "--json",
        ])
    };
    let mut cached = Vec::new();
    for ram in ["4GiB", "8GiB"] {
        let p = plan(ram);
        let layers = p["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 48);
        let mut in_ram = 0;
        for l in layers {
            assert_eq!(l["tier"], "disk");
            assert_eq!(l["dense"]["tier"], "ram");
            let (r, d) = (
                l["experts"]["ram"].as_u64().unwrap(),
                l["experts"]["disk"].as_u64().unwrap(),
            );
            assert_eq!(r + d, 128);
            in_ram += r;
        }
        assert!(
            p["tiers"]["ram"]["peak_bytes"].as_u64().unwrap()
                <= spillway::placement::planner::parse_bytes(ram).unwrap()
        );
        cached.push(in_ram);
    }
    assert!(cached[0] > 0 && cached[1] > 2 * cached[0], "{cached:?}");
    let all = plan("24GiB");
    assert!(all["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["tier"] == "ram" && l["experts"]["disk"] == 0));
}

/// A synthetic mixture-of-experts model (the Qwen3-MoE fixture's shape,
/// random Q8_0 weights from `synthesize`, skewed router) gives the same
/// greedy tokens in RAM, with every layer on disk and no expert cache, and
/// with a cache of 2 experts a layer.
#[test]
fn synthetic_moe_tokens_do_not_depend_on_placement() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("moe.gguf");
    let config = fixture("qwen3_moe_tiny/config.json");
    crate::common::spillway_json(&[
        "synthesize",
        "--config",
        config.to_str().unwrap(),
        "--quant",
        "q8_0",
        "-o",
        model.to_str().unwrap(),
        "--router-skew",
        "0.5",
        "--json",
    ]);
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--raw",
            "--prompt",
            "the robot fills the kettle and pours the water",
            "--greedy",
            "--ignore-eos",
            "--max-tokens",
            "12",
            "--json",
        ];
        args.extend_from_slice(extra);
        crate::common::spillway_json(&args)
    };
    let ram = run(&[]);
    let tokens = tokens_of(&ram);
    assert_eq!(tokens.len(), 12);
    for cache in ["0", "2"] {
        let disk = run(&["--disk-layers", "all", "--expert-cache", cache]);
        assert_eq!(tokens_of(&disk), tokens, "expert cache {cache}");
        assert!(disk["experts"]["misses"].as_u64().unwrap() > 0);
    }
}

/// The GPU tier's code path (candle blocks, run on the CPU device by the
/// simulated tier): Qwen3's q/k norms and Gemma 3's sandwich norms, GELU,
/// attention scale, local rotary base and sliding window give the fixtures'
/// greedy tokens with every layer and the head on the device.
#[test]
fn device_blocks_run_qwen3_and_gemma3() {
    let cache = tempfile::tempdir().unwrap();
    for name in ["qwen3_tiny_text", "gemma3_tiny_text"] {
        let dir = fixture(name);
        let r = reference(&dir);
        let args = [
            "--dtype",
            "f32",
            "--quant",
            "none",
            "--vram",
            "2GiB",
            "--mode",
            "full-gpu",
            "--simulate-with-candle",
        ];
        let out = greedy8(&dir, &dir.join("messages.json"), &args, cache.path());
        assert!(
            out["tiers"].as_array().unwrap().iter().all(|t| t == "gpu"),
            "{name}: {}",
            out["tiers"]
        );
        let got: Vec<u32> = tokens_of(&out).into_iter().map(|t| t as u32).collect();
        assert_eq!(got, r.generated, "{name}: greedy on the device path");
    }
}

/// A GPU layer keeps its KV cache in RAM when VRAM holds the layer but not
/// its cache too (the planner's choice, as llama.cpp's `--no-kv-offload`):
/// the host caches the keys and values and attends, the device runs the
/// rest. The fixture's greedy tokens on the candle path and the simulated
/// tier, with the cache moving between device and host mid-reply.
#[test]
fn gpu_layers_keep_their_kv_cache_in_ram_when_vram_is_short() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("qwen3_tiny_text");
    let r = reference(&dir);
    let common = ["--quant", "none", "--ctx", "32768"];
    let plan = |vram: &str, mode: &str| -> serde_json::Value {
        let mut args = vec!["plan", "--model", dir.to_str().unwrap()];
        args.extend(common);
        args.extend(["--cache-type-k", "f32", "--cache-type-v", "f32"]);
        args.extend(["--vram", vram, "--mode", mode, "--json"]);
        crate::common::spillway_json(&args)
    };
    let kv_tiers = |j: &serde_json::Value, key: &str| -> Vec<String> {
        j["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l[key].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_else(|| {
                j["kv_tiers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect()
            })
    };
    // Everything on the GPU needs `peak`; with half the head's bytes less,
    // full-gpu keeps one layer's cache in RAM (the planner's least), and
    // two GPU layers without the head keep both caches on the device.
    let ample = plan("4GiB", "full-gpu");
    assert_eq!(kv_tiers(&ample, "kv_tier"), ["gpu", "gpu"]);
    let peak = ample["tiers"]["gpu"]["peak_bytes"].as_u64().unwrap();
    let vram = (peak - ample["head"]["bytes"].as_u64().unwrap() / 2).to_string();
    let short = plan(&vram, "full-gpu");
    assert_eq!(kv_tiers(&short, "kv_tier"), ["ram", "gpu"]);
    assert_eq!(short["head"]["tier"], "gpu");
    let one_layer_kv = ample["tiers"]["gpu"]["kv_cache_bytes"].as_u64().unwrap() / 2;
    assert_eq!(
        short["tiers"]["ram"]["kv_cache_bytes"].as_u64().unwrap(),
        one_layer_kv
    );
    assert!(short["tiers"]["gpu"]["peak_bytes"].as_u64().unwrap() <= vram.parse().unwrap());
    assert_eq!(kv_tiers(&plan(&vram, "2"), "kv_tier"), ["gpu", "gpu"]);
    // Not even the weights with every cache in RAM: a clear error.
    let mut args = vec!["plan", "--model", dir.to_str().unwrap()];
    args.extend(common);
    args.extend(["--vram", "100MiB", "--mode", "full-gpu"]);
    let out = crate::common::spillway(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("full-gpu needs"));

    for simulate in [true, false] {
        let mut args = vec!["--dtype", "f32"];
        args.extend(common);
        args.extend(["--vram", &vram, "--mode", "full-gpu"]);
        if simulate {
            args.push("--simulate-with-candle");
        }
        let out = greedy8(&dir, &dir.join("messages.json"), &args, cache.path());
        assert_eq!(
            kv_tiers(&out, "kv_tiers"),
            ["ram", "gpu"],
            "candle: {simulate}"
        );
        assert_eq!(out["tiers"], serde_json::json!(["gpu", "gpu"]));
        let got: Vec<u32> = tokens_of(&out).into_iter().map(|t| t as u32).collect();
        assert_eq!(
            got, r.generated,
            "candle: {simulate}: a GPU layer's cache in RAM"
        );
        // Mid-reply the cache moves to the device and back (the layer
        // stays), then the layers go to RAM and back.
        args.extend([
            "--replace-every",
            "2",
            "--replace-modes",
            "2,full-gpu,cpu-only,full-gpu",
        ]);
        let out = greedy8(&dir, &dir.join("messages.json"), &args, cache.path());
        let got: Vec<u32> = tokens_of(&out).into_iter().map(|t| t as u32).collect();
        assert_eq!(
            got, r.generated,
            "candle: {simulate}: caches moved mid-reply"
        );
        let moves = out["replacements"].as_array().unwrap();
        assert!(moves.len() >= 3, "{moves:?}");
        assert_eq!(moves[0]["moved_layers"], 1, "{moves:?}");
        assert_eq!(moves[0]["kv_tiers"], serde_json::json!(["gpu", "gpu"]));
        assert_eq!(moves[1]["kv_tiers"], serde_json::json!(["ram", "gpu"]));
        assert_eq!(moves[2]["tiers"], serde_json::json!(["ram", "ram"]));
    }
}
