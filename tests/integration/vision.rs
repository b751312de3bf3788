//! Qwen2.5-VL (RoboBrain 2.0's architecture) and Qwen3-VL (RoboBrain 2.5's)
//! against Hugging Face transformers: the tiny fixtures in
//! tests/fixtures/qwen2_5_vl_tiny and qwen3_vl_tiny (see their README.md) —
//! preprocessing, prompt ids, M-RoPE positions, the vision
//! tower, logits and greedy tokens — plus the image-aware prompt cache and
//! the CLI's task modes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use spillway::chat::template::Message;
use spillway::engine::vision::PromptImage;
use spillway::engine::{Engine, GenerateParams};
use spillway::model::sampler::SamplingParams;
use spillway::placement::Quant;
use spillway::vision::preprocess;

use super::hf::{fixture, generate_json, greedy8, load, max_abs_diff, tokens_of};

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
}

fn messages(dir: &Path) -> Vec<Message> {
    serde_json::from_slice(&std::fs::read(dir.join("messages.json")).unwrap()).unwrap()
}

fn fixture_image(engine: &Engine, dir: &Path) -> PromptImage {
    let rgb = preprocess::load(&dir.join("image.png")).unwrap();
    engine.prepare_image(&rgb, None).unwrap()
}

#[test]
fn qwen2_5_vl_matches_transformers() {
    vl_matches_transformers("qwen2_5_vl_tiny", 48);
}

/// Qwen3-VL (RoboBrain 2.5's architecture): the learned position table
/// resized to the grid, LayerNorm blocks, DeepStack features added after
/// the first text layers, interleaved M-RoPE.
#[test]
fn qwen3_vl_matches_transformers() {
    vl_matches_transformers("qwen3_vl_tiny", 66);
}

/// One vision-language fixture against its reference: preprocessing, prompt
/// ids, M-RoPE positions, the tower (and Qwen3-VL's positions and DeepStack
/// features), logits, greedy tokens on the host, on the simulated GPU tier
/// and with every text layer on disk.
fn vl_matches_transformers(name: &str, image_tokens: usize) {
    let dir = fixture(name);
    let cache = tempfile::tempdir().unwrap();
    let r = reference(&dir);
    let mut engine = load(&dir, Quant::AsStored, cache.path());
    assert!(engine.vision().is_some());

    // Preprocessing.
    let img = fixture_image(&engine, &dir);
    let grid: Vec<i64> = ints(&r["image_grid_thw"]);
    assert_eq!(
        img.prepared.grid_thw.map(|g| g as i64).to_vec(),
        grid,
        "image_grid_thw"
    );
    let px = max_abs_diff(&img.prepared.pixel_values, &f32s(&r["pixel_values"]));
    eprintln!("pixel_values max abs diff {px:.2e}");
    assert!(px < 1e-5, "pixel_values differ by {px}");

    // Prompt ids (the chat template, then <|image_pad|> expanded).
    let prompt = engine
        .chat_prompt(&messages(&dir), vec![img.clone()], "")
        .unwrap();
    let want_ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&x| x as u32).collect();
    assert_eq!(prompt.tokens, want_ids, "input_ids");

    // M-RoPE positions, 3 × N.
    let pos = engine.prompt_positions(&prompt).unwrap().unwrap();
    let want_pos = ints(&r["position_ids"]);
    let n = prompt.tokens.len();
    for (axis, row) in want_pos.chunks(n).enumerate() {
        let got: Vec<i64> = pos.iter().map(|p| p[axis] as i64).collect();
        assert_eq!(got, row, "position_ids row {axis}");
    }

    // The vision tower: patch embeddings, every block, the merged output.
    let v = engine.vision().unwrap();
    // Every block below runs on Spillway's kernels (`block_host`).
    assert!(v.tower.on_host_kernels());
    let p = &img.prepared;
    let patch = f32s(&v.tower.patch_embeds(&p.pixel_values, p.patches()).unwrap());
    let d = max_abs_diff(&patch, &f32s(&r["vision.patch_embeds"]));
    eprintln!("patch_embeds max abs diff {d:.2e}");
    assert!(d < 2e-4, "patch_embeds differ by {d}");
    if let Some(want) = r.get("vision.pos_embeds") {
        // The bilinear taps of the learned table, then their sum.
        let taps = v.tower.position_taps(p.grid_thw);
        let idx: Vec<i64> = taps.iter().flat_map(|(i, _)| i.map(|x| x as i64)).collect();
        assert_eq!(idx, ints(&r["vision.pos_interp_indices"]), "position rows");
        let w: Vec<f32> = taps.iter().flat_map(|(_, w)| *w).collect();
        let dw = max_abs_diff(&w, &f32s(&r["vision.pos_interp_weights"]));
        assert!(dw < 1e-5, "position weights differ by {dw}");
        let pe = v.tower.position_embeds(p.grid_thw).unwrap().unwrap();
        let d = max_abs_diff(&f32s(&pe), &f32s(want));
        eprintln!("pos_embeds max abs diff {d:.2e}");
        assert!(d < 1e-5, "pos_embeds differ by {d}");
    }
    let mut blocks = Vec::new();
    let out = v
        .tower
        .encode(&p.pixel_values, p.grid_thw, Some(&mut blocks))
        .unwrap();
    for (i, b) in blocks.iter().enumerate() {
        let d = max_abs_diff(&f32s(b), &f32s(&r[&format!("vision.block_output.{i}")]));
        eprintln!("vision block {i} max abs diff {d:.2e}");
        assert!(d < 2e-4, "vision block {i} differs by {d}");
    }
    let e = max_abs_diff(&f32s(&out.embeds), &f32s(&r["image_embeds"]));
    eprintln!("image_embeds max abs diff {e:.2e}");
    assert!(e < 2e-4, "image_embeds differ by {e}");
    let want_levels = (0..)
        .take_while(|i| r.contains_key(&format!("deepstack_features.{i}")))
        .count();
    assert_eq!(out.deepstack.len(), want_levels, "DeepStack features");
    for (i, f) in out.deepstack.iter().enumerate() {
        let d = max_abs_diff(&f32s(f), &f32s(&r[&format!("deepstack_features.{i}")]));
        eprintln!("deepstack feature {i} max abs diff {d:.2e}");
        assert!(d < 2e-4, "deepstack feature {i} differs by {d}");
    }

    // Logits at every position.
    let logits = engine.logits_all_prompt(&prompt).unwrap();
    let l = max_abs_diff(&logits, &f32s(&r["logits"]));
    eprintln!("logits max abs diff {l:.2e}");
    assert!(l < 1e-3, "logits differ by {l}");

    // The 8 greedy tokens, through the CLI with the image as a chat part.
    let chat = dir.join("messages.json");
    let want = ints(&r["generated_ids"]);
    let json = greedy8(
        &dir,
        &chat,
        &["--dtype", "f32", "--quant", "none"],
        cache.path(),
    );
    assert_eq!(tokens_of(&json), want, "greedy tokens");
    assert_eq!(json["images"][0]["tokens"], image_tokens);

    // The GPU tier's code path (candle blocks, M-RoPE angles on the
    // device, the tower placed with it), simulated on the CPU device.
    let gpu = [
        "--quant",
        "none",
        "--ctx",
        "512",
        "--vram",
        "3GiB",
        "--mode",
        "full-gpu",
        "--simulate-with-candle",
    ];
    let json = greedy8(&dir, &chat, &gpu, cache.path());
    assert!(
        json["tiers"].as_array().unwrap().iter().all(|t| t == "gpu"),
        "{}",
        json["tiers"]
    );
    assert_eq!(tokens_of(&json), want, "greedy tokens on the GPU path");

    // Every text layer on disk: the image prompt reads them from there.
    let disk = ["--quant", "none", "--ctx", "512", "--disk-layers", "all"];
    let json = greedy8(&dir, &chat, &disk, cache.path());
    assert!(
        json["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "disk"),
        "{}",
        json["tiers"]
    );
    assert_eq!(tokens_of(&json), want, "greedy tokens from disk");
}

/// The fixture as llama.cpp ships a Qwen3-VL — a text GGUF (`qwen3vl`)
/// and an `mmproj` GGUF beside it, in the names and layouts of llama.cpp's
/// converter (`llama_cpp/make_pair.py`) — reads the image as the converted
/// checkpoint does: the projector found beside the model (the folder
/// resolving to the model, not the projector), logits within 1e-3 and the
/// same greedy tokens; a file that is not a projector is a clear error.
#[test]
fn a_llama_cpp_gguf_and_mmproj_pair_matches_transformers() {
    let dir = fixture("qwen3_vl_tiny");
    let pair = dir.join("llama_cpp");
    let r = reference(&dir);
    let cache = tempfile::tempdir().unwrap();
    // The folder holds the model and its projector: it is the model.
    let mut engine = load(&pair, Quant::AsStored, cache.path());
    assert_eq!(engine.gguf.architecture(), Some("qwen3vl"));
    let v = engine
        .vision()
        .expect("the projector beside the model was read");
    assert_eq!(v.tower.cfg.deepstack_blocks, vec![1, 2, 3]);
    assert_eq!(v.tokens.image_pad, 612);
    let img = fixture_image(&engine, &dir);
    let prompt = engine
        .chat_prompt(&messages(&dir), vec![img.clone()], "")
        .unwrap();
    let want_ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&x| x as u32).collect();
    assert_eq!(prompt.tokens, want_ids, "input_ids");
    let p = &img.prepared;
    let out = engine
        .vision()
        .unwrap()
        .tower
        .encode(&p.pixel_values, p.grid_thw, None)
        .unwrap();
    let e = max_abs_diff(&f32s(&out.embeds), &f32s(&r["image_embeds"]));
    assert!(e < 2e-4, "image_embeds differ by {e}");
    let logits = engine.logits_all_prompt(&prompt).unwrap();
    let l = max_abs_diff(&logits, &f32s(&r["logits"]));
    eprintln!("llama.cpp pair: image_embeds {e:.2e}, logits {l:.2e}");
    assert!(l < 1e-3, "logits differ by {l}");
    let json = greedy8(&pair, &dir.join("messages.json"), &[], cache.path());
    assert_eq!(tokens_of(&json), ints(&r["generated_ids"]), "greedy tokens");

    // `plan` counts the projector's tower with the model.
    let plan = crate::common::spillway_json(&["plan", "--model", pair.to_str().unwrap(), "--json"]);
    let projector = std::fs::metadata(pair.join("mmproj-Qwen3-VL-tiny-F32.gguf"))
        .unwrap()
        .len();
    let vision = plan["vision"]["bytes"].as_u64().unwrap();
    assert!(vision > projector * 9 / 10 && vision <= projector, "{plan}");

    // Named explicitly: a text GGUF is not a projector.
    let mut opts = spillway::engine::LoadOptions::new(pair.join("Qwen3-VL-tiny-F32.gguf"));
    opts.mmproj = Some(pair.join("Qwen3-VL-tiny-F32.gguf"));
    let err = Engine::load(&opts, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("not a vision projector"), "{err}");
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    }
}

/// A second turn reuses the cached image; a different image of the same
/// size (the same tokens) is computed again, and both give what a fresh
/// engine gives.
#[test]
fn the_prompt_cache_tells_images_apart() {
    let dir = fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let mut engine = load(&dir, Quant::AsStored, cache.path());
    let never = AtomicBool::new(false);
    let img = fixture_image(&engine, &dir);
    let mut flipped = preprocess::load(&dir.join("image.png")).unwrap();
    let w = flipped.width;
    for row in flipped.data.chunks_mut(w * 3) {
        let px: Vec<[u8; 3]> = row.chunks(3).rev().map(|p| [p[0], p[1], p[2]]).collect();
        row.copy_from_slice(&px.concat());
    }
    let other = engine.prepare_image(&flipped, None).unwrap();
    assert_ne!(img.hash, other.hash);

    let msgs = messages(&dir);
    let a = engine.chat_prompt(&msgs, vec![img.clone()], "").unwrap();
    let b = engine.chat_prompt(&msgs, vec![other.clone()], "").unwrap();
    assert_eq!(a.tokens, b.tokens, "the same tokens, different pixels");
    let first = engine
        .generate_prompt(&a, &greedy(6), &never, &mut |_| {})
        .unwrap();
    let again = engine
        .generate_prompt(&a, &greedy(6), &never, &mut |_| {})
        .unwrap();
    assert_eq!(again.reused_tokens, a.tokens.len() - 1);
    assert_eq!(again.generated_tokens, first.generated_tokens);
    let swapped = engine
        .generate_prompt(&b, &greedy(6), &never, &mut |_| {})
        .unwrap();
    let image_start = a.tokens.iter().position(|&t| t == 652).unwrap();
    assert!(
        swapped.reused_tokens <= image_start,
        "reused {} tokens past the image at {image_start}",
        swapped.reused_tokens
    );
    let mut fresh = load(&dir, Quant::AsStored, cache.path());
    let want = fresh
        .generate_prompt(&b, &greedy(6), &never, &mut |_| {})
        .unwrap();
    assert_eq!(swapped.generated_tokens, want.generated_tokens);
    // A follow-up question after the reply continues the positions.
    let mut turn2 = msgs.clone();
    turn2.push(Message::new("assistant", &swapped.text));
    turn2.push(Message::new("user", "And the colours?"));
    let c = engine.chat_prompt(&turn2, vec![other], "").unwrap();
    let next = engine
        .generate_prompt(&c, &greedy(4), &never, &mut |_| {})
        .unwrap();
    let mut fresh = load(&dir, Quant::AsStored, cache.path());
    let want = fresh
        .generate_prompt(&c, &greedy(4), &never, &mut |_| {})
        .unwrap();
    assert!(next.reused_tokens > image_start);
    assert_eq!(next.generated_tokens, want.generated_tokens);
}

/// `--task pointing` words the prompt as RoboBrain does, parses the answer
/// and draws it (`--annotate`); a text-only model refuses an image.
#[test]
fn cli_tasks_and_annotation() {
    let dir = fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("annotated.png");
    let image = dir.join("image.png");
    let json = generate_json(
        &dir,
        &[
            "--prompt",
            "the red circle",
            "--image",
            image.to_str().unwrap(),
            "--task",
            "pointing",
            "--greedy",
            "--max-tokens",
            "4",
            "--annotate",
            png.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(json["task"], "pointing");
    assert!(json["shapes"]["points"].is_array());
    let saved = preprocess::load(&png).unwrap();
    assert_eq!((saved.width, saved.height), (224, 168));
    // The prompt holds RoboBrain's pointing instruction.
    let engine = load(&dir, Quant::AsStored, cache.path());
    let ids: Vec<u32> = json["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let text = engine.tokenizer().decode(&ids, false).unwrap();
    assert!(
        text.contains("the red circle. Your answer should be formatted as a list of tuples"),
        "{text}"
    );

    // A text model and an image: a clear error, no crash.
    let text_model = fixture("qwen2_tiny_text");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["generate", "--model"])
        .arg(&text_model)
        .args(["--prompt", "hi", "--image"])
        .arg(&image)
        .env("SPILLWAY_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not read images"), "{err}");
}

/// `generate --task progress` on the Qwen3-VL fixture: a folder of frames
/// (one of them mirrored) judged one question each as Robo-Dopamine asks,
/// the questions after the first reading their shared start from the KV
/// cache, the plot written; one frame, or a text model, is a clear error.
#[test]
fn progress_over_frames_from_the_command_line() {
    let dir = fixture("qwen3_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let frames = tempfile::tempdir().unwrap();
    let image = dir.join("image.png");
    let mut flipped = preprocess::load(&image).unwrap();
    let w = flipped.width;
    for row in flipped.data.chunks_mut(w * 3) {
        let px: Vec<[u8; 3]> = row.chunks(3).rev().map(|p| [p[0], p[1], p[2]]).collect();
        row.copy_from_slice(&px.concat());
    }
    std::fs::copy(&image, frames.path().join("frame_00.png")).unwrap();
    spillway::vision::annotate::write_png(flipped, &frames.path().join("frame_05.png")).unwrap();
    std::fs::copy(&image, frames.path().join("frame_10.png")).unwrap();
    let plot = frames.path().join("plot.png");
    let json = generate_json(
        &dir,
        &[
            "--quant",
            "none",
            "--task",
            "progress",
            "--frames",
            frames.path().to_str().unwrap(),
            "--prompt",
            "organize the table",
            "--progress-mode",
            "forward",
            "--max-tokens",
            "4",
            "--annotate",
            plot.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(json["task"], "progress");
    assert_eq!(json["mode"], "forward");
    let rows = json["frames"].as_array().unwrap();
    // plot.png is written after the frames were listed.
    assert_eq!(rows.len(), 3, "{json}");
    assert_eq!(rows[0]["progress"], 0.0);
    assert!(rows[1]["path"].as_str().unwrap().ends_with("frame_05.png"));
    let n = |i: usize, k: &str| rows[i][k].as_u64().unwrap();
    // Eight images of 66 tokens and the prompt's text each time.
    assert!(n(1, "prompt_tokens") > 8 * 66);
    assert_eq!(n(1, "prompt_tokens"), n(2, "prompt_tokens"));
    // The second question shares everything before the judged frame (the
    // first frame, four times, and the last) with the first.
    assert!(n(2, "reused_tokens") > 5 * 66, "{json}");
    assert!(rows[2]["answer"].is_string());
    let strip = preprocess::load(&plot).unwrap();
    let frame_w = 352 * spillway::vision::annotate::STRIP_FRAME / 192;
    assert_eq!(strip.width, 3 * frame_w + 4 * 4);

    let err = |args: &[&str], model: &Path| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["generate", "--model"])
            .arg(model)
            .args(args)
            .env("SPILLWAY_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let img = image.to_str().unwrap();
    let one = err(
        &["--task", "progress", "--image", img, "--prompt", "x"],
        &dir,
    );
    assert!(one.contains("two or more frames"), "{one}");
    let text = err(
        &[
            "--task", "progress", "--image", img, "--image", img, "--prompt", "x",
        ],
        &fixture("qwen2_tiny_text"),
    );
    assert!(text.contains("needs a vision-language model"), "{text}");
}

/// The fixture re-saved as newer transformers and some training tools
/// write it — `model.visual.*` / `model.language_model.*` names, an untied
/// `lm_head`, a nested `text_config` with `rope_parameters`, vision keys
/// left out — gives the same tokens; 8-bit and 4-bit conversions run too.
#[test]
fn other_layouts_and_quantized_vision() {
    let dir = fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut renamed: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in &tensors {
        let new = if let Some(rest) = name.strip_prefix("visual.") {
            format!("model.visual.{rest}")
        } else if let Some(rest) = name.strip_prefix("model.") {
            format!("model.language_model.{rest}")
        } else {
            name.clone()
        };
        renamed.insert(new, t.clone());
    }
    renamed.insert(
        "lm_head.weight".into(),
        tensors["model.embed_tokens.weight"].clone(),
    );
    candle_core::safetensors::save(&renamed, copy.path().join("model.safetensors")).unwrap();
    let flat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let text_keys = [
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "vocab_size",
        "max_position_embeddings",
    ];
    let mut text = serde_json::Map::new();
    for k in text_keys {
        text.insert(k.into(), flat[k].clone());
    }
    text.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}),
    );
    let mut vision = flat["vision_config"].clone();
    // Keys re-saved configs drop: the defaults must be the released ones.
    vision.as_object_mut().unwrap().remove("window_size");
    vision.as_object_mut().unwrap().remove("spatial_merge_size");
    let nested = serde_json::json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "tie_word_embeddings": false,
        "image_token_id": 652,
        "vision_start_token_id": 649,
        "vision_end_token_id": 650,
        "text_config": text,
        "vision_config": vision,
    });
    std::fs::write(
        copy.path().join("config.json"),
        serde_json::to_vec_pretty(&nested).unwrap(),
    )
    .unwrap();
    let chat = copy.path().join("messages.json");
    let run = |quant: &str| greedy8(copy.path(), &chat, &["--quant", quant], cache.path());
    let r = reference(&dir);
    assert_eq!(tokens_of(&run("none")), ints(&r["generated_ids"]));
    // Quantized (the tower at 8 bits): Q8_0 keeps the 8 tokens; the 4-bit
    // scheme completes and keeps at least the first (the widest margin,
    // 1.03; all 8 matched when this was written).
    assert_eq!(tokens_of(&run("q8_0")), ints(&r["generated_ids"]), "q8_0");
    let t = tokens_of(&run("q4_k_m"));
    eprintln!("q4_k_m: {t:?}");
    assert_eq!(t.len(), 8);
    assert_eq!(t[0], ints(&r["generated_ids"])[0], "q4_k_m");
}

/// A 1960×1960 image (19,600 patches, 4,900 image tokens) through the
/// tower and the model: full attention over all patches would need 3 GiB
/// of scores per block (2 heads × 19,600² × 4 bytes); the chunked
/// attention keeps the whole process under 1 GiB.
#[test]
fn a_large_image_stays_within_memory() {
    let dir = fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let big = cache.path().join("big.png");
    let img = image::RgbImage::from_fn(1960, 1960, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    img.save(&big).unwrap();
    let json = generate_json(
        &dir,
        &[
            "--prompt",
            "What is this?",
            "--image",
            big.to_str().unwrap(),
            "--max-pixels",
            "4000000",
            "--max-tokens",
            "2",
            "--quant",
            "none",
            "--ctx",
            "8192",
        ],
        cache.path(),
    );
    assert_eq!(json["images"][0]["tokens"], 4900);
    let peak = json["peak_rss_bytes"].as_u64().unwrap();
    eprintln!("peak RSS with a 19,600-patch image: {} MiB", peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
}
