//! Answers drawn over the image: points as filled dots, boxes as
//! outlines, a trajectory as a polyline with its end marked — the same
//! shapes the window overlays, for `spillway generate --annotate` and the
//! window's "save annotated image". A trajectory with depths (RoboBrain
//! 2.5's 3-D traces) is coloured by depth, near warm to far cool.

use std::path::Path;

use super::preprocess::Rgb;
use super::tasks::Shapes;

pub const POINT: [u8; 3] = [230, 40, 40];
pub const BOX: [u8; 3] = [40, 200, 60];
pub const PATH: [u8; 3] = [40, 110, 240];

struct Canvas<'a> {
    img: &'a mut Rgb,
}

impl Canvas<'_> {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x < 0 || y < 0 || x >= self.img.width as i64 || y >= self.img.height as i64 {
            return;
        }
        let i = (y as usize * self.img.width + x as usize) * 3;
        self.img.data[i..i + 3].copy_from_slice(&c);
    }

    fn disc(&mut self, cx: f32, cy: f32, r: f32, c: [u8; 3]) {
        let ri = r.ceil() as i64;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                if (dx * dx + dy * dy) as f32 <= r * r {
                    self.put(cx.round() as i64 + dx, cy.round() as i64 + dy, c);
                }
            }
        }
    }

    /// A line `width` pixels wide (discs along it).
    fn line(&mut self, a: [f32; 2], b: [f32; 2], width: f32, c: [u8; 3]) {
        let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
        let steps = (len.ceil() as usize).max(1);
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            self.disc(
                a[0] + (b[0] - a[0]) * t,
                a[1] + (b[1] - a[1]) * t,
                width / 2.0,
                c,
            );
        }
    }
}

/// The trajectory's depths when there is one for each of its points.
pub fn trace_depths(shapes: &Shapes) -> Option<&[f32]> {
    (!shapes.depths.is_empty() && shapes.depths.len() == shapes.trajectory.len())
        .then_some(shapes.depths.as_slice())
}

/// The points' depths when there is one for each point.
pub fn point_depths(shapes: &Shapes) -> Option<&[f32]> {
    (!shapes.point_depths.is_empty() && shapes.point_depths.len() == shapes.points.len())
        .then_some(shapes.point_depths.as_slice())
}

/// The depth range of a trace and of points with depths, (near, far) in
/// metres; `None` without depths (or with counts that do not match the
/// points).
pub fn depth_range(shapes: &Shapes) -> Option<(f32, f32)> {
    let all = || {
        trace_depths(shapes)
            .into_iter()
            .chain(point_depths(shapes))
            .flatten()
            .copied()
    };
    let near = all().fold(f32::INFINITY, f32::min);
    let far = all().fold(f32::NEG_INFINITY, f32::max);
    near.is_finite().then_some((near, far))
}

/// The colour of depth `d` within (near, far): red (near) through orange,
/// yellow and cyan to blue (far); the middle of a flat range is yellow.
pub fn depth_color(d: f32, (near, far): (f32, f32)) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [220.0, 40.0, 40.0],
        [240.0, 140.0, 30.0],
        [235.0, 215.0, 40.0],
        [40.0, 200.0, 220.0],
        [40.0, 90.0, 235.0],
    ];
    let t = if far > near {
        ((d - near) / (far - near)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// Sizes that read at the image's scale.
pub fn stroke(width: usize, height: usize) -> (f32, f32) {
    let m = width.min(height) as f32;
    ((m / 200.0).clamp(2.0, 8.0), (m / 80.0).clamp(4.0, 16.0))
}

/// Draws `shapes` (in the image's own pixels) onto `img`.
pub fn draw(img: &mut Rgb, shapes: &Shapes) {
    let (line, dot) = stroke(img.width, img.height);
    let mut c = Canvas { img };
    for b in &shapes.boxes {
        let corners = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]];
        for i in 0..4 {
            c.line(corners[i], corners[(i + 1) % 4], line, BOX);
        }
    }
    let range = depth_range(shapes);
    let trace = trace_depths(shapes).zip(range);
    // A segment takes the colour of its mean depth.
    let seg = |i: usize| match trace {
        Some((d, r)) => depth_color((d[i] + d[i + 1]) / 2.0, r),
        None => PATH,
    };
    for (i, w) in shapes.trajectory.windows(2).enumerate() {
        c.line(w[0], w[1], line, seg(i));
    }
    if let Some((depths, r)) = trace {
        for (p, &d) in shapes.trajectory.iter().zip(depths) {
            c.disc(p[0], p[1], dot * 0.8, [255, 255, 255]);
            c.disc(p[0], p[1], dot * 0.6, depth_color(d, r));
        }
    }
    if let Some(end) = shapes.trajectory.last() {
        let fill = match trace {
            Some((d, r)) => depth_color(d[d.len() - 1], r),
            None => PATH,
        };
        c.disc(end[0], end[1], dot * 1.4, [255, 255, 255]);
        c.disc(end[0], end[1], dot * 1.1, fill);
    }
    let points = point_depths(shapes).zip(range);
    for (i, p) in shapes.points.iter().enumerate() {
        let fill = points.map_or(POINT, |(d, r)| depth_color(d[i], r));
        c.disc(p[0], p[1], dot + 1.5, [255, 255, 255]);
        c.disc(p[0], p[1], dot, fill);
    }
}

/// Draws `shapes` on a copy of `img` and writes it as PNG to `out`
/// (a temporary file renamed into place, so `out` is whole or untouched).
pub fn save(img: &Rgb, shapes: &Shapes, out: &Path) -> std::io::Result<()> {
    let mut copy = img.clone();
    draw(&mut copy, shapes);
    write_png(copy, out)
}

/// Writes `img` as PNG to `out` through a temporary file renamed into place.
pub fn write_png(img: Rgb, out: &Path) -> std::io::Result<()> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
        .ok_or_else(|| std::io::Error::other("image buffer has the wrong size"))?;
    let tmp = out.with_extension(format!("png.tmp{}", std::process::id()));
    let written = buf
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| std::io::Error::other(format!("cannot write {}: {e}", out.display())))
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Height of each frame in a progress strip, in pixels.
pub const STRIP_FRAME: usize = 120;
/// Height of the plot under the frames.
pub const STRIP_PLOT: usize = 160;
/// Progress that rose (or held) since the frame before, and that fell.
pub const ROSE: [u8; 3] = [30, 160, 60];
pub const FELL: [u8; 3] = [210, 40, 40];

/// A progress estimate as one picture: the frames side by side, each
/// scaled to [`STRIP_FRAME`] pixels high, and under them a plot of each
/// frame's progress (0 % at the bottom line, 100 % at the top, a grid line
/// every 25 %), a dot per frame under its centre — green where progress
/// rose or held, red where it fell — joined by a grey line. A frame
/// without a readable answer has no dot.
pub fn progress_strip(frames: &[Rgb], progress: &[Option<f32>]) -> Rgb {
    let scaled: Vec<image::RgbImage> = frames
        .iter()
        .map(|f| {
            let w = ((f.width * STRIP_FRAME) / f.height.max(1)).clamp(1, 4 * STRIP_FRAME);
            image::RgbImage::from_raw(f.width as u32, f.height as u32, f.data.clone()).map_or_else(
                || image::RgbImage::new(w as u32, STRIP_FRAME as u32),
                |img| {
                    image::imageops::resize(
                        &img,
                        w as u32,
                        STRIP_FRAME as u32,
                        image::imageops::FilterType::Triangle,
                    )
                },
            )
        })
        .collect();
    let gap = 4;
    let width = scaled
        .iter()
        .map(|i| i.width() as usize + gap)
        .sum::<usize>()
        + gap;
    let height = STRIP_FRAME + STRIP_PLOT + 3 * gap;
    let mut out = Rgb {
        width,
        height,
        data: vec![255; width * height * 3],
    };
    let mut centres = Vec::with_capacity(scaled.len());
    let mut x0 = gap;
    for img in &scaled {
        for (x, y, p) in img.enumerate_pixels() {
            let i = ((gap + y as usize) * width + x0 + x as usize) * 3;
            out.data[i..i + 3].copy_from_slice(&p.0);
        }
        centres.push((x0 + img.width() as usize / 2) as f32);
        x0 += img.width() as usize + gap;
    }
    let top = (STRIP_FRAME + 2 * gap) as f32 + 8.0;
    let bottom = (height - gap) as f32 - 8.0;
    let y_of = |p: f32| bottom - p.clamp(0.0, 1.0) * (bottom - top);
    let mut c = Canvas { img: &mut out };
    for q in 0..=4 {
        let y = y_of(q as f32 / 4.0);
        let shade = if q == 0 || q == 4 { 150 } else { 215 };
        c.line([gap as f32, y], [(width - gap) as f32, y], 1.0, [shade; 3]);
    }
    let dots: Vec<(f32, f32, [u8; 3])> = {
        let mut prev: Option<f32> = None;
        centres
            .iter()
            .zip(progress)
            .filter_map(|(&x, p)| {
                let p = (*p)?;
                let colour = if prev.is_some_and(|q| p < q) {
                    FELL
                } else {
                    ROSE
                };
                prev = Some(p);
                Some((x, y_of(p), colour))
            })
            .collect()
    };
    for w in dots.windows(2) {
        c.line([w[0].0, w[0].1], [w[1].0, w[1].1], 2.0, [140; 3]);
    }
    for &(x, y, colour) in &dots {
        c.disc(x, y, 5.0, [30; 3]);
        c.disc(x, y, 4.0, colour);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_colour_the_trace_near_to_far() {
        let shapes = Shapes {
            trajectory: vec![[10.0, 40.0], [50.0, 40.0], [90.0, 40.0]],
            depths: vec![0.4, 0.5, 0.6],
            ..Default::default()
        };
        assert_eq!(depth_range(&shapes), Some((0.4, 0.6)));
        let r = (0.4, 0.6);
        assert_eq!(depth_color(0.4, r), [220, 40, 40]);
        assert_eq!(depth_color(0.6, r), [40, 90, 235]);
        assert_eq!(depth_color(0.5, r), [235, 215, 40]);
        // Out of range is clamped; a flat range is the middle colour.
        assert_eq!(depth_color(9.0, r), [40, 90, 235]);
        assert_eq!(depth_color(1.0, (1.0, 1.0)), [235, 215, 40]);
        let mut img = Rgb {
            width: 100,
            height: 80,
            data: vec![0; 100 * 80 * 3],
        };
        draw(&mut img, &shapes);
        let at = |x: usize, y: usize| &img.data[(y * 100 + x) * 3..(y * 100 + x) * 3 + 3];
        // The near segment is warm, the far one cool.
        let near = at(25, 40);
        let far = at(75, 40);
        assert!(near[0] > near[2], "{near:?}");
        assert!(far[2] > far[0], "{far:?}");
        // Mismatched counts: drawn plain.
        let plain = Shapes {
            depths: vec![0.4],
            ..shapes.clone()
        };
        assert_eq!(depth_range(&plain), None);
        // Points with depths share the range and are coloured too.
        let points = Shapes {
            points: vec![[20.0, 20.0], [80.0, 20.0]],
            point_depths: vec![0.3, 0.6],
            ..shapes.clone()
        };
        assert_eq!(depth_range(&points), Some((0.3, 0.6)));
        let mut img = Rgb {
            width: 100,
            height: 80,
            data: vec![0; 100 * 80 * 3],
        };
        draw(&mut img, &points);
        let at = |x: usize, y: usize| &img.data[(y * 100 + x) * 3..(y * 100 + x) * 3 + 3];
        assert_eq!(at(20, 20), &depth_color(0.3, (0.3, 0.6)));
        assert_eq!(at(80, 20), &depth_color(0.6, (0.3, 0.6)));
    }

    #[test]
    fn shapes_land_where_they_say() {
        let mut img = Rgb {
            width: 100,
            height: 80,
            data: vec![0; 100 * 80 * 3],
        };
        let shapes = Shapes {
            points: vec![[20.0, 30.0]],
            boxes: vec![[50.0, 10.0, 90.0, 70.0]],
            trajectory: vec![[10.0, 70.0], [40.0, 60.0]],
            ..Default::default()
        };
        draw(&mut img, &shapes);
        let at = |x: usize, y: usize| &img.data[(y * 100 + x) * 3..(y * 100 + x) * 3 + 3];
        assert_eq!(at(20, 30), POINT);
        assert_eq!(at(50, 40), BOX);
        assert_eq!(at(70, 10), BOX);
        assert_eq!(at(70, 40), [0, 0, 0], "a box is an outline");
        assert_eq!(at(40, 60), PATH, "the end of the trajectory is marked");
        assert_eq!(at(25, 65), PATH);
    }

    #[test]
    fn a_progress_strip_plots_each_frame_under_it() {
        let frame = |v: u8| Rgb {
            width: 60,
            height: 40,
            data: vec![v; 60 * 40 * 3],
        };
        let frames = [frame(0), frame(90), frame(200)];
        let strip = progress_strip(&frames, &[Some(0.0), Some(0.8), Some(0.4)]);
        // Three frames 180 pixels wide side by side, gaps of 4.
        assert_eq!(strip.width, 3 * 180 + 4 * 4);
        assert_eq!(strip.height, STRIP_FRAME + STRIP_PLOT + 12);
        let at = |x: usize, y: usize| {
            let i = (y * strip.width + x) * 3;
            [strip.data[i], strip.data[i + 1], strip.data[i + 2]]
        };
        assert_eq!(at(4 + 90, 60), [0; 3], "the first frame, scaled");
        assert_eq!(at(4 + 184 + 90, 60), [90; 3], "the second frame, scaled");
        let top = (STRIP_FRAME + 8) as f32 + 8.0;
        let bottom = (strip.height - 4) as f32 - 8.0;
        let y = |p: f32| (bottom - p * (bottom - top)).round() as usize;
        // The first frame's dot at 0 %, the second's rose to 80 %, the
        // third fell to 40 %.
        assert_eq!(at(4 + 90, y(0.0)), ROSE);
        assert_eq!(at(4 + 184 + 90, y(0.8)), ROSE);
        assert_eq!(at(4 + 2 * 184 + 90, y(0.4)), FELL);
        // A frame without a score has no dot.
        let gaps = progress_strip(&frames, &[Some(0.0), None, Some(0.5)]);
        let i = (y(0.8) * gaps.width + 4 + 184 + 90) * 3;
        assert_ne!(&gaps.data[i..i + 3], &ROSE);
    }
}
