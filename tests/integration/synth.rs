//! `spillway synthesize`: random weights in a real model's exact shape.

use std::path::{Path, PathBuf};

use spillway::placement::footprint::Footprint;
use spillway::placement::Quant;
use spillway::weights::gguf::GgufFile;

use crate::common::{path_str, spillway, spillway_json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A small Mistral-shaped config whose rows are whole K-quant blocks, so
/// the 4-bit scheme's Q4_K/Q6_K mix appears as it does at 7B.
fn small_mistral(dir: &Path) -> PathBuf {
    let mut c: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("configs/mistral-7b-instruct-v0.3/config.json")).unwrap(),
    )
    .unwrap();
    for (k, v) in [
        ("hidden_size", 512),
        ("intermediate_size", 1536),
        ("num_hidden_layers", 8),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 2),
        ("vocab_size", 4096),
    ] {
        c[k] = v.into();
    }
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    p
}

fn synthesize(config: &Path, quant: &str, out: &Path, seed: &str) -> serde_json::Value {
    spillway_json(&[
        "synthesize",
        "--config",
        path_str(config),
        "--quant",
        quant,
        "-o",
        path_str(out),
        "--seed",
        seed,
        "--json",
    ])
}

/// The tensor table (name, type, bytes) the planner gives from config.json
/// is the written file's, to the byte, under every scheme; the same seed
/// gives the same file and another seed another one.
#[test]
fn synthetic_files_match_the_plan_to_the_byte_and_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_mistral(dir.path());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    for quant in ["q4_k_m", "q8_0", "f16", "bf16"] {
        let out = dir.path().join(format!("m-{quant}.gguf"));
        let r = synthesize(&config, quant, &out, "7");
        let q: Quant = quant.parse().unwrap();
        let planned = Footprint::from_hf_config("m".into(), &cfg, q, 512, 64).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let hp = spillway::model::hparams::HParams::from_gguf(&g).unwrap();
        let written = Footprint::from_gguf(&g, &hp, 512, 64);
        let table = |f: &Footprint| {
            let mut t: Vec<_> = f
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.ggml_type, t.bytes))
                .collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        assert_eq!(table(&planned), table(&written), "{quant}");
        assert_eq!(planned.layer_bytes, written.layer_bytes, "{quant}");
        assert_eq!(planned.weights_bytes(), written.weights_bytes(), "{quant}");
        assert_eq!(r["weight_bytes"].as_u64(), Some(written.weights_bytes()));
        assert_eq!(r["file_bytes"].as_u64(), Some(g.file_size));
        assert!(spillway::weights::synth::is_synthetic(&g));
        if quant == "q4_k_m" {
            let types: std::collections::BTreeSet<String> =
                g.tensors.iter().map(|t| t.ggml_type.to_string()).collect();
            assert!(
                types.contains("Q4_K") && types.contains("Q6_K"),
                "{types:?}"
            );
        }
    }
    let a = std::fs::read(dir.path().join("m-q4_k_m.gguf")).unwrap();
    let again = dir.path().join("again.gguf");
    synthesize(&config, "q4_k_m", &again, "7");
    assert!(a == std::fs::read(&again).unwrap(), "same seed, same bytes");
    synthesize(&config, "q4_k_m", &again, "8");
    let b = std::fs::read(&again).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a != b, "another seed, other weights");
}

/// A synthetic model loads with a warning, answers a prompt through its
/// tokenizer, and its activations stay finite through every layer
/// (perplexity is a finite number).
#[test]
fn a_synthetic_model_runs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_mistral(dir.path());
    let out = dir.path().join("m.gguf");
    synthesize(&config, "q4_k_m", &out, "1");
    let run = spillway(&[
        "generate",
        "--model",
        path_str(&out),
        "--prompt",
        "Name the capital of France.",
        "--greedy",
        "--max-tokens",
        "8",
        "--ignore-eos",
        "--threads",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("synthetic weights — speed tests only"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["generated_tokens"].as_array().unwrap().len(), 8);
    assert!(v["prompt_tokens"].as_array().unwrap().len() > 5);
    let ppl = spillway_json(&[
        "perplexity",
        "--model",
        path_str(&out),
        "--file",
        path_str(&fixtures().join("ppl.txt")),
        "--ctx",
        "128",
        "--threads",
        "2",
        "--json",
    ]);
    let p = ppl["ppl"].as_f64().expect("a finite perplexity");
    assert!(p.is_finite() && p > 1.0 && p < 1e6, "ppl {p}");
}

/// A vision-language shape (the Qwen2.5-VL fixture's config beside its
/// preprocessor config and chat template) gets its tower, the image
/// tokens at the config's ids, and answers an image prompt.
#[test]
fn a_synthetic_vision_model_reads_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("qwen2_5_vl_tiny");
    for f in [
        "config.json",
        "preprocessor_config.json",
        "chat_template.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let out = dir.path().join("vl.gguf");
    synthesize(&dir.path().join("config.json"), "q8_0", &out, "3");
    let g = GgufFile::open(&out).unwrap();
    assert!(g.tensors.iter().any(|t| t.name == "v.merger.fc2.weight"));
    let v = spillway_json(&[
        "generate",
        "--model",
        path_str(&out),
        "--image",
        path_str(&src.join("image.png")),
        "--prompt",
        "Describe the image.",
        "--greedy",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(v["images"][0]["tokens"].as_u64(), Some(48));
    assert_eq!(v["generated_tokens"].as_array().unwrap().len(), 4);
}

/// llama.cpp's own GGUF library (the `gguf` package, installed by the
/// test command) reads the file, and every tensor name is one llama.cpp
/// knows for the architecture.
#[test]
fn llama_cpp_reads_the_synthetic_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_mistral(dir.path());
    let out = dir.path().join("m.gguf");
    synthesize(&config, "q4_k_m", &out, "1");
    let check = r#"
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
arch = r.fields["general.architecture"].contents()
known = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA] for i in range(64)}
names = [t.name.removesuffix(".weight").removesuffix(".bias") for t in r.tensors]
unknown = [n for n in names if n not in known]
assert arch == "llama", arch
assert not unknown, unknown
n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
emb = next(t for t in r.tensors if t.name == "token_embd.weight")
assert int(emb.shape[1]) == n_vocab, (emb.shape, n_vocab)
print(len(r.tensors))
"#;
    let run = std::process::Command::new("python3")
        .args(["-c", check, path_str(&out)])
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "gguf-py rejected the file (pip install gguf): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "75");
}
