//! The placement panel: the model as a strip of layers coloured by tier
//! (bytes and time per token on hover), gauges for VRAM, RAM and disk, a
//! plot of prompt and decode speed over time, and the what-if preview of the
//! settings' placement with its predicted speed, applied live on request.

use egui::{Color32, Sense, Stroke, Vec2};

use super::app::SpillwayApp;
use crate::placement::planner::human;
use crate::placement::{Placement, Tier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PlacementAction {
    Preview,
    Apply,
}

pub const GPU_COLOR: Color32 = Color32::from_rgb(38, 166, 154);
pub const RAM_COLOR: Color32 = Color32::from_rgb(66, 133, 244);
pub const DISK_COLOR: Color32 = Color32::from_rgb(245, 166, 35);

pub fn tier_color(t: Tier) -> Color32 {
    match t {
        Tier::Gpu => GPU_COLOR,
        Tier::Ram => RAM_COLOR,
        Tier::Disk => DISK_COLOR,
    }
}

/// A model on an OpenAI-compatible server: no layers here, so the server,
/// the model and what was measured from this side.
fn remote_ui(ui: &mut egui::Ui, app: &SpillwayApp, server: &str) {
    let Some(model) = &app.model else {
        return;
    };
    egui::Grid::new("remote").num_columns(2).show(ui, |ui| {
        ui.label("Server");
        ui.monospace(server);
        ui.end_row();
        ui.label("Model");
        ui.monospace(&model.name);
        ui.end_row();
        if model.context_length > 0 {
            ui.label("Context");
            ui.label(format!("{} tokens", model.context_length));
            ui.end_row();
        }
        let last = app.conversations[app.current]
            .messages
            .iter()
            .rev()
            .find_map(|m| m.stats);
        ui.label("Time to first token");
        ui.label(last.map_or("–".into(), |s| {
            format!("{:.2} s", s.time_to_first_token_secs)
        }));
        ui.end_row();
        ui.label("Tokens/s");
        ui.label(last.map_or("–".into(), |s| format!("{:.1}", s.decode_tokens_per_sec)));
        ui.end_row();
    });
    ui.small("Measured here, from the stream; the server places the model's layers itself.");
}

pub fn panel_ui(ui: &mut egui::Ui, app: &mut SpillwayApp) -> Vec<PlacementAction> {
    let mut actions = Vec::new();
    ui.heading("Placement");
    let Some(model) = &app.model else {
        ui.label("No model loaded.");
        preview_ui(ui, app, &mut actions);
        return actions;
    };
    if let Some(server) = &model.remote {
        remote_ui(ui, app, server);
        return actions;
    }
    // The driver's own words go to a tooltip; the panel says it plainly.
    let (gpu_notes, notes): (Vec<&String>, Vec<&String>) = model
        .budget_notes
        .iter()
        .partition(|n| n.starts_with("no NVIDIA GPU found"));
    if model.gpu_name.is_none() {
        let l = ui.label("No NVIDIA GPU found: layers live in RAM and on disk.");
        if !gpu_notes.is_empty() {
            l.on_hover_text(
                gpu_notes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
    }
    for note in notes {
        ui.small(note);
    }
    let p = &model.placement;
    // Without an NVIDIA GPU a VRAM cap makes a simulated tier: never
    // called a GPU or VRAM without saying so.
    let simulated = model
        .gpu_name
        .as_deref()
        .is_some_and(|n| n == crate::placement::gpu::SIMULATED_GPU);
    let gpu_label = if simulated {
        crate::placement::gpu::SIMULATED_GPU
    } else {
        "VRAM"
    };
    ui.label(format!(
        "{}: {} {} · {} RAM · {} disk layers",
        p.mode,
        p.count(Tier::Gpu),
        if simulated { gpu_label } else { "GPU" },
        p.count(Tier::Ram),
        p.count(Tier::Disk)
    ));
    let ms = app
        .telemetry
        .as_ref()
        .map(|t| t.layer_ms_per_token.clone())
        .unwrap_or_default();
    layer_strip_ui(ui, p, &model.layer_bytes, &ms);
    // The KV cache for the whole context, where it lives.
    let kv: Vec<String> = [
        (p.kv.gpu, gpu_label),
        (p.kv.ram, "RAM"),
        (p.kv.disk, "disk"),
    ]
    .into_iter()
    .filter(|(b, _)| *b > 0)
    .map(|(b, tier)| format!("{} in {tier}", human(b)))
    .collect();
    if !kv.is_empty() {
        ui.label(format!(
            "KV cache ({}, {} tokens): {}",
            model.kv_types,
            model.context_length,
            kv.join(" · ")
        ))
        .on_hover_text(
            "Keys and values for the whole context, by where each layer keeps them. A GPU layer keeps q8_0/q4_0 as f16 (its attention reads f32 and f16); when VRAM is short, GPU layers keep their caches in RAM (marked at the foot of their cells) and run attention on the CPU.",
        );
    }
    if let Some(s) = &model.speculation {
        let accepted = s.acceptance().map_or(String::new(), |a| {
            format!(
                ", {:.0}% of {} drafted tokens accepted",
                100.0 * a,
                s.proposed
            )
        });
        match &s.draft {
            Some(d) => {
                ui.horizontal(|ui| {
                    let (r, _) = ui.allocate_exact_size(Vec2::splat(10.0), Sense::hover());
                    ui.painter().rect_filled(r, 2.0, tier_color(d.tier));
                    ui.label(format!(
                        "{} {}: {} weights + {} KV cache in {}{accepted}",
                        s.drafting.label(),
                        d.name,
                        human(d.weight_bytes),
                        human(d.kv_bytes),
                        match d.tier {
                            Tier::Gpu => gpu_label,
                            Tier::Ram => "RAM",
                            Tier::Disk => "disk",
                        }
                    ));
                });
            }
            None => {
                ui.label(format!(
                    "Speculative decoding: {}{accepted}",
                    s.drafting.label()
                ));
            }
        }
    }
    ui.horizontal(|ui| {
        for (t, name) in [
            (Tier::Gpu, gpu_label),
            (Tier::Ram, "RAM"),
            (Tier::Disk, "disk"),
        ] {
            let (r, _) = ui.allocate_exact_size(Vec2::splat(10.0), Sense::hover());
            ui.painter().rect_filled(r, 2.0, tier_color(t));
            ui.label(name);
        }
    });
    ui.label(format!(
        "predicted: {:.0} prompt · {:.1} decode tokens/s",
        p.predicted_prompt_tokens_per_sec, p.predicted_decode_tokens_per_sec
    ));
    if let Some(line) = experts_line(p, app.telemetry.as_ref()) {
        ui.label(line);
    }

    ui.separator();
    gauges_ui(ui, app);
    speed_plot_ui(ui, app);
    ui.separator();
    preview_ui(ui, app, &mut actions);
    actions
}

/// A mixture-of-experts model's experts: how many RAM caches, how many
/// stay on disk, and how often the cache served a routed expert.
pub fn experts_line(p: &Placement, t: Option<&crate::telemetry::Snapshot>) -> Option<String> {
    let (ram, disk) = p
        .experts
        .iter()
        .fold((0, 0), |(r, d), x| (r + x.ram, d + x.disk));
    if disk == 0 {
        return None;
    }
    let mut line = format!("experts: {ram} in RAM, {disk} on disk (read when routed)");
    if let Some(t) = t.filter(|t| t.expert_hits + t.expert_misses > 0) {
        line += &format!(
            " · cache hit rate {:.0}% · {} read",
            100.0 * t.expert_hits as f64 / (t.expert_hits + t.expert_misses) as f64,
            human(t.expert_bytes_read)
        );
    }
    Some(line)
}

/// One cell per layer, coloured by tier; a mixture-of-experts layer on
/// disk is split: its experts cached in RAM below, those on disk above.
pub fn layer_strip_ui(ui: &mut egui::Ui, p: &Placement, layer_bytes: &[u64], ms: &[f64]) {
    let n = p.layers.len().max(1);
    let width = ui.available_width();
    let cell = (width / n as f32).clamp(2.0, 24.0);
    let (rect, _) = ui.allocate_exact_size(Vec2::new(cell * n as f32, 28.0), Sense::hover());
    for (i, &t) in p.layers.iter().enumerate() {
        let r = egui::Rect::from_min_size(
            rect.min + Vec2::new(i as f32 * cell, 0.0),
            Vec2::new(cell, rect.height()),
        );
        let split = p.experts.get(i).filter(|x| x.disk > 0);
        match split {
            Some(x) => {
                let cell = r.shrink(0.5);
                let ram_share = x.ram as f32 / (x.ram + x.disk).max(1) as f32;
                let cut = cell.bottom() - cell.height() * ram_share;
                let (top, bottom) = cell.split_top_bottom_at_y(cut);
                ui.painter().rect_filled(top, 1.0, tier_color(Tier::Disk));
                ui.painter().rect_filled(bottom, 1.0, tier_color(Tier::Ram));
            }
            None => {
                ui.painter().rect_filled(r.shrink(0.5), 1.0, tier_color(t));
            }
        }
        // A GPU layer keeping its KV cache in RAM: a RAM-coloured band
        // along its foot.
        let kv_in_ram = t == Tier::Gpu && p.kv_tiers.get(i) == Some(&Tier::Ram);
        if kv_in_ram {
            let cell = r.shrink(0.5);
            let (_, foot) = cell.split_top_bottom_at_y(cell.bottom() - cell.height() / 4.0);
            ui.painter().rect_filled(foot, 1.0, tier_color(Tier::Ram));
        }
        let id = ui.scope_id().with(("layer", i));
        let resp = ui.interact(r, id, Sense::hover());
        let what = match split {
            Some(x) => format!(
                "layer {i}: dense part in RAM, {} experts cached in RAM, {} on disk",
                x.ram, x.disk
            ),
            None if kv_in_ram => {
                format!("layer {i}: {t}, its KV cache in RAM (attention on the CPU)")
            }
            None => format!("layer {i}: {t}"),
        };
        resp.on_hover_text(format!(
            "{what}\n{}{}",
            human(layer_bytes.get(i).copied().unwrap_or(0)),
            ms.get(i)
                .map(|m| format!("\n{m:.2} ms per token"))
                .unwrap_or_default()
        ));
    }
    ui.painter().rect_stroke(
        rect,
        1.0,
        Stroke::new(1.0, ui.visuals().weak_text_color()),
        egui::StrokeKind::Outside,
    );
}

fn gauge(ui: &mut egui::Ui, label: &str, used: u64, total: u64) {
    let frac = if total > 0 {
        used as f32 / total as f32
    } else {
        0.0
    };
    ui.add(egui::ProgressBar::new(frac.clamp(0.0, 1.0)).text(format!(
        "{label}: {} of {}",
        human(used),
        human(total)
    )));
}

fn gauges_ui(ui: &mut egui::Ui, app: &SpillwayApp) {
    let Some(t) = &app.telemetry else {
        ui.small("Memory readings appear once the model runs.");
        return;
    };
    if t.gpus.is_empty() {
        ui.small("VRAM: no NVIDIA GPU");
    }
    for g in &t.gpus {
        gauge(
            ui,
            &format!("VRAM ({})", g.name),
            g.used_bytes,
            g.total_bytes,
        );
        if let Some(mine) = g.process_bytes {
            ui.small(format!("Spillway holds {}", human(mine)));
        }
    }
    let used = t.ram_total_bytes.saturating_sub(t.ram_available_bytes);
    gauge(ui, "RAM", used, t.ram_total_bytes);
    ui.small(format!("Spillway holds {}", human(t.process_ram_bytes)));
    match t.disk_free_bytes {
        Some(free) => ui.small(format!(
            "Offload folder {} · {} free",
            human(t.offload_folder_bytes),
            human(free)
        )),
        None => ui.small("Offload folder: free space unknown"),
    };
}

fn speed_plot_ui(ui: &mut egui::Ui, app: &SpillwayApp) {
    let pts = &app.speeds.points;
    let Some(last) = pts.back() else { return };
    ui.label(format!(
        "prompt {:.0} tokens/s · decode {:.1} tokens/s",
        last.1, last.2
    ));
    let (rect, _) = ui.allocate_exact_size(Vec2::new(ui.available_width(), 60.0), Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_stroke(
        rect,
        2.0,
        Stroke::new(1.0, ui.visuals().weak_text_color()),
        egui::StrokeKind::Inside,
    );
    let t0 = pts.front().map_or(0.0, |p| p.0);
    let t1 = last.0.max(t0 + 1.0);
    let line = |pick: fn(&(f64, f64, f64)) -> f64, color: Color32| {
        let max = pts.iter().map(pick).fold(1e-9, f64::max);
        let points: Vec<egui::Pos2> = pts
            .iter()
            .map(|p| {
                let x = rect.left() + ((p.0 - t0) / (t1 - t0)) as f32 * rect.width();
                let y = rect.bottom() - (pick(p) / max) as f32 * (rect.height() - 4.0);
                egui::pos2(x, y)
            })
            .collect();
        painter.add(egui::Shape::line(points, Stroke::new(1.5, color)));
    };
    line(|p| p.1, RAM_COLOR);
    line(|p| p.2, GPU_COLOR);
}

fn preview_ui(ui: &mut egui::Ui, app: &SpillwayApp, actions: &mut Vec<PlacementAction>) {
    ui.horizontal(|ui| {
        ui.label(format!("Settings: {}", app.settings.mode()));
        if ui.button("Preview").clicked() {
            actions.push(PlacementAction::Preview);
        }
        if app.model.is_some() && ui.button("Apply").clicked() {
            actions.push(PlacementAction::Apply);
        }
    });
    match &app.preview {
        Some(Ok(p)) => {
            ui.label(format!(
                "Preview: {} GPU · {} RAM · {} disk layers; {:.0} prompt · {:.1} decode tokens/s",
                p.count(Tier::Gpu),
                p.count(Tier::Ram),
                p.count(Tier::Disk),
                p.predicted_prompt_tokens_per_sec,
                p.predicted_decode_tokens_per_sec
            ));
            let bytes = app
                .model
                .as_ref()
                .map(|m| m.layer_bytes.clone())
                .unwrap_or_default();
            layer_strip_ui(ui, p, &bytes, &[]);
        }
        Some(Err(e)) => {
            ui.colored_label(
                ui.visuals().error_fg_color,
                format!("Does not fit: {}", e.message),
            );
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::planner::{ExpertSplit, TierBytes};
    use crate::placement::Mode;

    /// A MoE placement's panel line names the split and, once experts were
    /// routed, the cache's hit rate; a dense model has none.
    #[test]
    fn experts_line_shows_split_and_hit_rate() {
        let mut p = Placement {
            mode: Mode::Auto,
            layers: vec![Tier::Disk; 2],
            head: Tier::Ram,
            vision: None,
            weights: TierBytes::default(),
            kv: TierBytes::default(),
            kv_tiers: vec![Tier::Ram; 2],
            peak: TierBytes::default(),
            predicted_prompt_tokens_per_sec: 1.0,
            predicted_decode_tokens_per_sec: 1.0,
            experts: vec![ExpertSplit { ram: 3, disk: 5 }; 2],
        };
        let mut t = crate::telemetry::Snapshot::default();
        assert_eq!(
            experts_line(&p, Some(&t)).unwrap(),
            "experts: 6 in RAM, 10 on disk (read when routed)"
        );
        t.expert_hits = 3;
        t.expert_misses = 1;
        t.expert_bytes_read = 1 << 20;
        let line = experts_line(&p, Some(&t)).unwrap();
        assert!(line.contains("cache hit rate 75%"), "{line}");
        p.experts.clear();
        assert_eq!(experts_line(&p, Some(&t)), None);
    }
}
