//! Vision-language models (Qwen2.5-VL, which RoboBrain 2.0 is): image
//! preprocessing, the vision tower, the multimodal rotary positions of the
//! text model, and RoboBrain's task prompts and answer parsing.

pub mod annotate;
pub mod attention;
pub mod preprocess;
pub mod tasks;
pub mod tower;

pub use preprocess::{ImageError, Prepared, ProcessorConfig};
pub use tower::{VisionConfig, VisionTower};

/// The special tokens a vision-language prompt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTokens {
    pub image_pad: u32,
    pub vision_start: u32,
    pub vision_end: u32,
}

impl VisionTokens {
    /// From config.json (`image_token_id`, `vision_start_token_id`,
    /// `vision_end_token_id`), with Qwen2.5-VL's ids as defaults.
    pub fn from_config(config: &serde_json::Value) -> Self {
        let id = |k: &str, d: u32| {
            config
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .map_or(d, |v| v as u32)
        };
        VisionTokens {
            image_pad: id("image_token_id", 151_655),
            vision_start: id("vision_start_token_id", 151_652),
            vision_end: id("vision_end_token_id", 151_653),
        }
    }
}

/// Multimodal rotary positions (t, h, w) of a token sequence, as
/// Qwen2.5-VL's `get_rope_index` computes them for images: text advances
/// all three by one; an image's `<|image_pad|>` run takes (start, start + row,
/// start + column) over its merged grid, and the text after it continues at
/// one past the largest position used. `grids` are the (t, h, w) patch
/// grids of the images in order of appearance.
///
/// Returns the positions and the rope delta (last position + 1 − tokens),
/// which places tokens appended later at `index + delta`.
pub fn mrope_positions(
    tokens: &[u32],
    image_pad: u32,
    grids: &[[usize; 3]],
    merge: usize,
) -> Result<(Vec<[u32; 3]>, i64), String> {
    let mut out: Vec<[u32; 3]> = Vec::with_capacity(tokens.len());
    let mut next: u32 = 0;
    let mut i = 0;
    let mut images = grids.iter();
    while i < tokens.len() {
        if tokens[i] != image_pad {
            out.push([next; 3]);
            next += 1;
            i += 1;
            continue;
        }
        let &[t, gh, gw] = images
            .next()
            .ok_or("the prompt has more images than were given")?;
        let (lh, lw) = (gh / merge, gw / merge);
        let count = t * lh * lw;
        if i + count > tokens.len() || tokens[i..i + count].iter().any(|&x| x != image_pad) {
            return Err(format!(
                "an image of {count} tokens does not match its <|image_pad|> run"
            ));
        }
        let start = next;
        let mut max = start;
        for ti in 0..t {
            for y in 0..lh {
                for x in 0..lw {
                    // Images have no time step: every frame index scales by
                    // zero seconds per grid.
                    let _ = ti;
                    let p = [start, start + y as u32, start + x as u32];
                    max = max.max(p[1]).max(p[2]);
                    out.push(p);
                }
            }
        }
        next = max + 1;
        i += count;
    }
    if images.next().is_some() {
        return Err("more images were given than the prompt has".into());
    }
    let delta = next as i64 - tokens.len() as i64;
    Ok((out, delta))
}

/// The image files of a folder of frames (PNG, JPEG, WebP, BMP), in name
/// order — a recorded episode's frames as robot tools write them
/// (`frame_000010.png`…).
pub fn list_frames(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?;
    let mut frames: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["png", "jpg", "jpeg", "webp", "bmp"].contains(&e.to_ascii_lowercase().as_str())
                })
        })
        .collect();
    frames.sort();
    if frames.is_empty() {
        return Err(format!(
            "{} holds no images (PNG, JPEG, WebP, BMP)",
            dir.display()
        ));
    }
    Ok(frames)
}

/// Expands each `<|image_pad|>` of a rendered prompt's tokens into as many
/// copies as its image takes (`counts`, in order).
pub fn expand_image_pads(
    tokens: &[u32],
    image_pad: u32,
    counts: &[usize],
) -> Result<Vec<u32>, String> {
    let found = tokens.iter().filter(|&&t| t == image_pad).count();
    if found != counts.len() {
        return Err(format!(
            "the prompt has {found} image placeholders for {} images",
            counts.len()
        ));
    }
    let mut out = Vec::with_capacity(tokens.len() + counts.iter().sum::<usize>());
    let mut c = counts.iter();
    for &t in tokens {
        if t == image_pad {
            let n = *c.next().unwrap_or(&1);
            out.extend(std::iter::repeat_n(image_pad, n));
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_after_an_image_skip_ahead() {
        // 2 text, a 2×3 merged image (grid 4×6), 2 text.
        let mut toks = vec![1, 2];
        toks.extend([9; 6]);
        toks.extend([3, 4]);
        let (p, delta) = mrope_positions(&toks, 9, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[2], [2, 2, 2]);
        assert_eq!(p[3], [2, 2, 3]);
        assert_eq!(p[7], [2, 3, 4]);
        // Text continues at max(2+1, 2+2) + 1 = 5.
        assert_eq!(p[8], [5, 5, 5]);
        assert_eq!(p[9], [6, 6, 6]);
        assert_eq!(delta, 7 - 10);
        assert!(mrope_positions(&toks, 9, &[], 2).is_err());
        assert!(mrope_positions(&toks, 9, &[[1, 4, 4]], 2).is_err());
    }

    #[test]
    fn pads_expand_per_image() {
        let out = expand_image_pads(&[1, 9, 2, 9], 9, &[2, 3]).unwrap();
        assert_eq!(out, vec![1, 9, 9, 2, 9, 9, 9]);
        assert!(expand_image_pads(&[1, 9], 9, &[2, 3]).is_err());
    }
}
