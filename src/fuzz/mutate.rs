//! Mutations: GGUF files as structures (metadata values, tensor shapes and
//! types, the table's counts), text formats token by token, anything as
//! bytes.

use std::io::Cursor;

use super::{targets::HF_SEPARATOR, Rng, Target};
use crate::weights::gguf::{GgufFile, Value};
use crate::weights::gguf_write::{GgufWriter, PlannedTensor};

/// Integers at the edges where sizes overflow, wrap or exhaust memory.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    3,
    7,
    255,
    65_535,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    (1 << 40) + 1,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// One new input from the corpus.
pub fn mutate(target: Target, corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let base = rng.pick(corpus).clone();
    let mut out = match target {
        Target::Gguf | Target::Model if !rng.chance(4) => {
            gguf_structure(&base, rng).unwrap_or(base)
        }
        Target::Safetensors => safetensors(&base, rng),
        t if t.is_text() => text(&base, t, rng),
        _ => base,
    };
    // Some byte-level noise on top, more for binary formats.
    let rounds = if target.is_text() {
        usize::from(rng.chance(4))
    } else {
        rng.below(3)
    };
    for _ in 0..rounds {
        bytes(&mut out, corpus, rng);
    }
    out
}

/// Byte mutations: flips, interesting integers at any offset, cuts,
/// duplicated or removed spans, and splices with another input.
pub fn bytes(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(8) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.next_u64() as u8,
        2 => {
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let v = rng.pick(&INTERESTING).to_le_bytes();
            let end = (at + width).min(data.len());
            data[at..end].copy_from_slice(&v[..end - at]);
        }
        3 => data.truncate(at),
        4 => {
            let len = rng.below(64.min(data.len() - at)) + 1;
            let span = data[at..at + len.min(data.len() - at)].to_vec();
            let to = rng.below(data.len());
            data.splice(to..to, span);
        }
        5 => {
            let len = rng.below(64).min(data.len() - at);
            data.drain(at..at + len);
        }
        6 => {
            let other = rng.pick(corpus);
            if !other.is_empty() {
                let from = rng.below(other.len());
                let len = rng.below(256).min(other.len() - from);
                let end = (at + len).min(data.len());
                data.splice(at..end, other[from..from + len].iter().copied());
            }
        }
        _ => {
            for _ in 0..rng.below(16) + 1 {
                let i = rng.below(data.len());
                data[i] = rng.next_u64() as u8;
            }
        }
    }
}

/// A GGUF's metadata (less the alignment, which the writer adds) and tensor
/// table, as the writer takes them.
fn parts(g: &GgufFile) -> (Vec<(String, Value)>, Vec<PlannedTensor>) {
    let meta = g
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = g
        .tensors
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    (meta, tensors)
}

/// The header and table written anew, followed by `base`'s tensor bytes as
/// they were (the writer pads its table to the data's alignment).
fn rebuild(
    base: &[u8],
    g: &GgufFile,
    meta: &[(String, Value)],
    tensors: Vec<PlannedTensor>,
) -> Option<Vec<u8>> {
    let data_start = g
        .tensors
        .iter()
        .map(|t| t.file_offset)
        .min()
        .unwrap_or(base.len() as u64) as usize;
    let w = GgufWriter::new(Cursor::new(Vec::new()), meta, tensors).ok()?;
    let mut out = w.into_header().into_inner();
    out.extend_from_slice(&base[data_start.min(base.len())..]);
    Some(out)
}

/// A GGUF re-written with its metadata or tensor table changed; the tensor
/// bytes are carried over as they were.
fn gguf_structure(base: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let g = GgufFile::from_bytes(base, std::path::Path::new("seed")).ok()?;
    let (mut meta, mut tensors) = parts(&g);
    for _ in 0..rng.below(3) + 1 {
        match rng.below(10) {
            // The sizes that matter most: counts, lengths, dimensions.
            0..=3 if !meta.is_empty() => {
                let sized: Vec<usize> = (0..meta.len())
                    .filter(|&i| meta[i].1.as_u64().is_some())
                    .collect();
                let i = if sized.is_empty() || rng.chance(4) {
                    rng.below(meta.len())
                } else {
                    *rng.pick(&sized)
                };
                meta[i].1 = value(&meta[i].1, rng);
            }
            4 if !meta.is_empty() => {
                let i = rng.below(meta.len());
                meta.remove(i);
            }
            5 if !meta.is_empty() => {
                // Arrays (the vocabulary, scores, merges) cut or grown.
                let arrays: Vec<usize> = (0..meta.len())
                    .filter(|&i| meta[i].1.as_array().is_some())
                    .collect();
                if !arrays.is_empty() {
                    let i = *rng.pick(&arrays);
                    if let Value::Array(items) = &mut meta[i].1 {
                        match rng.below(3) {
                            0 => items.truncate(rng.below(items.len() + 1)),
                            1 if !items.is_empty() => {
                                let j = rng.below(items.len());
                                items[j] = value(&items[j], rng);
                            }
                            _ if !items.is_empty() => {
                                let j = rng.below(items.len());
                                let dup = items[j].clone();
                                items.push(dup);
                            }
                            _ => {}
                        }
                    }
                }
            }
            6 if !tensors.is_empty() => {
                let i = rng.below(tensors.len());
                let t = &mut tensors[i];
                let d = rng.below(t.shape.len());
                t.shape[d] = match rng.below(3) {
                    0 => *rng.pick(&INTERESTING) as usize,
                    1 => t.shape[d].saturating_mul(2),
                    _ => t.shape[d] / 2,
                };
            }
            7 if !tensors.is_empty() => {
                let i = rng.below(tensors.len());
                tensors.remove(i);
            }
            8 if !tensors.is_empty() => {
                let i = rng.below(tensors.len());
                let types = [
                    crate::weights::GgmlType::F32,
                    crate::weights::GgmlType::F16,
                    crate::weights::GgmlType::Q8_0,
                    crate::weights::GgmlType::Q4K,
                    crate::weights::GgmlType::Q6K,
                ];
                tensors[i].ggml_type = *rng.pick(&types);
            }
            _ if !tensors.is_empty() => {
                // A tensor renamed (a block index beyond the count, a
                // duplicate name).
                let i = rng.below(tensors.len());
                let j = rng.below(tensors.len());
                tensors[i].name = match rng.below(3) {
                    0 => tensors[j].name.clone(),
                    1 => format!("blk.{}.attn_q.weight", rng.pick(&INTERESTING)),
                    _ => tensors[i].name.replace("blk.0.", "blk.1."),
                };
            }
            _ => {}
        }
    }
    rebuild(base, &g, &meta, tensors)
}

/// `base` (a GGUF) with metadata entries set (`Some`) or removed (`None`),
/// the tensor table and bytes unchanged: hand-edited files for tests.
pub fn with_metadata(base: &[u8], edits: &[(&str, Option<Value>)]) -> Option<Vec<u8>> {
    let g = GgufFile::from_bytes(base, std::path::Path::new("base")).ok()?;
    // Only a file with tensors: its data start is where the table ends.
    g.tensors.first()?;
    let (mut meta, tensors) = parts(&g);
    for (key, v) in edits {
        meta.retain(|(k, _)| k != key);
        if let Some(v) = v {
            meta.push((key.to_string(), v.clone()));
        }
    }
    rebuild(base, &g, &meta, tensors)
}

/// A metadata value changed: an edge-case integer of the same or another
/// width, a float, a string, or an empty array.
fn value(v: &Value, rng: &mut Rng) -> Value {
    let n = *rng.pick(&INTERESTING);
    match rng.below(8) {
        0 => Value::U32(n as u32),
        1 => Value::I32(n as i32),
        2 => Value::U64(n),
        3 => Value::I64(n as i64),
        4 => Value::F32(*rng.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30])),
        5 => Value::String("x".repeat(rng.below(300))),
        6 => Value::Array(Vec::new()),
        _ => match v.as_u64() {
            Some(x) => Value::U64(x.saturating_add(1)),
            None => Value::U32(n as u32),
        },
    }
}

/// A Hugging Face input: the config.json half mutated as text, or the
/// safetensors half as bytes (its header first of all).
fn safetensors(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let at = base
        .windows(HF_SEPARATOR.len())
        .position(|w| w == HF_SEPARATOR)
        .unwrap_or(base.len());
    let (config, rest) = base.split_at(at);
    let mut config = config.to_vec();
    let mut weights = rest.get(HF_SEPARATOR.len()..).unwrap_or(&[]).to_vec();
    if rng.chance(2) {
        config = text(&config, Target::Safetensors, rng);
    } else if weights.len() > 8 {
        let header = (u64::from_le_bytes(weights[..8].try_into().unwrap_or([0; 8])) as usize)
            .min(weights.len() - 8);
        if rng.chance(3) {
            let v = rng.pick(&INTERESTING).to_le_bytes();
            weights[..8].copy_from_slice(&v);
        } else {
            let mut h = weights[8..8 + header].to_vec();
            h = text(&h, Target::Safetensors, rng);
            let len = (h.len() as u64).to_le_bytes();
            let mut w = len.to_vec();
            w.extend_from_slice(&h);
            w.extend_from_slice(&weights[8 + header..]);
            weights = w;
        }
    } else {
        bytes(&mut weights, &[], rng);
    }
    config.extend_from_slice(HF_SEPARATOR);
    config.extend_from_slice(&weights);
    config
}

/// Text mutations: numbers replaced by edge cases, format tokens inserted,
/// spans deleted or repeated, strings replaced by hostile ones.
pub fn text(base: &[u8], target: Target, rng: &mut Rng) -> Vec<u8> {
    let mut s = base.to_vec();
    for _ in 0..rng.below(3) + 1 {
        if s.is_empty() {
            s.extend_from_slice(rng.pick(tokens(target)).as_bytes());
            continue;
        }
        match rng.below(6) {
            0 | 1 => {
                // A number: its digits replaced.
                let starts: Vec<usize> = (0..s.len())
                    .filter(|&i| s[i].is_ascii_digit() && (i == 0 || !s[i - 1].is_ascii_digit()))
                    .collect();
                if let Some(&a) = (!starts.is_empty()).then(|| rng.pick(&starts)) {
                    let b = (a..s.len())
                        .find(|&i| !s[i].is_ascii_digit())
                        .unwrap_or(s.len());
                    let n = rng.pick(&[
                        "0",
                        "-1",
                        "1",
                        "2147483647",
                        "4294967296",
                        "18446744073709551615",
                        "99999999999999999999999",
                        "1e308",
                        "0.5",
                        "-2147483648",
                        "65536",
                    ]);
                    s.splice(a..b, n.bytes());
                }
            }
            2 => {
                let at = rng.below(s.len() + 1);
                let t = rng.pick(tokens(target));
                s.splice(at..at, t.bytes());
            }
            3 => {
                let at = rng.below(s.len());
                let len = rng.below(32).min(s.len() - at);
                s.drain(at..at + len);
            }
            4 => {
                let at = rng.below(s.len());
                let len = (rng.below(64) + 1).min(s.len() - at);
                let span = s[at..at + len].to_vec();
                for _ in 0..rng.below(4) + 1 {
                    s.splice(at..at, span.iter().copied());
                }
            }
            _ => {
                // A quoted string's content replaced.
                let quotes: Vec<usize> = (0..s.len()).filter(|&i| s[i] == b'"').collect();
                if quotes.len() >= 2 {
                    let q = rng.below(quotes.len() - 1);
                    let (a, b) = (quotes[q] + 1, quotes[q + 1]);
                    let with = rng.pick(&[
                        "../../x",
                        "",
                        "\\u0000",
                        "%s%n",
                        "{{ 'a' * 99999999 }}",
                        "<|image_pad|>",
                        "ÿÿÿÿ",
                    ]);
                    s.splice(a..b, with.bytes());
                }
            }
        }
    }
    s
}

fn tokens(target: Target) -> &'static [&'static str] {
    match target {
        Target::Template => &[
            "{% for x in range(100000) %}",
            "{% endfor %}",
            "{{ messages }}",
            "{% set x = x ~ x %}",
            "{{ 'ab' * 1000000 }}",
            "{% if %}",
            "{{ raise_exception('no') }}",
            "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
            "{{ messages[999] }}",
            "{%- ",
            " -%}",
            "}}",
            "{{",
            "|tojson",
            "|length",
            "loop.index",
            "{% generation %}",
            "{{ strftime_now('%Y') }}",
        ],
        Target::Settings => &[
            ": ", "\n", "- ", "  ", "null", "~", "[", "]", "{", "}", "&a", "*a", "!!binary",
            "mode: ", "quant: ", "ram: ", "\"", "'",
        ],
        _ => &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "null",
            "true",
            "[[[[[[[[[[",
            "1e999",
            "-0",
            "\"num_hidden_layers\": 2147483647",
            "\"min_pixels\": 1000000000000",
            "\"max_pixels\": 1",
            "\"patch_size\": 0",
            "\"text_config\": {}",
            "\"id\": \"../x\"",
            "\"messages\": []",
            "\\u",
        ],
    }
}
