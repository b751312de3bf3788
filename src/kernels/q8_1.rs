//! Q4_1 / Q5_1 weights times Q8_1-quantized activations.

use half::f16;
use rayon::prelude::*;

/// GGML's `block_q4_1`: scale, minimum, 32 4-bit values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

/// GGML's `block_q5_1`: scale, minimum, high bits, 32 low nibbles.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1 {
    d: f16,
    m: f16,
    qh: [u8; 4],
    qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Views raw GGML bytes as blocks; `None` when the length or alignment is off.
pub fn blocks<T>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 || (bytes.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: T is a repr(C) block of plain integers and f16 values, valid
    // for any bit pattern; length and alignment were checked above.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

const QK: usize = 32;

/// One block of 32 activations: int8 values, their scale, and
/// `scale * sum(values)` kept in f32.
#[derive(Clone, Copy)]
pub struct BlockQ8_1F {
    pub qs: [i8; QK],
    pub d: f32,
    pub s: f32,
}

/// llama.cpp's `quantize_row_q8_1`, with the sum term kept in f32.
pub fn quantize_row(x: &[f32], out: &mut Vec<BlockQ8_1F>) {
    out.clear();
    for chunk in x.chunks_exact(QK) {
        let amax = chunk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(chunk) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        // llama.cpp stores d and s as f16; round d the same way so the
        // integer products scale identically.
        let d16 = f16::from_f32(d).to_f32();
        out.push(BlockQ8_1F {
            qs,
            d: d16,
            s: f16::from_f32(sum as f32 * d).to_f32(),
        });
    }
}

#[inline]
fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_1F]) -> f32 {
    let mut acc = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (wb.qs[j] & 0x0F) as i32;
            let v1 = (wb.qs[j] >> 4) as i32;
            sumi += v0 * xb.qs[j] as i32 + v1 * xb.qs[j + QK / 2] as i32;
        }
        acc += sumi as f32 * wb.d.to_f32() * xb.d + wb.m.to_f32() * xb.s;
    }
    acc
}

#[inline]
fn dot_q5_1(w: &[BlockQ5_1], x: &[BlockQ8_1F]) -> f32 {
    let mut acc = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let qh = u32::from_le_bytes(wb.qh);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let v0 = ((wb.qs[j] & 0x0F) as u32 | h0) as i32;
            let v1 = ((wb.qs[j] >> 4) as u32 | h1) as i32;
            sumi += v0 * xb.qs[j] as i32 + v1 * xb.qs[j + QK / 2] as i32;
        }
        acc += sumi as f32 * wb.d.to_f32() * xb.d + wb.m.to_f32() * xb.s;
    }
    acc
}

/// Weight blocks of one of the supported types, `n` rows of `k / 32` blocks.
pub enum Q8_1Weights<'a> {
    Q4_1(&'a [BlockQ4_1]),
    Q5_1(&'a [BlockQ5_1]),
}

/// `dst (m × n) = x (m × k) · Wᵀ`.
pub fn matmul(w: &Q8_1Weights<'_>, x: &[f32], m: usize, k: usize, n: usize, dst: &mut [f32]) {
    let kb = k / QK;
    let mut xq: Vec<Vec<BlockQ8_1F>> = Vec::with_capacity(m);
    for row in x.chunks_exact(k).take(m) {
        let mut q = Vec::with_capacity(kb);
        quantize_row(row, &mut q);
        xq.push(q);
    }
    // Parallel over output columns: each task reads a stripe of weight rows
    // once and applies it to every activation row.
    const STRIPE: usize = 64;
    let mut cols: Vec<f32> = vec![0.0; m * n];
    cols.par_chunks_mut(STRIPE * m).enumerate().for_each(|(s, out)| {
        let first = s * STRIPE;
        let rows = out.len() / m;
        for r in 0..rows {
            let j = first + r;
            for (i, xrow) in xq.iter().enumerate() {
                out[r * m + i] = match w {
                    Q8_1Weights::Q4_1(b) => dot_q4_1(&b[j * kb..(j + 1) * kb], xrow),
                    Q8_1Weights::Q5_1(b) => dot_q5_1(&b[j * kb..(j + 1) * kb], xrow),
                };
            }
        }
    });
    for j in 0..n {
        for i in 0..m {
            dst[i * n + j] = cols[j * m + i];
        }
    }
}
