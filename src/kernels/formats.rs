//! The quantized weight formats the integer kernels read, in one common
//! form, and the 8-bit activations they are multiplied with.
//!
//! Every format is read as 32-value groups. Group value `i` is
//! `d · isc[i / 16] · v[i] + bias`, with `v` a small integer (unsigned for
//! the affine formats, signed for the symmetric ones) and `isc` integer
//! sub-scales (Q3_K and Q6_K have two per group; others use 1). Activations are
//! quantized to `aq` in −127..=127 with one scale per span — 32 values for
//! the 32-value formats, 256 for the K-quants, as llama.cpp's Q8_0 and Q8_K
//! activations are (the scale is stored per group either way) — with the
//! group sum kept (`x ≈ da · aq`), so a group's dot product is
//! `d · da · Σ isc·v·aq + bias · da · Σ aq`, integer inside, float outside.
//! The scalar code here is the reference every SIMD path must agree with.

use candle_core::quantized::GgmlDType;

/// Values per group and per activation block.
pub const GROUP: usize = 32;

/// A weight format with integer kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
        Format::Q3K,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
    ];

    pub fn from_ggml(t: GgmlDType) -> Option<Format> {
        Some(match t {
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q5_1 => Format::Q5_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q3K => Format::Q3K,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q5K => Format::Q5K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q3K => GgmlDType::Q3K,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q6K => GgmlDType::Q6K,
        }
    }

    /// Bytes per stored block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q3K => 110,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// 32-value groups per stored block.
    pub const fn groups(self) -> usize {
        match self {
            Format::Q3K | Format::Q4K | Format::Q5K | Format::Q6K => 8,
            _ => 1,
        }
    }

    /// Values per stored block.
    pub const fn block_values(self) -> usize {
        self.groups() * GROUP
    }
}

/// f16 bits at `b[at..at + 2]` as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block's 12 packed 6-bit values.
#[inline(always)]
pub fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Sub-scale `i` (0..16) of a Q3_K block from its 12 packed bytes: the low
/// four bits from byte `i` (or the high half of byte `i − 8`), the top two
/// from byte `8 + i % 4` at bit `2·(i / 4)`; stored biased by 32.
#[inline(always)]
pub fn q3k_scale(scales: &[u8], i: usize) -> i16 {
    let lo = if i < 8 {
        scales[i] & 0xF
    } else {
        scales[i - 8] >> 4
    };
    let hi = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    (lo | (hi << 4)) as i16 - 32
}

/// One group in the common form (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    pub v: [i8; GROUP],
    pub isc: [i16; 2],
    pub d: f32,
    pub bias: f32,
}

/// Group `g` of the block `b` (exactly `fmt.block_bytes()` bytes).
pub fn group(fmt: Format, b: &[u8], g: usize) -> Group {
    let mut v = [0i8; GROUP];
    let nib = |qs: &[u8], i: usize| -> u8 {
        if i < 16 {
            qs[i] & 0xF
        } else {
            qs[i - 16] >> 4
        }
    };
    let bit = |qh: u32, i: usize| -> u8 { (((qh >> i) & 1) as u8) << 4 };
    match fmt {
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 => {
            // d, [min,] [32 high bits,] 16 bytes of nibbles.
            let affine = matches!(fmt, Format::Q4_1 | Format::Q5_1);
            let mut at = if affine { 4 } else { 2 };
            let mut qh = 0;
            if matches!(fmt, Format::Q5_0 | Format::Q5_1) {
                qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                at += 4;
            }
            let qs = &b[at..at + 16];
            let off = match fmt {
                Format::Q4_0 => 8,
                Format::Q5_0 => 16,
                _ => 0,
            };
            for (i, x) in v.iter_mut().enumerate() {
                *x = (nib(qs, i) | bit(qh, i)) as i8 - off;
            }
            let bias = if affine { f16_at(b, 2) } else { 0.0 };
            Group {
                v,
                isc: [1, 1],
                d: f16_at(b, 0),
                bias,
            }
        }
        Format::Q8_0 => {
            for (i, x) in v.iter_mut().enumerate() {
                *x = b[2 + i] as i8;
            }
            Group {
                v,
                isc: [1, 1],
                d: f16_at(b, 0),
                bias: 0.0,
            }
        }
        Format::Q4K | Format::Q5K => {
            let (sc, m) = k_scale_min(&b[4..16], g);
            let qs_at = if fmt == Format::Q4K { 16 } else { 48 };
            let chunk = &b[qs_at + 32 * (g / 2)..qs_at + 32 * (g / 2) + 32];
            for (i, x) in v.iter_mut().enumerate() {
                let mut q = (chunk[i] >> (4 * (g & 1))) & 0xF;
                if fmt == Format::Q5K {
                    q |= ((b[16 + i] >> g) & 1) << 4;
                }
                *x = q as i8;
            }
            Group {
                v,
                isc: [1, 1],
                d: f16_at(b, 0) * sc as f32,
                bias: -f16_at(b, 2) * m as f32,
            }
        }
        Format::Q3K => {
            // 32 bytes of high bits (bit g for group g), 64 of low pairs
            // (group g: bytes 32·(g / 4).., bits 2·(g % 4)), 12 of scales, d.
            let (h, j) = (g / 4, g % 4);
            let qs = &b[32 + 32 * h..64 + 32 * h];
            for (i, x) in v.iter_mut().enumerate() {
                let lo = (qs[i] >> (2 * j)) & 3;
                let hi = (b[i] >> g) & 1;
                *x = (lo | (hi << 2)) as i8 - 4;
            }
            let sc = &b[96..108];
            Group {
                v,
                isc: [q3k_scale(sc, 2 * g), q3k_scale(sc, 2 * g + 1)],
                d: f16_at(b, 108),
                bias: 0.0,
            }
        }
        Format::Q6K => {
            let (h, k) = (g / 4, g % 4);
            let ql = &b[64 * h + 32 * (k & 1)..64 * h + 32 * (k & 1) + 32];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            for (i, x) in v.iter_mut().enumerate() {
                let lo = (ql[i] >> (4 * (k / 2))) & 0xF;
                let hi = (qh[i] >> (2 * k)) & 3;
                *x = (lo | (hi << 4)) as i8 - 32;
            }
            let sc = |j: usize| b[192 + 8 * h + 2 * k + j] as i8 as i16;
            Group {
                v,
                isc: [sc(0), sc(1)],
                d: f16_at(b, 208),
                bias: 0.0,
            }
        }
    }
}

/// Activations quantized per 32 values, one row per token, reused across
/// calls (the hot path allocates nothing once the buffers have grown).
#[derive(Debug, Default)]
pub struct QActs {
    /// `m × k` quantized values.
    pub q: Vec<i8>,
    /// Per group: the scale `da`.
    pub d: Vec<f32>,
    /// Per group: `da · Σ aq`, for the affine formats' bias.
    pub s: Vec<f32>,
    pub m: usize,
    pub k: usize,
    /// Values that share one scale: [`GROUP`] or a K-quant block (256).
    pub span: usize,
}

impl QActs {
    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.k / GROUP
    }

    pub(crate) fn resize(&mut self, m: usize, k: usize) {
        self.m = m;
        self.k = k;
        self.q.resize(m * k, 0);
        self.d.resize(m * k / GROUP, 0.0);
        self.s.resize(m * k / GROUP, 0.0);
    }
}

/// Scalar quantization of values whose span's largest magnitude is
/// `amax`: returns the sum of q.
#[inline(always)]
pub fn quantize_scaled(x: &[f32], q: &mut [i8], amax: f32) -> i32 {
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *o = r as i8;
        sum += r;
    }
    sum
}

/// Scalar dot product of weight row `w` (whole blocks) with activation row
/// `col` of `a`.
pub fn dot_row(fmt: Format, w: &[u8], a: &QActs, col: usize) -> f32 {
    let gpr = a.groups();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(fmt.block_bytes()).enumerate() {
        for g in 0..fmt.groups() {
            let gi = b * fmt.groups() + g;
            let grp = group(fmt, blk, g);
            let aq = &a.q[col * a.k + gi * GROUP..][..GROUP];
            let mut isum = 0i32;
            for h in 0..2 {
                let s: i32 = (16 * h..16 * h + 16)
                    .map(|i| grp.v[i] as i32 * aq[i] as i32)
                    .sum();
                isum += grp.isc[h] as i32 * s;
            }
            let da = a.d[col * gpr + gi];
            acc += grp.d * da * isum as f32 + grp.bias * a.s[col * gpr + gi];
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The common form reproduces candle's own dequantization of every
    /// format exactly.
    #[test]
    fn groups_match_candle_dequantization() {
        let dev = Device::Cpu;
        let k = 512;
        let w = Tensor::randn(0f32, 1.0, (3, k), &dev).unwrap();
        for fmt in Format::ALL {
            let q = QTensor::quantize(&w, fmt.ggml()).unwrap();
            let want = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
            let bytes = q.data().unwrap();
            let row_bytes = k / fmt.block_values() * fmt.block_bytes();
            for (r, want_row) in want.iter().enumerate() {
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                for (b, blk) in row.chunks_exact(fmt.block_bytes()).enumerate() {
                    for g in 0..fmt.groups() {
                        let grp = group(fmt, blk, g);
                        for i in 0..GROUP {
                            let got = grp.d * grp.isc[i / 16] as f32 * grp.v[i] as f32 + grp.bias;
                            let e = want_row[b * fmt.block_values() + g * GROUP + i];
                            assert!(
                                (got - e).abs() <= 1e-6 * e.abs().max(1.0),
                                "{fmt:?} row {r} block {b} group {g} value {i}: {got} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
