//! Image → Qwen2.5-VL patches, as `Qwen2VLImageProcessor` does it: RGB
//! (alpha composited over white), `smart_resize` to multiples of 28 within
//! min/max pixels, bicubic resampling (Pillow's algorithm, bit for bit:
//! separable passes with fixed-point weights), CLIP mean/std normalisation,
//! and the patch layout the vision tower expects (the frame duplicated in
//! time, rows in merge-block order).

use std::path::Path;

/// Decoding limits: a file that claims more than this is refused before
/// its pixels are allocated (decompression bombs).
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_PIXELS: u64 = 64 << 20;
pub const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Bytes of an image file read at most.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an image Spillway can read ({reason})")]
    Decode { path: String, reason: String },
    #[error("{path} is {width}x{height} pixels, more than Spillway decodes ({MAX_SIDE} per side, {} megapixels): a decompression bomb, or a scan to shrink first", MAX_PIXELS >> 20)]
    TooLarge {
        path: String,
        width: u32,
        height: u32,
    },
    #[error("{width}x{height}: the aspect ratio must be below 200 to 1")]
    AspectRatio { width: u32, height: u32 },
    #[error("an image must be at least 1x1 pixels")]
    Empty,
}

/// The processor's settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 16_384,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

/// No image is processed at more pixels than this (about 85k tokens at
/// Qwen2.5-VL's 28-pixel factor), whatever a processor file says.
pub const MAX_PIXELS_CEILING: usize = 1 << 26;

impl ProcessorConfig {
    /// From a `preprocessor_config.json` document; missing keys keep the
    /// defaults (transformers 5 also writes `size.shortest_edge` /
    /// `size.longest_edge` for min/max pixels).
    pub fn from_json(v: &serde_json::Value) -> Self {
        let mut c = ProcessorConfig::default();
        let size = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
        };
        let sized = |k: &str| {
            v.get("size")
                .and_then(|s| s.get(k))
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
        };
        let triple = |k: &str| -> Option<[f32; 3]> {
            let a = v.get(k)?.as_array()?;
            (a.len() == 3).then(|| {
                let f = |i: usize| a[i].as_f64().unwrap_or(0.0) as f32;
                [f(0), f(1), f(2)]
            })
        };
        // Sizes from the file are taken only within what a processor can
        // honestly use; others keep the defaults (and the tower's tensor
        // shapes, checked at load, must then agree).
        if let Some(p) = size("patch_size").filter(|&p| (1..=64).contains(&p)) {
            c.patch_size = p;
        }
        if let Some(m) = size("merge_size").filter(|&m| (1..=8).contains(&m)) {
            c.merge_size = m;
        }
        if let Some(t) = size("temporal_patch_size").filter(|&t| (1..=8).contains(&t)) {
            c.temporal_patch_size = t;
        }
        if let Some(p) = size("min_pixels").or_else(|| sized("shortest_edge")) {
            c.min_pixels = p;
        }
        if let Some(p) = size("max_pixels").or_else(|| sized("longest_edge")) {
            c.max_pixels = p;
        }
        c.cap_pixels(MAX_PIXELS_CEILING);
        if let Some(m) = triple("image_mean") {
            c.mean = m;
        }
        if let Some(s) = triple("image_std").filter(|s| s.iter().all(|&x| x > 0.0)) {
            c.std = s;
        }
        c
    }

    /// Lowers the pixel bound to `max` (a user's cap, the plan's budget);
    /// the processor's `min_pixels` never raises it again.
    pub fn cap_pixels(&mut self, max: usize) {
        self.max_pixels = self.max_pixels.min(max).max(1);
        self.min_pixels = self.min_pixels.min(self.max_pixels);
    }

    /// Pixels per merged token side: `patch_size · merge_size` (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per patch row: channels × time × patch².
    pub fn patch_values(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// The (height, width) an image is resized to.
    pub fn resized_size(&self, height: u32, width: u32) -> Result<(usize, usize), ImageError> {
        smart_resize(
            height as usize,
            width as usize,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
    }

    /// Language-model tokens an image of this size costs.
    pub fn tokens_for(&self, height: u32, width: u32) -> Result<usize, ImageError> {
        let (h, w) = self.resized_size(height, width)?;
        Ok(h * w / (self.factor() * self.factor()))
    }
}

/// Python's `round` (half to even) of a non-negative float.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc() - 0.5).abs() == 0.0 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    }
}

/// Qwen2-VL's `smart_resize`: both sides multiples of `factor`, the area
/// within `[min_pixels, max_pixels]`, the aspect ratio kept as well as that
/// allows.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::Empty);
    }
    if height.max(width) as f64 / height.min(width) as f64 > 200.0 {
        return Err(ImageError::AspectRatio {
            width: width as u32,
            height: height as u32,
        });
    }
    // A processor file's min_pixels never lifts an image past max_pixels.
    let min_pixels = min_pixels.min(max_pixels);
    let f = factor as f64;
    let (hf, wf) = (height as f64, width as f64);
    let mut h = (round_half_even(hf / f) * f) as usize;
    let mut w = (round_half_even(wf / f) * f) as usize;
    if h * w > max_pixels {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        h = factor.max(((hf / beta / f).floor() * f) as usize);
        w = factor.max(((wf / beta / f).floor() * f) as usize);
    } else if h * w < min_pixels {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        h = ((hf * beta / f).ceil() * f) as usize;
        w = ((wf * beta / f).ceil() * f) as usize;
    }
    Ok((h.max(factor), w.max(factor)))
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Reads an image file with bounded memory.
pub fn load(path: &Path) -> Result<Rgb, ImageError> {
    let bytes = read_file(path)?;
    decode(&bytes, &path.display().to_string())
}

/// An image file's bytes, read only up to what an image file can honestly
/// be (a compressed 64-megapixel image is far smaller): a huge or endless
/// file (a FIFO, /dev/zero) is refused, not read into memory.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let shown = path.display().to_string();
    crate::chat::history::read_at_most(path, MAX_FILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::FileTooLarge {
            ImageError::Decode {
                path: shown,
                reason: source.to_string(),
            }
        } else {
            ImageError::Io {
                path: shown,
                source,
            }
        }
    })
}

/// Decodes an image sent inline as a `data:` URL
/// (`data:image/png;base64,…`), as the OpenAI API carries them. The
/// payload is measured before it is decoded.
pub fn decode_data_url(url: &str) -> Result<Rgb, ImageError> {
    use base64::Engine as _;
    const NAME: &str = "the image in the data: URL";
    let bad = |reason: &str| ImageError::Decode {
        path: NAME.into(),
        reason: reason.into(),
    };
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| bad("not a data: URL"))?;
    let (head, payload) = rest
        .split_once(',')
        .ok_or_else(|| bad("a data: URL needs a comma before its data"))?;
    if !head.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(bad("only base64 data: URLs are read"));
    }
    if payload.len() as u64 > MAX_FILE_BYTES / 3 * 4 + 4 {
        return Err(bad("larger than an image file can honestly be"));
    }
    // Line breaks and spaces are allowed in a base64 payload.
    let clean: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .map_err(|e| bad(&format!("bad base64: {e}")))?;
    decode(&bytes, NAME)
}

/// Decodes image bytes (PNG, JPEG, WebP, BMP, GIF) to RGB, compositing any
/// alpha over white as the reference processor does. `name` is for errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<Rgb, ImageError> {
    let bad = |reason: String| ImageError::Decode {
        path: name.to_string(),
        reason,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("unknown format".into()));
    }
    let (width, height) = reader.into_dimensions().map_err(|e| bad(e.to_string()))?;
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            path: name.to_string(),
            width,
            height,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    Ok(to_rgb(img))
}

/// RGB from any decoded image; transparent pixels over white (Pillow's
/// `alpha_composite` onto a white background, then `convert("RGB")`).
pub fn to_rgb(img: image::DynamicImage) -> Rgb {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let mut out = Vec::with_capacity(width * height * 3);
        for p in rgba.pixels() {
            let a = p[3] as u32;
            for c in 0..3 {
                out.push(if a == 0 {
                    255
                } else {
                    over_white(p[c] as u32, a)
                });
            }
        }
        out
    } else {
        img.to_rgb8().into_raw()
    };
    Rgb {
        width,
        height,
        data,
    }
}

/// Pillow's `alpha_composite` of one channel over opaque white, in its
/// integer arithmetic (7 fraction bits, division by 255 as two shifts).
fn over_white(src: u32, a: u32) -> u8 {
    let (coef1, coef2) = (a * 128, (255 - a) * 128);
    let tmp = src * coef1 + 255 * coef2 + (0x80 << 7);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> 7) as u8
}

/// Pillow's bicubic kernel (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of one resampling pass, as Pillow computes them:
/// for each output index, the first input index and its weights.
fn coefficients(in_size: usize, out_size: usize) -> (Vec<usize>, usize, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { 0.0 };
            let f = w * (1u64 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if f < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        starts.push(xmin);
        // Weights past n stay zero; they multiply in-range pixels only
        // when n == ksize.
        for w in &mut weights[xx * ksize + n..(xx + 1) * ksize] {
            *w = 0;
        }
    }
    (starts, ksize, weights)
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bicubic resize to `width × height`, identical to Pillow's
/// `Image.resize(..., Image.BICUBIC)` on an RGB image (horizontal pass, then
/// vertical, each rounded to 8 bits).
pub fn resize_bicubic(img: &Rgb, width: usize, height: usize) -> Rgb {
    let mut cur = img.clone();
    if width != cur.width {
        let (starts, ksize, w) = coefficients(cur.width, width);
        let mut out = vec![0u8; width * cur.height * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (xx, &x0) in starts.iter().enumerate() {
                let ws = &w[xx * ksize..(xx + 1) * ksize];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in ws.iter().enumerate() {
                        if k != 0 {
                            ss += row[(x0 + i) * 3 + c] as i64 * k as i64;
                        }
                    }
                    out[(y * width + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb {
            width,
            height: cur.height,
            data: out,
        };
    }
    if height != cur.height {
        let (starts, ksize, w) = coefficients(cur.height, height);
        let stride = cur.width * 3;
        let mut out = vec![0u8; cur.width * height * 3];
        for (yy, &y0) in starts.iter().enumerate() {
            let ws = &w[yy * ksize..(yy + 1) * ksize];
            for x in 0..stride {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &k) in ws.iter().enumerate() {
                    if k != 0 {
                        ss += cur.data[(y0 + i) * stride + x] as i64 * k as i64;
                    }
                }
                out[yy * stride + x] = clip8(ss);
            }
        }
        cur = Rgb {
            width: cur.width,
            height,
            data: out,
        };
    }
    cur
}

/// One image ready for the vision tower.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `patches × patch_values`, row-major.
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid_thw: [usize; 3],
    /// The size the model sees (width, height), in pixels.
    pub resized: (usize, usize),
    /// The original size (width, height).
    pub original: (usize, usize),
}

impl Prepared {
    pub fn patches(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// Language-model tokens (`<|image_pad|>` copies) this image takes.
    pub fn tokens(&self, merge_size: usize) -> usize {
        self.patches() / (merge_size * merge_size)
    }
}

/// Resizes, normalises and cuts `img` into patches.
pub fn prepare(img: &Rgb, cfg: &ProcessorConfig) -> Result<Prepared, ImageError> {
    let (h, w) = cfg.resized_size(img.height as u32, img.width as u32)?;
    let resized = if (w, h) == (img.width, img.height) {
        img.clone()
    } else {
        resize_bicubic(img, w, h)
    };
    let (p, m, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (h / p, w / p);
    let row_len = cfg.patch_values();
    let mut out = vec![0f32; gh * gw * row_len];
    // Per channel: (v/255 − mean)/std as one multiply-add, in f32 as the
    // reference's rescale-and-normalise.
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * cfg.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| cfg.mean[c] / cfg.std[c]);
    let mut row = 0;
    for hb in 0..gh / m {
        for wb in 0..gw / m {
            for dh in 0..m {
                for dw in 0..m {
                    let (py, px) = ((hb * m + dh) * p, (wb * m + dw) * p);
                    let dst = &mut out[row * row_len..(row + 1) * row_len];
                    let mut i = 0;
                    for c in 0..3 {
                        for _t in 0..tp {
                            for y in 0..p {
                                for x in 0..p {
                                    let v = resized.data[((py + y) * w + px + x) * 3 + c] as f32;
                                    dst[i] = v * scale[c] - shift[c];
                                    i += 1;
                                }
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
    Ok(Prepared {
        pixel_values: out,
        grid_thw: [1, gh, gw],
        resized: (w, h),
        original: (img.width, img.height),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_in_smart_resize() {
        // 42/28 = 1.5 → 2 (even), 70/28 = 2.5 → 2 (even), 98/28 = 3.5 → 4.
        assert_eq!(smart_resize(42, 70, 28, 0, usize::MAX).unwrap(), (56, 56));
        assert_eq!(smart_resize(98, 28, 28, 0, usize::MAX).unwrap(), (112, 28));
        // Odd sizes round to the nearest multiple.
        assert_eq!(
            smart_resize(167, 225, 28, 0, usize::MAX).unwrap(),
            (168, 224)
        );
    }

    #[test]
    fn smart_resize_bounds_the_area() {
        let (h, w) = smart_resize(4000, 3000, 28, 3136, 1_003_520).unwrap();
        assert!(h * w <= 1_003_520 && h % 28 == 0 && w % 28 == 0);
        assert_eq!((h, w), (1148, 840));
        let (h, w) = smart_resize(10, 20, 28, 3136, 1_003_520).unwrap();
        assert!(h * w >= 3136);
        assert_eq!((h, w), (56, 84));
        assert!(matches!(
            smart_resize(10, 2010, 28, 0, usize::MAX),
            Err(ImageError::AspectRatio { .. })
        ));
    }

    #[test]
    fn resize_keeps_a_flat_image_flat() {
        let img = Rgb {
            width: 37,
            height: 23,
            data: [10u8, 200, 90].repeat(37 * 23),
        };
        for (w, h) in [(56, 28), (28, 56), (12, 9)] {
            let r = resize_bicubic(&img, w, h);
            assert_eq!((r.width, r.height), (w, h));
            assert!(r.data.chunks(3).all(|p| p == [10, 200, 90]));
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name)
    }

    #[test]
    fn resize_is_pillows_bicubic() {
        let src = load(&fixture("odd.png")).unwrap();
        for (file, w, h) in [("odd_up_84x56.png", 84, 56), ("odd_down_28x28.png", 28, 28)] {
            let want = load(&fixture(file)).unwrap();
            let got = resize_bicubic(&src, w, h);
            assert_eq!(got, want, "{file}");
        }
    }

    #[test]
    fn rgba_and_grayscale_files() {
        let rgba = load(&fixture("rgba.png")).unwrap();
        let want = load(&fixture("rgba_over_white.png")).unwrap();
        assert_eq!(rgba, want);
        let gray = load(&fixture("gray.png")).unwrap();
        assert_eq!(
            (gray.width, gray.height, gray.data.len()),
            (50, 33, 50 * 33 * 3)
        );
        assert!(gray.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        // 33×50 rounds to 28×56 = 1568 pixels, under min_pixels (3136): scaled up.
        let p = prepare(&gray, &ProcessorConfig::default()).unwrap();
        assert_eq!(p.resized, (84, 56));
        assert_eq!(p.grid_thw, [1, 4, 6]);
        assert_eq!(p.pixel_values.len(), 24 * 1176);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let rss_before = crate::telemetry::rss().map(|r| r.current);
        let e = load(&fixture("bomb.png")).unwrap_err();
        assert!(
            matches!(e, ImageError::TooLarge { width: 12000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("decompression bomb"));
        if let (Some(a), Some(b)) = (rss_before, crate::telemetry::rss().map(|r| r.current)) {
            assert!(
                b < a + (64 << 20),
                "decoding the bomb grew memory by {} MiB",
                (b - a) >> 20
            );
        }
        let e = load(&fixture("corrupt.png")).unwrap_err();
        assert!(e.to_string().contains("not an image"), "{e}");
        let e = load(&fixture("truncated.png")).unwrap_err();
        assert!(matches!(e, ImageError::Decode { .. }), "{e}");
        assert!(matches!(
            load(&fixture("absent.png")),
            Err(ImageError::Io { .. })
        ));
    }

    #[test]
    fn huge_and_tiny_images_respect_the_pixel_bounds() {
        let cfg = ProcessorConfig {
            max_pixels: 200_000,
            ..ProcessorConfig::default()
        };
        let img = Rgb {
            width: 3000,
            height: 2000,
            data: vec![128; 3000 * 2000 * 3],
        };
        let p = prepare(&img, &cfg).unwrap();
        assert!(p.resized.0 * p.resized.1 <= 200_000);
        assert_eq!(p.tokens(2), p.resized.0 * p.resized.1 / 784);
        assert_eq!(cfg.tokens_for(2000, 3000).unwrap(), p.tokens(2));
        let tiny = Rgb {
            width: 1,
            height: 1,
            data: vec![0, 0, 0],
        };
        let p = prepare(&tiny, &ProcessorConfig::default()).unwrap();
        assert_eq!(p.resized, (56, 56));
        assert_eq!(p.grid_thw, [1, 4, 4]);
    }

    #[test]
    fn alpha_goes_over_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([0, 100, 200, 128]));
        let rgb = to_rgb(image::DynamicImage::ImageRgba8(rgba));
        assert_eq!(&rgb.data[..3], &[255, 255, 255]);
        // (src·a + 255·(255 − a)) / 255, rounded: 127, 177, 227.
        assert_eq!(&rgb.data[3..], &[127, 177, 227]);
    }
}
