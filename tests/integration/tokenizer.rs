//! Tokenizers built from GGUF metadata: round trips on hard text, ids equal
//! to llama.cpp's, and SentencePiece-style vocabularies.

use std::collections::BTreeMap;
use std::path::PathBuf;

use spillway::weights::gguf::{GgufFile, Value};
use spillway::weights::tokenizer::TextTokenizer;

use crate::common::{gemma3, qwen05, smollm2};

const HARD_TEXTS: [&str; 8] = [
    "Héllo wörld, ça va? Ångström naïve façade",
    "日本語のテキストと中文混合，还有한국어",
    "emoji: 🦀🚀 👩‍👩‍👧 flags 🇫🇷 and ✨",
    "tabs\tand\t\tmore tabs\n\nnew\r\nlines\n",
    "   leading and trailing spaces   ",
    "numbers 1234567890 3.14159 -42 1e-9",
    "code: fn main() { println!(\"{}\", x[0] >> 2); } // ok",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
];

fn gguf_tokenizer(path: PathBuf) -> TextTokenizer {
    let g = GgufFile::open(path).unwrap();
    TextTokenizer::from_gguf(&g).unwrap()
}

fn assert_round_trips(tok: &TextTokenizer) {
    for text in HARD_TEXTS {
        let ids = tok.encode(text, false).unwrap();
        assert!(!ids.is_empty());
        let back = tok.decode(&ids, false).unwrap();
        assert_eq!(back, text, "round trip failed for {text:?} via {ids:?}");
    }
}

#[test]
fn smollm2_round_trips_hard_text() {
    let tok = gguf_tokenizer(smollm2());
    assert_round_trips(&tok);
    // Special tokens are matched whole, not spelled out.
    let ids = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(ids[0], 1);
    assert!(!tok.special.add_bos);
    assert!(tok.is_end_of_generation(2), "<|im_end|> ends a turn");
}

#[test]
fn qwen2_round_trips_hard_text() {
    let tok = gguf_tokenizer(qwen05());
    assert_round_trips(&tok);
    let im_end = tok.encode("<|im_end|>", false).unwrap();
    assert_eq!(im_end, vec![151645]);
    assert!(tok.is_end_of_generation(151645));
}

/// Reference ids from llama.cpp's `llama-tokenize` on the same GGUF files
/// (see docs/BENCHMARKS.md for how they were produced).
#[test]
fn ids_match_llama_cpp() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/llama_cpp_tokens.json")).unwrap();
    for (model, path) in [
        ("smollm2", smollm2()),
        ("qwen05", qwen05()),
        ("gemma3", gemma3()),
    ] {
        let tok = gguf_tokenizer(path);
        let cases = reference[model].as_array().expect("cases per model");
        assert!(!cases.is_empty());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, false).unwrap();
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{model}: {:?}: ids differ from token {at}: {:?} vs llama.cpp's {:?}",
                    text.chars().take(60).collect::<String>(),
                    &got[at..(at + 8).min(got.len())],
                    &want[at..(at + 8).min(want.len())]
                );
            }
            assert_eq!(got.len(), want.len(), "{model}: {text:?}");
        }
    }
}

/// A SentencePiece-style llama vocabulary as GGUF stores it (pieces with
/// scores, byte tokens, no merges) must tokenize as the Hugging Face BPE it
/// came from. The vocabulary is the Mistral-style fixture's; scores follow
/// its merge order, as SentencePiece's do.
#[test]
fn sentencepiece_vocabulary_from_gguf_matches_hugging_face() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mistral_tiny"
    ));
    let hf = TextTokenizer::from_hf_dir(&dir).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = doc["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (piece, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = piece.clone();
    }
    let mut scores = vec![0f32; tokens.len()];
    for (rank, m) in doc["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let (l, r) = match m {
            serde_json::Value::Array(p) => (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            ),
            serde_json::Value::String(s) => {
                let (l, r) = s.split_once(' ').unwrap();
                (l.to_string(), r.to_string())
            }
            _ => unreachable!(),
        };
        let id = vocab[&format!("{l}{r}")].as_u64().unwrap() as usize;
        scores[id] = -(rank as f32) - 1.0;
    }
    let specials: Vec<u64> = doc["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let types: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Value::I32(if specials.contains(&(i as u64)) {
                if i == 0 {
                    2
                } else {
                    3
                }
            } else if t.starts_with("<0x") && t.len() == 6 {
                6
            } else {
                1
            })
        })
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    metadata.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().cloned().map(Value::String).collect()),
    );
    metadata.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(scores.into_iter().map(Value::F32).collect()),
    );
    metadata.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    metadata.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    metadata.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    let g = GgufFile::from_metadata(metadata.into_iter().collect());
    let spm = TextTokenizer::from_gguf(&g).unwrap();
    assert!(spm.special.add_bos, "llama vocabularies add BOS by default");
    let texts = [
        "the keeper of the light climbed the stair",
        "[INST] What is the weather like? [/INST]",
        "Héllo wörld 日本 🦀\ttab\nnewline",
        "  two leading spaces",
    ];
    for text in texts {
        let a = spm.encode(text, false).unwrap();
        let b = hf.encode(text, false).unwrap();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(
            spm.decode(&a, false).unwrap(),
            hf.decode(&b, false).unwrap()
        );
    }
    assert_eq!(spm.encode("hi", true).unwrap()[0], 1, "BOS first");
}

/// Tokenizer files beside a GGUF are used only when they are the model's:
/// Mistral's (700 tokens) beside SmolLM2 (49,152) is refused with a notice
/// naming the file and why, and the GGUF's own tokenizer and template are
/// used (issue 16; a matching file is used, see `hf::`).
#[test]
fn tokenizer_files_beside_the_model_are_used_only_when_they_match() {
    use spillway::engine::{Engine, LoadOptions};
    let fixture = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mistral_tiny"
    ));
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.gguf");
    #[cfg(unix)]
    std::os::unix::fs::symlink(smollm2(), &model).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(smollm2(), &model).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    let mut opts = LoadOptions::new(&model);
    opts.context_length = Some(256);
    let mut e = Engine::load(&opts, &mut |_| {}).unwrap();
    let own = {
        let mut o = LoadOptions::new(smollm2());
        o.context_length = Some(256);
        Engine::load(&o, &mut |_| {}).unwrap()
    };
    assert_eq!(e.tokenizer().vocab_size(), 49152);
    assert_eq!(
        e.text_tokens("the keeper").unwrap(),
        own.text_tokens("the keeper").unwrap()
    );
    let notices: Vec<String> = e.take_notices().into_iter().map(|n| n.0).collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("tokenizer.json is not this model's tokenizer")),
        "{notices:?}"
    );
}
