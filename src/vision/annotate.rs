//! Answers drawn over the image: points as filled dots, boxes as
//! outlines, a trajectory as a polyline with its end marked — the same
//! shapes the window overlays, for `spillway generate --annotate` and the
//! window's "save annotated image".

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
    for w in shapes.trajectory.windows(2) {
        c.line(w[0], w[1], line, PATH);
    }
    if let Some(end) = shapes.trajectory.last() {
        c.disc(end[0], end[1], dot * 1.4, [255, 255, 255]);
        c.disc(end[0], end[1], dot * 1.1, PATH);
    }
    for p in &shapes.points {
        c.disc(p[0], p[1], dot + 1.5, [255, 255, 255]);
        c.disc(p[0], p[1], dot, POINT);
    }
}

/// Draws `shapes` on a copy of `img` and writes it as PNG to `out`
/// (a temporary file renamed into place, so `out` is whole or untouched).
pub fn save(img: &Rgb, shapes: &Shapes, out: &Path) -> std::io::Result<()> {
    let mut copy = img.clone();
    draw(&mut copy, shapes);
    let buf = image::RgbImage::from_raw(copy.width as u32, copy.height as u32, copy.data)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
