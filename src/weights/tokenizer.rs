//! Tokenizers: built from a GGUF's own `tokenizer.ggml.*` metadata, or read
//! from Hugging Face `tokenizer.json` / `tokenizer_config.json` files.
//!
//! A GGUF vocabulary is turned into the same `tokenizer.json` document that
//! Hugging Face would ship for the model, and that document is handed to the
//! `tokenizers` crate. Writing the document (rather than wiring components by
//! hand) keeps each supported pre-tokenizer a few lines of data, reviewable
//! against the model's own tokenizer.json.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use super::gguf::{GgufFile, Value};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the model has no tokenizer: {0}")]
    Missing(String),
    #[error("tokenizer pre-type '{0}' is not supported (supported: {SUPPORTED_PRE})")]
    UnsupportedPre(String),
    #[error("tokenizer model '{0}' is not supported (gpt2 BPE and llama SentencePiece are)")]
    UnsupportedModel(String),
    #[error("malformed tokenizer: {0}")]
    Malformed(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

const SUPPORTED_PRE: &str = "default, gpt2, smollm, qwen2, llama-bpe, llama3";

/// Token ids and strings the engine needs next to the tokenizer proper.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Every token that ends a turn (EOS, EOT, `<|im_end|>`...).
    pub end_of_generation: Vec<u32>,
    /// Whether plain text gets BOS prepended.
    pub add_bos: bool,
}

/// A tokenizer plus what chat needs: special tokens and the chat template.
pub struct TextTokenizer {
    inner: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("special", &self.special)
            .finish()
    }
}

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Names of tokens that end a turn in the chat formats Spillway knows.
const END_OF_TURN_NAMES: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
];

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex})
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre_tokenizer, ignore_merges) for a gpt2-style BPE `pre` type.
fn bpe_pre(pre: &str) -> Result<(Json, Json, bool), TokenizerError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => (Json::Null, byte_level(true), false),
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    let arr = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| TokenizerError::Missing(format!("metadata {key} is absent")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| TokenizerError::Malformed(format!("{key} holds a non-string")))
        })
        .collect()
}

fn token_id(g: &GgufFile, key: &str, n_vocab: usize) -> Option<u32> {
    g.get(key)
        .and_then(Value::as_u64)
        .filter(|&id| (id as usize) < n_vocab)
        .map(|id| id as u32)
}

/// SentencePiece vocabularies in GGUF carry scores, not merges. Hugging Face's
/// converter derives merges the same way: every split of a piece into two
/// pieces that exist is a merge, ranked by the merged piece's score (higher
/// merges first), so BPE reproduces SentencePiece's greedy choice.
///
/// The work is bounded: every split hashes the piece's bytes, so a vocabulary
/// whose pieces add up to more than [`MAX_MERGE_WORK`] bytes hashed (real ones
/// need a few tens of millions) is refused rather than ground through.
fn merges_from_scores(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
) -> Result<Vec<(String, String)>, TokenizerError> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
    let mut work: u64 = 0;
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        let splits = piece.chars().count().saturating_sub(1) as u64;
        work = work.saturating_add(splits.saturating_mul(piece.len() as u64));
        if work > MAX_MERGE_WORK {
            return Err(TokenizerError::Malformed(format!(
                "the SentencePiece vocabulary's pieces are too long to derive merges from (token {id} is {} bytes)",
                piece.len()
            )));
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                ranked.push((score, li, ri, l.to_string(), r.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect())
}

/// Bytes hashed while deriving SentencePiece merges, at most.
const MAX_MERGE_WORK: u64 = 1 << 28;

/// Metadata keys of a converted GGUF holding a Hugging Face folder's files.
pub const HF_TOKENIZER_JSON: &str = "spillway.hf.tokenizer_json";
pub const HF_TOKENIZER_CONFIG: &str = "spillway.hf.tokenizer_config_json";
pub const HF_CHAT_TEMPLATE: &str = "spillway.hf.chat_template_json";

impl TextTokenizer {
    /// Builds the tokenizer stored in a GGUF's metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        // A GGUF converted by Spillway from a Hugging Face folder carries
        // the folder's tokenizer files as they were.
        if let Some(json) = g.get(HF_TOKENIZER_JSON).and_then(Value::as_str) {
            let text = |k: &str| g.get(k).and_then(Value::as_str).map(str::as_bytes);
            return Self::from_hf_files(
                json.as_bytes(),
                text(HF_TOKENIZER_CONFIG),
                text(HF_CHAT_TEMPLATE),
            );
        }
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenizerError::Missing("no tokenizer.ggml.model".into()))?;
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let n_vocab = tokens.len();
        let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
            None => vec![1; n_vocab],
        };
        if types.len() != n_vocab {
            return Err(TokenizerError::Malformed(format!(
                "{} token types for {n_vocab} tokens",
                types.len()
            )));
        }
        // Control (3), user-defined (4) and unknown (2) tokens are matched
        // whole before the model sees the text, as Hugging Face does.
        let added: Vec<Json> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types[*i], 2..=4))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": types[i] != 4})
            })
            .collect();
        let vocab: serde_json::Map<String, Json> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        if vocab.len() != n_vocab {
            return Err(TokenizerError::Malformed(
                "the vocabulary repeats a token".into(),
            ));
        }
        let add_bos_default;
        let doc = match model {
            "gpt2" => {
                add_bos_default = false;
                let pre = g
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let (normalizer, pre_tokenizer, ignore_merges) = bpe_pre(pre)?;
                let merges = string_array(g, "tokenizer.ggml.merges")?;
                json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": added, "normalizer": normalizer,
                    "pre_tokenizer": pre_tokenizer, "post_processor": null,
                    "decoder": byte_level(true),
                    "model": {"type": "BPE", "dropout": null, "unk_token": null,
                        "continuing_subword_prefix": null, "end_of_word_suffix": null,
                        "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                        "vocab": vocab, "merges": merges}
                })
            }
            "llama" => {
                add_bos_default = true;
                let scores: Vec<f32> = g
                    .get("tokenizer.ggml.scores")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
                    .unwrap_or_default();
                let merges = merges_from_scores(&tokens, &scores, &types)?;
                let unk = token_id(g, "tokenizer.ggml.unknown_token_id", n_vocab)
                    .map(|id| tokens[id as usize].to_string());
                let prepend = g
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if prepend {
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                json!({
                    "version": "1.0", "truncation": null, "padding": null,
                    "added_tokens": added, "normalizer": null,
                    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
                        "prepend_scheme": if prepend { "first" } else { "never" }, "split": false},
                    "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                        "continuing_subword_prefix": null, "end_of_word_suffix": null,
                        "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                        "vocab": vocab, "merges": merges}
                })
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let inner = Tokenizer::from_bytes(doc.to_string().as_bytes())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let named = |id: u32| (id, tokens[id as usize].to_string());
        let bos = token_id(g, "tokenizer.ggml.bos_token_id", n_vocab).map(named);
        let eos = token_id(g, "tokenizer.ggml.eos_token_id", n_vocab).map(named);
        let mut end = Vec::new();
        end.extend(eos.as_ref().map(|e| e.0));
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            end.extend(token_id(g, key, n_vocab));
        }
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == 3 && END_OF_TURN_NAMES.contains(t) {
                end.push(i as u32);
            }
        }
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(add_bos_default);
        let chat_template = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self::assemble(inner, bos, eos, end, add_bos, chat_template))
    }

    fn assemble(
        inner: Tokenizer,
        bos: Option<(u32, String)>,
        eos: Option<(u32, String)>,
        mut end_of_generation: Vec<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Self {
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        TextTokenizer {
            inner,
            special: SpecialTokens {
                add_bos: add_bos && bos.is_some(),
                bos,
                eos,
                end_of_generation,
            },
            chat_template,
        }
    }

    /// Reads `tokenizer.json` in `dir`, with `tokenizer_config.json` and
    /// `chat_template.json` when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, TokenizerError> {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(TokenizerError::Malformed(format!("{name}: {e}"))),
            }
        };
        let tokenizer = read("tokenizer.json")?.ok_or_else(|| {
            TokenizerError::Missing(format!("{} has no tokenizer.json", dir.display()))
        })?;
        Self::from_hf_files(
            &tokenizer,
            read("tokenizer_config.json")?.as_deref(),
            read("chat_template.json")?.as_deref(),
        )
        .map_err(|e| match e {
            TokenizerError::Tokenizers(m) => {
                TokenizerError::Tokenizers(format!("{}: {m}", dir.display()))
            }
            e => e,
        })
    }

    /// From the texts of `tokenizer.json`, `tokenizer_config.json` and
    /// `chat_template.json` (a folder's files, or their copies a converted
    /// GGUF carries under `spillway.hf.*`).
    pub fn from_hf_files(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        chat_template_json: Option<&[u8]>,
    ) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| TokenizerError::Tokenizers(format!("tokenizer.json: {e}")))?;
        let parse = |name: &str, bytes: Option<&[u8]>| -> Result<Option<Json>, TokenizerError> {
            bytes
                .map(|b| {
                    serde_json::from_slice(b)
                        .map_err(|e| TokenizerError::Malformed(format!("{name}: {e}")))
                })
                .transpose()
        };
        let config = parse("tokenizer_config.json", tokenizer_config)?.unwrap_or(Json::Null);
        let token_str = |v: &Json| -> Option<String> {
            match v {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
                _ => None,
            }
        };
        let with_id = |s: Option<String>| s.and_then(|s| inner.token_to_id(&s).map(|id| (id, s)));
        let bos = with_id(config.get("bos_token").and_then(token_str));
        let eos = with_id(config.get("eos_token").and_then(token_str));
        let mut chat_template = config.get("chat_template").and_then(template_value);
        if let Some(t) = parse("chat_template.json", chat_template_json)?
            .and_then(|j| j.get("chat_template").and_then(template_value))
        {
            chat_template = Some(t);
        }
        let mut end: Vec<u32> = eos.iter().map(|e| e.0).collect();
        for name in END_OF_TURN_NAMES {
            end.extend(inner.token_to_id(name));
        }
        let add_bos = config
            .get("add_bos_token")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Ok(Self::assemble(inner, bos, eos, end, add_bos, chat_template))
    }

    /// The token string of `id`, as the vocabulary writes it.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text. Special-token strings in it become their ids. With
    /// `add_bos`, BOS is prepended when the model wants it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.special.add_bos {
            ids.extend(self.special.bos.as_ref().map(|b| b.0));
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids; with `skip_special`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.special.end_of_generation.contains(&id)
    }
}

fn template_value(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        // A list of named templates: take "default".
        Json::Array(items) => items
            .iter()
            .find(|i| i.get("name").and_then(Json::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|i| i.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Streams text from tokens as they arrive, holding back bytes that do not
/// yet form whole characters. Each step decodes only a short window (the
/// tokens since the last emitted text, plus the ones before it for
/// context), so it costs O(1), not O(reply). Unlike the `tokenizers`
/// crate's stream decoder it never fails when a byte-fallback token makes an
/// earlier window decode differently (a reply that continues mid-character,
/// or a model emitting stray bytes): it waits until the text is whole.
pub struct TextStream<'a> {
    tok: &'a TextTokenizer,
    ids: Vec<u32>,
    /// Start of the context window.
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a TextTokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token and returns the new text it completes (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.ids[self.prefix..], true)?;
        if now.ends_with('\u{fffd}') || now.len() <= before.len() {
            return Ok(String::new());
        }
        // The window's earlier text normally stays a prefix; when a byte
        // token changed it, emit what follows the longest common prefix.
        let common = before
            .char_indices()
            .zip(now.chars())
            .find(|((_, a), b)| a != b)
            .map_or(before.len(), |((i, _), _)| i);
        let piece = now[common..].to_string();
        // Keep a few tokens of context so spacing rules see the text before.
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(piece)
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// Streaming gives the whole decode's text, and a stream that starts in
    /// the middle of a character (a reply continued after a re-placement,
    /// byte-fallback tokens) never fails.
    #[test]
    fn streams_whole_text_and_survives_starting_mid_character() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral_tiny");
        let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
        let text = "Grüße aus Köln, 日本語のテキスト 🚀 and more words.";
        let ids = tok.encode(text, false).unwrap();
        let mut s = TextStream::new(&tok);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&s.push(id).unwrap());
        }
        assert_eq!(out, tok.decode(&ids, true).unwrap());
        for start in 0..ids.len() {
            let mut s = TextStream::new(&tok);
            for &id in &ids[start..] {
                s.push(id).unwrap();
            }
        }
    }

    /// Deriving merges from a SentencePiece vocabulary is bounded: a piece
    /// of a million characters (every split a hash of the whole piece,
    /// 10^12 bytes hashed before) is refused at once.
    #[test]
    fn merge_derivation_is_bounded() {
        let long = "a".repeat(1 << 20);
        let tokens = vec!["a", "aa", long.as_str()];
        let started = std::time::Instant::now();
        let r = merges_from_scores(&tokens, &[0.0, 1.0, 2.0], &[1, 1, 1]);
        assert!(r.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            merges_from_scores(&tokens[..2], &[0.0, 1.0], &[1, 1]).unwrap(),
            vec![("a".to_string(), "a".to_string())]
        );
    }
}
