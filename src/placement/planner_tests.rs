//! Planner tests on Mistral-7B-Instruct-v0.3 (its config.json in
//! tests/fixtures): footprints against the published GGUF sizes, then every
//! mode over a grid of contexts and budgets, checked against the budgets and
//! against an exhaustive search of layouts.

use super::*;
use crate::placement::footprint::Quant;

const GB: u64 = 1_000_000_000;

fn mistral(quant: Quant, context: usize) -> Footprint {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/configs/mistral-7b-instruct-v0.3/config.json"
    ))
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    Footprint::from_hf_config(
        "Mistral-7B-Instruct-v0.3".into(),
        &config,
        quant,
        context,
        512,
    )
    .unwrap()
}

fn rates() -> Rates {
    Rates {
        gpu_bytes_per_sec: 300e9,
        gpu_flops: 20e12,
        ram_bytes_per_sec: 20e9,
        cpu_flops: 200e9,
        disk_bytes_per_sec: 1e9,
    }
}

fn budgets(vram: u64, ram: u64) -> Budgets {
    Budgets {
        vram_bytes: vram,
        ram_bytes: ram,
        disk_bytes: 100 * GB,
        gpu_name: (vram > 0).then(|| "test".into()),
        gpu_simulated: false,
        notes: Vec::new(),
    }
}

#[test]
fn mistral_footprints_match_published_gguf_sizes() {
    // bartowski/lmstudio Mistral-7B-Instruct-v0.3 Q4_K_M: 4.37 GB; Q8_0: 7.70 GB.
    for (quant, published) in [(Quant::Q4KM, 4.37e9), (Quant::Q8_0, 7.70e9)] {
        let fp = mistral(quant, 4096);
        let w = fp.weights_bytes() as f64;
        assert!(
            (w / published - 1.0).abs() < 0.01,
            "{quant}: {w} vs {published}"
        );
    }
    let fp = mistral(Quant::Q4KM, 4096);
    // 32 layers × 2 × 8 KV heads × 128 × f16 (the default) × 4096 tokens.
    assert_eq!(fp.kv_cache_bytes(), 32 * 2 * 8 * 128 * 2 * 4096);
    assert_eq!(fp.layer_bytes.len(), 32);
    // Layers with Q6_K attn_v/ffn_down are larger than the others.
    assert!(fp.layer_bytes[0] > fp.layer_bytes[4]);
    assert_eq!(
        mistral(Quant::Q4KM, 32768).kv_cache_bytes(),
        8 * fp.kv_cache_bytes()
    );
}

/// The KV cache is sized in its types, K and V separately: at 32k tokens
/// Mistral-7B's is 8 GiB in f32, 4 in f16, 2.125 in q8_0 (34 bytes a 32-
/// value block), 1.125 in q4_0 (18 bytes); the GPU tier keeps block types
/// as f16, so a plan with GPU layers charges them that; and a plan that
/// cannot fit an f32 cache at all fits in RAM with q8_0.
#[test]
fn kv_cache_is_sized_in_its_types() {
    use crate::kernels::kv::{CacheType as C, KvTypes};
    let fp = mistral(Quant::Q4KM, 32768);
    let gib =
        |t: KvTypes| fp.clone().with_kv_types(t).kv_cache_bytes() as f64 / (1u64 << 30) as f64;
    assert_eq!(gib(KvTypes::F32), 8.0);
    assert_eq!(gib(KvTypes::new(C::F16, C::F16)), 4.0);
    assert_eq!(gib(KvTypes::new(C::Q8_0, C::Q8_0)), 2.125);
    assert_eq!(gib(KvTypes::new(C::Q4_0, C::Q4_0)), 1.125);
    assert_eq!(gib(KvTypes::new(C::Q8_0, C::Q4_0)), 1.625);
    let q8 = fp.clone().with_kv_types(KvTypes::new(C::Q8_0, C::Q8_0));
    assert_eq!(q8.kv_gpu_bytes(0), fp.kv_bytes(0));
    assert_eq!(q8.kv_bytes(0) * 64, fp.kv_bytes(0) * 34);
    // RAM for the Q4_K_M weights and a q8_0 cache, not an f32 one.
    let b = budgets(0, 4_400_000_000 + (7u64 << 29));
    assert!(plan(
        &fp.clone().with_kv_types(KvTypes::F32),
        &b,
        Mode::Auto,
        &rates()
    )
    .is_err());
    let p = plan(&q8, &b, Mode::Auto, &rates()).unwrap();
    assert_eq!(p.count(Tier::Disk), 0);
    assert_eq!(p.kv.ram, q8.kv_cache_bytes());
}

/// Layers are contiguous: disk first, then RAM, then GPU.
fn contiguous(layers: &[Tier]) -> bool {
    let rank = |t: &Tier| match t {
        Tier::Disk => 0,
        Tier::Ram => 1,
        Tier::Gpu => 2,
    };
    layers.windows(2).all(|w| rank(&w[0]) <= rank(&w[1]))
}

/// Whether any layout at all fits (exhaustive).
fn anything_fits(fp: &Footprint, b: &Budgets) -> bool {
    let n = fp.n_layer();
    (0..=n).any(|gpu| {
        (0..=n - gpu).any(|disk| {
            [false, true].into_iter().any(|head_gpu| {
                (0..=gpu).any(|kv_ram| {
                    let (_, _, peak) = usage(
                        fp,
                        Layout {
                            gpu,
                            disk,
                            kv_ram,
                            head_gpu,
                            vision_gpu: false,
                        },
                    );
                    peak.gpu <= b.vram_bytes && peak.ram <= b.ram_bytes
                })
            })
        })
    })
}

#[test]
fn every_mode_over_the_grid_respects_budgets() {
    let modes = [
        Mode::Auto,
        Mode::FullGpu,
        Mode::CpuOffload,
        Mode::DiskOffload,
        Mode::CpuOnly,
        Mode::GpuLayers(0),
        Mode::GpuLayers(10),
        Mode::GpuLayers(32),
    ];
    let mut checked = 0;
    for quant in [Quant::Q4KM, Quant::Q8_0] {
        for ctx in [4096, 32768] {
            let fp = mistral(quant, ctx);
            for vram_gb in [0, 4, 6, 8, 12, 24] {
                for ram_gb in [8, 16] {
                    let b = budgets(vram_gb * GB, ram_gb * GB);
                    for mode in modes {
                        checked += 1;
                        let what = format!("{quant} ctx {ctx} vram {vram_gb} ram {ram_gb} {mode}");
                        match plan(&fp, &b, mode, &rates()) {
                            Ok(p) => {
                                assert!(p.peak.gpu <= b.vram_bytes, "{what}: {:?}", p.peak);
                                assert!(p.peak.ram <= b.ram_bytes, "{what}: {:?}", p.peak);
                                assert!(contiguous(&p.layers), "{what}: {:?}", p.layers);
                                assert!(p.predicted_decode_tokens_per_sec > 0.0);
                                assert!(p.predicted_prompt_tokens_per_sec > 0.0);
                                match mode {
                                    Mode::FullGpu => assert_eq!(p.count(Tier::Gpu), 32, "{what}"),
                                    Mode::CpuOffload => {
                                        assert_eq!(p.count(Tier::Disk), 0, "{what}")
                                    }
                                    Mode::DiskOffload => {
                                        assert_eq!(p.count(Tier::Ram), 0, "{what}")
                                    }
                                    Mode::CpuOnly => {
                                        assert_eq!(p.count(Tier::Gpu), 0, "{what}");
                                        assert_eq!(p.head, Tier::Ram, "{what}");
                                    }
                                    Mode::GpuLayers(g) => {
                                        assert_eq!(p.count(Tier::Gpu), g, "{what}")
                                    }
                                    Mode::Auto => {}
                                }
                            }
                            Err(e) => {
                                let msg = e.to_string();
                                assert!(
                                    msg.contains("MiB short") && msg.contains("free"),
                                    "{what}: {msg}"
                                );
                                match mode {
                                    Mode::Auto | Mode::CpuOnly => {
                                        assert!(
                                            !anything_fits(
                                                &fp,
                                                &if mode == Mode::CpuOnly {
                                                    budgets(0, b.ram_bytes)
                                                } else {
                                                    b.clone()
                                                }
                                            ),
                                            "{what}: auto failed but a layout fits: {msg}"
                                        );
                                    }
                                    Mode::FullGpu => {
                                        let full = usage(
                                            &fp,
                                            Layout {
                                                gpu: 32,
                                                disk: 0,
                                                // The least it needs: every
                                                // cache in RAM.
                                                kv_ram: 32,
                                                head_gpu: true,
                                                vision_gpu: false,
                                            },
                                        )
                                        .2
                                        .gpu;
                                        assert_eq!(
                                            e.shortfall_mib(),
                                            (full - b.vram_bytes).div_ceil(1 << 20),
                                            "{what}"
                                        );
                                        assert!(
                                            msg.contains(&format!(
                                                "{} MiB short",
                                                e.shortfall_mib()
                                            )),
                                            "{msg}"
                                        );
                                        assert!(
                                            msg.contains("cpu-offload") || msg.contains("cpu-only"),
                                            "{msg}"
                                        );
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 2 * 6 * 2 * 8);
}

#[test]
fn auto_prefers_the_gpu_and_keeps_disk_last_resort() {
    let fp = mistral(Quant::Q4KM, 4096);
    // 24 GB holds everything.
    let p = plan(&fp, &budgets(24 * GB, 16 * GB), Mode::Auto, &rates()).unwrap();
    assert_eq!((p.count(Tier::Gpu), p.head), (32, Tier::Gpu));
    // 4 GB holds part; 16 GB of RAM the rest; nothing on disk.
    let p = plan(&fp, &budgets(4 * GB, 16 * GB), Mode::Auto, &rates()).unwrap();
    let g = p.count(Tier::Gpu);
    assert!(g > 10 && g < 32, "{g}");
    assert_eq!(p.count(Tier::Disk), 0);
    // No GPU, 4 GB of RAM: some layers go to disk.
    let p = plan(&fp, &budgets(0, 4 * GB), Mode::Auto, &rates()).unwrap();
    assert!(p.count(Tier::Disk) > 0 && p.count(Tier::Ram) > 0);
    assert_eq!(p.peak.gpu, 0);
    // More GPU layers predict faster decoding.
    let slow = plan(&fp, &budgets(0, 16 * GB), Mode::Auto, &rates()).unwrap();
    let fast = plan(&fp, &budgets(24 * GB, 16 * GB), Mode::Auto, &rates()).unwrap();
    assert!(fast.predicted_decode_tokens_per_sec > 5.0 * slow.predicted_decode_tokens_per_sec);
    // Disk-bound: 4 GB of layers from a 1 GB/s disk is about 0.25 tokens/s.
    let disk = plan(&fp, &budgets(0, 16 * GB), Mode::DiskOffload, &rates()).unwrap();
    assert!(
        (disk.predicted_decode_tokens_per_sec - 0.24).abs() < 0.03,
        "{}",
        disk.predicted_decode_tokens_per_sec
    );
}

#[test]
fn full_gpu_error_names_the_shortfall() {
    let fp = mistral(Quant::Q8_0, 4096);
    let e = plan(&fp, &budgets(6 * GB, 16 * GB), Mode::FullGpu, &rates()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("full-gpu needs"), "{msg}");
    assert!(
        e.shortfall_mib() > 2000 && e.shortfall_mib() < 5000,
        "{msg}"
    );
    assert!(msg.contains("layers fit"), "{msg}");
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_bytes("6GiB").unwrap(), 6 << 30);
    assert_eq!(parse_bytes("6 GB").unwrap(), 6_000_000_000);
    assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
    assert_eq!(parse_bytes("4096").unwrap(), 4096);
    assert!(parse_bytes("6 XB").is_err());
    assert!(parse_bytes("lots").is_err());
    assert_eq!("disk-offload".parse::<Mode>().unwrap(), Mode::DiskOffload);
    assert_eq!("12".parse::<Mode>().unwrap(), Mode::GpuLayers(12));
    assert!("fast".parse::<Mode>().is_err());
}

/// GPU layers keep their KV caches in RAM when VRAM holds the weights but
/// not the caches too: full-gpu puts Mistral-7B's 32 layers on a 6 GB GPU
/// at 32k tokens with the first layers' caches in RAM (as few as fit),
/// charging RAM for them; with room, or a short context, every cache stays
/// on the GPU; auto takes the caches-in-RAM layout only with more GPU
/// layers and a faster predicted decode.
#[test]
fn gpu_layers_keep_their_caches_in_ram_when_vram_is_short() {
    let fp = mistral(Quant::Q4KM, 32768);
    let b = budgets(6 * GB, 32 * GB);
    let p = plan(&fp, &b, Mode::FullGpu, &rates()).unwrap();
    assert_eq!(p.count(Tier::Gpu), 32);
    assert!(p.peak.gpu <= b.vram_bytes);
    let in_ram = p.kv_tiers.iter().filter(|&&t| t == Tier::Ram).count();
    assert!(in_ram > 0 && in_ram < 32, "{in_ram}");
    // The first GPU layers, then the rest on the device.
    assert!(p.kv_tiers[..in_ram].iter().all(|&t| t == Tier::Ram));
    assert!(p.kv_tiers[in_ram..].iter().all(|&t| t == Tier::Gpu));
    let ram_kv: u64 = (0..in_ram).map(|i| fp.kv_bytes(i)).sum();
    assert_eq!(p.kv.ram, ram_kv);
    assert_eq!(
        p.kv.gpu,
        (in_ram..32).map(|i| fp.kv_gpu_bytes(i)).sum::<u64>()
    );
    // One cache fewer in RAM would not fit.
    let tighter = budgets(p.peak.gpu - 1, 32 * GB);
    let q = plan(&fp, &tighter, Mode::FullGpu, &rates()).unwrap();
    assert!(q.kv_tiers.iter().filter(|&&t| t == Tier::Ram).count() > in_ram);
    for (fp, vram) in [
        (mistral(Quant::Q4KM, 4096), 6),
        (mistral(Quant::Q4KM, 32768), 24),
    ] {
        let p = plan(&fp, &budgets(vram * GB, 32 * GB), Mode::FullGpu, &rates()).unwrap();
        assert!(p.kv_tiers.iter().all(|&t| t == Tier::Gpu));
        assert_eq!(p.kv.ram, 0);
    }
    let auto = plan(&fp, &b, Mode::Auto, &rates()).unwrap();
    let full_kv = plan(&fp, &b, Mode::GpuLayers(auto.count(Tier::Gpu)), &rates());
    if auto.kv_tiers.contains(&Tier::Ram) {
        // Its GPU layer count does not fit with every cache on the GPU.
        let all_on_gpu = full_kv.unwrap();
        assert!(all_on_gpu.kv_tiers.contains(&Tier::Ram));
    }
    // Nothing fits at all: the error gives the least it needs (every
    // cache in RAM).
    let e = plan(&fp, &budgets(2 * GB, 32 * GB), Mode::FullGpu, &rates()).unwrap_err();
    let lean = fp.layer_bytes.iter().sum::<u64>() + fp.head_bytes;
    assert!(e.to_string().starts_with("full-gpu needs"), "{e}");
    let needed_mib = e.shortfall_mib() + 2048;
    assert!(needed_mib >= lean >> 20, "{e}");
    assert!(needed_mib < (lean + fp.kv_cache_bytes() / 2) >> 20, "{e}");
}
