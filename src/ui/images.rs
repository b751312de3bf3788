//! Images in the window: attaching (file dialog, drag-and-drop, paste),
//! the copies kept beside the history, thumbnails with their token cost,
//! and answers drawn over the image — points, boxes, a trajectory with its
//! end marked — mapped from the model's resized frame to the picture shown.
//! Each drawn shape is also an accessible node ("Point 1 at 112, 84", in
//! the original image's pixels), which is how the UI tests find them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::chat::history::{Attachment, ChatMessage};
use crate::vision::annotate;
use crate::vision::preprocess::{self, ProcessorConfig, Rgb};
use crate::vision::tasks::{self, Shapes, Task};

/// Textures are at most this wide or high (thumbnails and overlays).
const TEXTURE_SIDE: usize = 1024;

/// Loaded textures by file, and files that could not be read.
#[derive(Default)]
pub struct Textures {
    loaded: HashMap<PathBuf, Result<egui::TextureHandle, String>>,
}

impl Textures {
    pub fn get(&mut self, ctx: &egui::Context, path: &Path) -> Result<egui::TextureHandle, String> {
        self.loaded
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let img = preprocess::load(path).map_err(|e| e.to_string())?;
                let img = shrink(&img, TEXTURE_SIDE);
                let color = egui::ColorImage::from_rgb([img.width, img.height], &img.data);
                Ok(ctx.load_texture(
                    path.display().to_string(),
                    color,
                    egui::TextureOptions::LINEAR,
                ))
            })
            .clone()
    }
}

/// `img` scaled down to fit `side` (unchanged when it does).
fn shrink(img: &Rgb, side: usize) -> Rgb {
    let big = img.width.max(img.height);
    if big <= side {
        return img.clone();
    }
    let s = side as f64 / big as f64;
    let w = ((img.width as f64 * s).round() as usize).max(1);
    let h = ((img.height as f64 * s).round() as usize).max(1);
    preprocess::resize_bicubic(img, w, h)
}

/// Where attachments are copied: `attachments/` beside the history, or a
/// folder under the temporary directory when nothing is saved.
pub fn attachments_dir(history_dir: Option<&Path>) -> PathBuf {
    match history_dir.and_then(Path::parent) {
        Some(d) => d.join("attachments"),
        None => std::env::temp_dir().join("spillway-attachments"),
    }
}

/// Checks that `bytes` are an image Spillway reads and keeps a copy named
/// by their content in `dir`.
pub fn keep_copy(bytes: &[u8], name: &str, ext: &str, dir: &Path) -> Result<Attachment, String> {
    let img = preprocess::decode(bytes, name).map_err(|e| e.to_string())?;
    let mut h = crate::weights::convert::Fnv::default();
    h.add(bytes);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{:016x}.{ext}", h.finish()));
    if !path.exists() {
        crate::chat::history::write_atomic(&path, bytes, &mut || Ok(()))
            .map_err(|e| format!("cannot keep a copy of {name}: {e}"))?;
    }
    Ok(Attachment {
        path,
        width: img.width as u32,
        height: img.height as u32,
    })
}

/// Attaches an image file.
pub fn attach_file(path: &Path, dir: &Path) -> Result<Attachment, String> {
    let bytes = preprocess::read_file(path).map_err(|e| e.to_string())?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()) && e.len() <= 5)
        .unwrap_or("img")
        .to_ascii_lowercase();
    keep_copy(&bytes, &path.display().to_string(), &ext, dir)
}

/// Attaches a pasted image (kept as PNG).
pub fn attach_pasted(img: &egui::ColorImage, dir: &Path) -> Result<Attachment, String> {
    let [w, h] = img.size;
    let mut rgba = Vec::with_capacity(w * h * 4);
    for p in &img.pixels {
        rgba.extend_from_slice(&p.to_srgba_unmultiplied());
    }
    let buf = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        .ok_or("the pasted image has the wrong size")?;
    let mut png = Vec::new();
    buf.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the pasted image: {e}"))?;
    keep_copy(&png, "the pasted image", "png", dir)
}

/// The model's frame size (width, height) for an image, and its tokens.
pub fn model_frame(a: &Attachment, processor: &ProcessorConfig) -> Option<((usize, usize), usize)> {
    let (h, w) = processor.resized_size(a.height, a.width).ok()?;
    let f = processor.factor();
    Some(((w, h), w * h / (f * f)))
}

/// The processor used for sizes: the loaded model's, with the settings'
/// pixel bound.
pub fn processor(model: Option<&ProcessorConfig>, max_pixels: usize) -> ProcessorConfig {
    let mut p = model.cloned().unwrap_or_default();
    p.max_pixels = p.max_pixels.min(max_pixels).max(p.min_pixels);
    p
}

/// The shapes of an answer to `question`, in the original image's pixels:
/// only for a question with one image.
pub fn answer_shapes(
    question: &ChatMessage,
    answer: &str,
    processor: &ProcessorConfig,
) -> Option<Shapes> {
    let [a] = question.images.as_slice() else {
        return None;
    };
    let split = tasks::split_thinking(answer, false);
    let text = if split.answer.is_empty() {
        answer
    } else {
        &split.answer
    };
    let shapes = tasks::parse_shapes_for(question.family, question.task, text);
    if shapes.is_empty() || question.task == Task::General {
        return None;
    }
    let (resized, _) = model_frame(a, processor)?;
    Some(shapes.to_image(resized, (a.width as usize, a.height as usize)))
}

fn color(c: [u8; 3]) -> egui::Color32 {
    egui::Color32::from_rgb(c[0], c[1], c[2])
}

/// Gives a drawn shape an accessible name at its place on screen.
fn label_at(ui: &egui::Ui, id: egui::Id, rect: egui::Rect, label: String) {
    let r = ui.interact(rect, id, egui::Sense::hover());
    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, label.clone()));
    r.on_hover_text(label);
}

/// A progress estimate under its frames: each frame in a cell of its own,
/// and under the row a plot of each frame's progress — 0 %, 50 % and
/// 100 % lines labelled on the left, a dot under each frame (green where
/// progress rose or held, red where it fell) with its percentage, joined by
/// a line. Each dot is an accessible node ("Frame 2: 35%").
pub fn progress_plot(
    ui: &mut egui::Ui,
    textures: &mut Textures,
    frames: &[Attachment],
    progress: &[Option<f32>],
    id: egui::Id,
) {
    let n = frames.len().max(progress.len());
    if n == 0 {
        return;
    }
    let margin = 40.0;
    let cell = ((ui.available_width() - margin) / n as f32).clamp(24.0, 120.0);
    let thumb_h = (cell * 0.75).min(90.0);
    let plot_h = 120.0;
    let size = egui::vec2(margin + cell * n as f32, thumb_h + 8.0 + plot_h);
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let visuals = ui.visuals().clone();
    let x_of = |k: usize| rect.left() + margin + cell * (k as f32 + 0.5);
    for (k, a) in frames.iter().enumerate() {
        let avail = egui::vec2(cell - 6.0, thumb_h);
        let aspect = a.width as f32 / a.height.max(1) as f32;
        let sz = if avail.x / avail.y > aspect {
            egui::vec2(avail.y * aspect, avail.y)
        } else {
            egui::vec2(avail.x, avail.x / aspect)
        };
        let r = egui::Rect::from_center_size(egui::pos2(x_of(k), rect.top() + thumb_h / 2.0), sz);
        match textures.get(ui.ctx(), &a.path) {
            Ok(tex) => {
                let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                painter.image(tex.id(), r, uv, egui::Color32::WHITE);
            }
            Err(_) => {
                painter.rect_stroke(
                    r,
                    2.0,
                    egui::Stroke::new(1.0, visuals.weak_text_color()),
                    egui::StrokeKind::Inside,
                );
            }
        }
    }
    let top = rect.top() + thumb_h + 8.0 + 10.0;
    let bottom = rect.bottom() - 10.0;
    let y_of = |p: f32| bottom - p.clamp(0.0, 1.0) * (bottom - top);
    let font = egui::FontId::proportional(11.0);
    for q in [0.0, 0.5, 1.0] {
        let y = y_of(q);
        painter.line_segment(
            [
                egui::pos2(rect.left() + margin, y),
                egui::pos2(rect.right(), y),
            ],
            egui::Stroke::new(1.0, visuals.widgets.noninteractive.bg_stroke.color),
        );
        painter.text(
            egui::pos2(rect.left() + margin - 4.0, y),
            egui::Align2::RIGHT_CENTER,
            format!("{:.0}%", q * 100.0),
            font.clone(),
            visuals.weak_text_color(),
        );
    }
    let mut dots: Vec<(usize, egui::Pos2, f32, egui::Color32)> = Vec::new();
    let mut prev: Option<f32> = None;
    for (k, p) in progress.iter().enumerate() {
        let Some(p) = *p else {
            continue;
        };
        let c = if prev.is_some_and(|q| p < q) {
            color(annotate::FELL)
        } else {
            color(annotate::ROSE)
        };
        prev = Some(p);
        dots.push((k, egui::pos2(x_of(k), y_of(p)), p, c));
    }
    for w in dots.windows(2) {
        painter.line_segment(
            [w[0].1, w[1].1],
            egui::Stroke::new(2.0, visuals.weak_text_color()),
        );
    }
    for &(k, at, p, c) in &dots {
        painter.circle_filled(at, 5.0, c);
        painter.text(
            at + egui::vec2(0.0, -8.0),
            egui::Align2::CENTER_BOTTOM,
            format!("{:.0}%", p * 100.0),
            font.clone(),
            visuals.text_color(),
        );
        let hit = egui::Rect::from_center_size(at, egui::vec2(12.0, 12.0));
        label_at(
            ui,
            id.with(k),
            hit,
            format!("Frame {}: {:.0}%", k + 1, p * 100.0),
        );
    }
}

/// Draws `tex` at `width` points wide with `shapes` (original pixels of an
/// image `size` = (width, height)) over it.
pub fn image_with_overlay(
    ui: &mut egui::Ui,
    tex: &egui::TextureHandle,
    size: (u32, u32),
    shapes: Option<&Shapes>,
    width: f32,
    id: egui::Id,
    camera: Option<&crate::vision::tasks::Intrinsics>,
) -> egui::Response {
    let scale = width / size.0.max(1) as f32;
    let display = egui::vec2(width, size.1 as f32 * scale);
    let resp = ui.add(
        egui::Image::new(egui::load::SizedTexture::new(tex.id(), display))
            .sense(egui::Sense::hover()),
    );
    resp.widget_info(|| {
        egui::WidgetInfo::labeled(
            egui::Role::Image,
            true,
            format!("Image {}×{}", size.0, size.1),
        )
    });
    let Some(shapes) = shapes else { return resp };
    let origin = resp.rect.min;
    let at = |p: [f32; 2]| origin + egui::vec2(p[0] * scale, p[1] * scale);
    let painter = ui.painter_at(resp.rect);
    let (line, dot) = {
        let (l, d) = annotate::stroke(display.x as usize, display.y as usize);
        (l.max(2.0), d.max(4.0))
    };
    for (i, b) in shapes.boxes.iter().enumerate() {
        let rect = egui::Rect::from_min_max(at([b[0], b[1]]), at([b[2], b[3]]));
        painter.rect_stroke(
            rect,
            0.0,
            egui::Stroke::new(line, color(annotate::BOX)),
            egui::StrokeKind::Middle,
        );
        label_at(
            ui,
            id.with(("box", i)),
            rect,
            format!(
                "Box {} from {:.0}, {:.0} to {:.0}, {:.0}",
                i + 1,
                b[0],
                b[1],
                b[2],
                b[3]
            ),
        );
    }
    // A 3-D trace and 3-D points (RoboBrain 2.5) are coloured by depth,
    // with a legend.
    let range = annotate::depth_range(shapes);
    let trace = annotate::trace_depths(shapes);
    let depth_of = |i: usize| trace.and_then(|d| d.get(i).copied());
    let depth_label = |p: [f32; 2], d: Option<f32>| match (d, camera) {
        (Some(d), Some(k)) => {
            let [x, y, z] = k.unproject(p[0], p[1], d);
            format!(", depth {d:.3} m, camera ({x:.3}, {y:.3}, {z:.3}) m")
        }
        (Some(d), None) => format!(", depth {d:.3} m"),
        _ => String::new(),
    };
    let tint = |d: Option<f32>| match (d, range) {
        (Some(d), Some(r)) => color(annotate::depth_color(d, r)),
        _ => color(annotate::PATH),
    };
    for (i, w) in shapes.trajectory.windows(2).enumerate() {
        let mean = depth_of(i).zip(depth_of(i + 1)).map(|(a, b)| (a + b) / 2.0);
        painter.line_segment([at(w[0]), at(w[1])], egui::Stroke::new(line, tint(mean)));
    }
    for (i, &p) in shapes.trajectory.iter().enumerate() {
        let end = i + 1 == shapes.trajectory.len();
        if end {
            painter.circle_filled(at(p), dot * 1.4, egui::Color32::WHITE);
            painter.circle_filled(at(p), dot * 1.1, tint(depth_of(i)));
        } else if trace.is_some() {
            painter.circle_filled(at(p), dot * 0.8, egui::Color32::WHITE);
            painter.circle_filled(at(p), dot * 0.6, tint(depth_of(i)));
        }
        let what = if end {
            "Trajectory end"
        } else {
            "Trajectory point"
        };
        let depth = depth_label(p, depth_of(i));
        label_at(
            ui,
            id.with(("path", i)),
            egui::Rect::from_center_size(at(p), egui::vec2(dot, dot) * 2.0),
            format!("{what} {} at {:.0}, {:.0}{depth}", i + 1, p[0], p[1]),
        );
    }
    if let Some((near, far)) = range {
        depth_legend(ui, &painter, resp.rect, (near, far), id);
    }
    let point_depths = annotate::point_depths(shapes);
    for (i, &p) in shapes.points.iter().enumerate() {
        let d = point_depths.and_then(|d| d.get(i).copied());
        let fill = match (d, range) {
            (Some(d), Some(r)) => color(annotate::depth_color(d, r)),
            _ => color(annotate::POINT),
        };
        painter.circle_filled(at(p), dot + 1.5, egui::Color32::WHITE);
        painter.circle_filled(at(p), dot, fill);
        label_at(
            ui,
            id.with(("point", i)),
            egui::Rect::from_center_size(at(p), egui::vec2(dot, dot) * 2.0),
            format!(
                "Point {} at {:.0}, {:.0}{}",
                i + 1,
                p[0],
                p[1],
                depth_label(p, d)
            ),
        );
    }
    resp
}

/// A colour bar in the image's lower left, near to far, in metres.
fn depth_legend(
    ui: &egui::Ui,
    painter: &egui::Painter,
    image: egui::Rect,
    (near, far): (f32, f32),
    id: egui::Id,
) {
    let bar = egui::Rect::from_min_size(
        image.left_bottom() + egui::vec2(8.0, -26.0),
        egui::vec2((image.width() * 0.35).clamp(60.0, 160.0), 8.0),
    );
    let back = bar
        .expand2(egui::vec2(6.0, 14.0))
        .translate(egui::vec2(0.0, 6.0));
    painter.rect_filled(back, 3.0, egui::Color32::from_black_alpha(170));
    let n = 24;
    for k in 0..n {
        let t0 = k as f32 / n as f32;
        let t1 = (k + 1) as f32 / n as f32;
        let x0 = bar.left() + bar.width() * t0;
        let x1 = bar.left() + bar.width() * t1;
        let d = near + (far - near) * (t0 + t1) / 2.0;
        painter.rect_filled(
            egui::Rect::from_x_y_ranges(x0..=x1, bar.y_range()),
            0.0,
            color(annotate::depth_color(d, (near, far))),
        );
    }
    let font = egui::FontId::proportional(11.0);
    let text = egui::Color32::WHITE;
    painter.text(
        bar.left_bottom() + egui::vec2(0.0, 2.0),
        egui::Align2::LEFT_TOP,
        format!("{near:.2} m"),
        font.clone(),
        text,
    );
    painter.text(
        bar.right_bottom() + egui::vec2(0.0, 2.0),
        egui::Align2::RIGHT_TOP,
        format!("{far:.2} m"),
        font,
        text,
    );
    label_at(
        ui,
        id.with("depth-legend"),
        back,
        format!("Depth from {near:.2} m (red, near) to {far:.2} m (blue, far)"),
    );
}

/// Asks where to save the annotated image and writes it.
/// Also writes the shapes as JSON next to the PNG (`….json`: original
/// pixels, depths and, with `camera`, metric points).
pub fn save_annotated(
    a: &Attachment,
    shapes: &Shapes,
    camera: Option<&crate::vision::tasks::Intrinsics>,
) -> Result<Option<PathBuf>, String> {
    let stem = a
        .path
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let Some(out) = rfd::FileDialog::new()
        .add_filter("PNG image", &["png"])
        .set_file_name(format!("{stem}-annotated.png"))
        .save_file()
    else {
        return Ok(None);
    };
    let img = preprocess::load(&a.path).map_err(|e| e.to_string())?;
    annotate::save(&img, shapes, &out)
        .map_err(|e| format!("cannot save {}: {e}", out.display()))?;
    let json = out.with_extension("json");
    let text = serde_json::to_vec_pretty(&shapes.to_json(camera)).map_err(|e| e.to_string())?;
    crate::chat::history::write_atomic(&json, &text, &mut || Ok(()))
        .map_err(|e| format!("cannot save {}: {e}", json.display()))?;
    Ok(Some(out))
}
