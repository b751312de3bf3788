//! Attention over a KV cache stored as f32, f16, q8_0 or q4_0 (see
//! `kernels::kv`), AVX2 + FMA + F16C: every key and value row is decoded
//! eight values at a time in registers as it streams past. Same safety
//! contract as the parent module.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::float::exp_sum;
use super::hsum;
use crate::kernels::kv::{CacheType, Rows, QK, TILE_KEYS};

/// Eight values of a row from value `i` (a multiple of 8).
trait Load {
    unsafe fn load8(row: *const u8, i: usize) -> __m256;
}

struct F32;
struct F16;
struct Q8;
struct Q4;

impl Load for F32 {
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        _mm256_loadu_ps(row.cast::<f32>().add(i))
    }
}

impl Load for F16 {
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i).cast()))
    }
}

#[inline(always)]
unsafe fn scale_at(p: *const u8) -> __m256 {
    let h = _mm_cvtsi32_si128(u16::from_le_bytes([*p, *p.add(1)]) as i32);
    _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(h)))
}

impl Load for Q8 {
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        let b = row.add(i / QK * 34);
        let q = _mm_loadl_epi64(b.add(2 + i % QK).cast());
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale_at(b))
    }
}

impl Load for Q4 {
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        let b = row.add(i / QK * 18);
        let e = i % QK;
        let bytes = _mm_loadl_epi64(b.add(2 + e % (QK / 2)).cast());
        let nib = if e < QK / 2 {
            _mm_and_si128(bytes, _mm_set1_epi8(15))
        } else {
            _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15))
        };
        let v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(nib), _mm256_set1_epi32(8));
        _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale_at(b))
    }
}

/// `W` vectors (8·W dims, from `d0`) of `Σ_j p[j] · v[j]`.
#[inline(always)]
unsafe fn pv_chunk<V: Load, const W: usize>(
    p: &[f32],
    v: *const u8,
    rb: usize,
    d0: usize,
    out: *mut f32,
    inv: f32,
) {
    let mut o = [_mm256_setzero_ps(); W];
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pj);
        let row = v.add(j * rb);
        for (w, ow) in o.iter_mut().enumerate() {
            *ow = _mm256_fmadd_ps(pv, V::load8(row, d0 + 8 * w), *ow);
        }
    }
    let iv = _mm256_set1_ps(inv);
    for (w, ow) in o.iter().enumerate() {
        _mm256_storeu_ps(out.add(d0 + 8 * w), _mm256_mul_ps(*ow, iv));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_t<K: Load, V: Load>(
    q: &[f32],
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (len, hd) = (scores.len(), k.hd);
    let (kb, vb) = (k.ty.row_bytes(hd), v.ty.row_bytes(hd));
    let (qp, kp) = (q.as_ptr(), k.bytes.as_ptr());
    let mut max = f32::NEG_INFINITY;
    let mut j = 0;
    while j + 4 <= len {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..hd).step_by(8) {
            let qv = _mm256_loadu_ps(qp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, K::load8(kp.add((j + r) * kb), i), *a);
            }
        }
        let h = _mm256_hadd_ps(
            _mm256_hadd_ps(acc[0], acc[1]),
            _mm256_hadd_ps(acc[2], acc[3]),
        );
        let s = _mm_mul_ps(
            _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)),
            _mm_set1_ps(scale),
        );
        _mm_storeu_ps(scores.as_mut_ptr().add(j), s);
        let m = _mm_max_ps(s, _mm_movehl_ps(s, s));
        max = max.max(_mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))));
        j += 4;
    }
    while j < len {
        let mut acc = _mm256_setzero_ps();
        for i in (0..hd).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), K::load8(kp.add(j * kb), i), acc);
        }
        scores[j] = hsum(acc) * scale;
        max = max.max(scores[j]);
        j += 1;
    }
    let inv = 1.0 / exp_sum(scores, max);
    let (vp, op) = (v.bytes.as_ptr(), out.as_mut_ptr());
    let mut d0 = 0;
    while d0 + 64 <= hd {
        pv_chunk::<V, 8>(scores, vp, vb, d0, op, inv);
        d0 += 64;
    }
    match (hd - d0) / 8 {
        1 => pv_chunk::<V, 1>(scores, vp, vb, d0, op, inv),
        2 => pv_chunk::<V, 2>(scores, vp, vb, d0, op, inv),
        3 => pv_chunk::<V, 3>(scores, vp, vb, d0, op, inv),
        4 => pv_chunk::<V, 4>(scores, vp, vb, d0, op, inv),
        5 => pv_chunk::<V, 5>(scores, vp, vb, d0, op, inv),
        6 => pv_chunk::<V, 6>(scores, vp, vb, d0, op, inv),
        7 => pv_chunk::<V, 7>(scores, vp, vb, d0, op, inv),
        _ => {}
    }
}

/// Attention of one query row over `scores.len()` f32 rows of one KV head
/// (`k` and `v` hold the head's rows, `hd` floats each, `hd` a multiple of
/// 8, from position 0). Scores are computed four keys at a time and the
/// output stays in registers while the values stream past.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let rows = |x: &[f32]| Rows {
        ty: CacheType::F32,
        bytes: std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)),
        hd,
    };
    attend_t::<F32, F32>(q, rows(k), rows(v), scale, scores, out)
}

/// Attention of one query row over `scores.len()` rows of one KV head in
/// their stored types. `hd` must be a multiple of 8 (of 32 for the block
/// types), the slices long enough, f32 rows 4-byte aligned, and the CPU
/// must have AVX2, FMA and F16C.
pub unsafe fn attend(
    q: &[f32],
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    macro_rules! by_v {
        ($K:ty) => {
            match v.ty {
                CacheType::F32 => attend_t::<$K, F32>(q, k, v, scale, scores, out),
                CacheType::F16 => attend_t::<$K, F16>(q, k, v, scale, scores, out),
                CacheType::Q8_0 => attend_t::<$K, Q8>(q, k, v, scale, scores, out),
                CacheType::Q4_0 => attend_t::<$K, Q4>(q, k, v, scale, scores, out),
            }
        };
    }
    match k.ty {
        CacheType::F32 => by_v!(F32),
        CacheType::F16 => by_v!(F16),
        CacheType::Q8_0 => by_v!(Q8),
        CacheType::Q4_0 => by_v!(Q4),
    }
}

/// Scores of `R` query rows against sixteen keys from column `c`, for each
/// group of sixteen columns of the tile.
#[inline(always)]
unsafe fn scores_rows<const R: usize>(q: *const f32, hd: usize, kt: *const f32, s: *mut f32) {
    for c in (0..TILE_KEYS).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for d in 0..hd {
            let k0 = _mm256_loadu_ps(kt.add(d * TILE_KEYS + c));
            let k1 = _mm256_loadu_ps(kt.add(d * TILE_KEYS + c + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*q.add(r * hd + d));
                a[0] = _mm256_fmadd_ps(x, k0, a[0]);
                a[1] = _mm256_fmadd_ps(x, k1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(s.add(r * TILE_KEYS + c), a[0]);
            _mm256_storeu_ps(s.add(r * TILE_KEYS + c + 8), a[1]);
        }
    }
}

/// See `kernels::kv::tile_scores`; pointers must cover the sizes it
/// asserts, and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_scores(q: *const f32, rows: usize, hd: usize, kt: *const f32, s: *mut f32) {
    let mut r = 0;
    while r + 6 <= rows {
        scores_rows::<6>(q.add(r * hd), hd, kt, s.add(r * TILE_KEYS));
        r += 6;
    }
    let (q, s) = (q.add(r * hd), s.add(r * TILE_KEYS));
    match rows - r {
        1 => scores_rows::<1>(q, hd, kt, s),
        2 => scores_rows::<2>(q, hd, kt, s),
        3 => scores_rows::<3>(q, hd, kt, s),
        4 => scores_rows::<4>(q, hd, kt, s),
        5 => scores_rows::<5>(q, hd, kt, s),
        _ => {}
    }
}

/// `W` vectors of `R` output rows from dimension `d`: loaded, every key's
/// weighted value added, stored back.
#[inline(always)]
unsafe fn accumulate_rows<const R: usize, const W: usize>(
    p: *const f32,
    keys: usize,
    v: *const f32,
    hd: usize,
    o: *mut f32,
    d: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); W]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        for (w, x) in a.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(o.add(r * hd + d + 8 * w));
        }
    }
    for j in 0..keys {
        let mut vs = [_mm256_setzero_ps(); W];
        for (w, x) in vs.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(v.add(j * hd + d + 8 * w));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let pw = _mm256_set1_ps(*p.add(r * TILE_KEYS + j));
            for (x, y) in a.iter_mut().zip(&vs) {
                *x = _mm256_fmadd_ps(pw, *y, *x);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (w, x) in a.iter().enumerate() {
            _mm256_storeu_ps(o.add(r * hd + d + 8 * w), *x);
        }
    }
}

#[inline(always)]
unsafe fn accumulate_block<const R: usize>(
    p: *const f32,
    keys: usize,
    v: *const f32,
    hd: usize,
    o: *mut f32,
) {
    let mut d = 0;
    while d + 16 <= hd {
        accumulate_rows::<R, 2>(p, keys, v, hd, o, d);
        d += 16;
    }
    if d < hd {
        accumulate_rows::<R, 1>(p, keys, v, hd, o, d);
    }
}

/// See `kernels::kv::tile_accumulate`; `hd` a multiple of 8, pointers
/// covering the sizes it asserts, and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_accumulate(
    p: *const f32,
    rows: usize,
    keys: usize,
    v: *const f32,
    hd: usize,
    o: *mut f32,
) {
    let mut r = 0;
    while r + 6 <= rows {
        accumulate_block::<6>(p.add(r * TILE_KEYS), keys, v, hd, o.add(r * hd));
        r += 6;
    }
    let (p, o) = (p.add(r * TILE_KEYS), o.add(r * hd));
    match rows - r {
        1 => accumulate_block::<1>(p, keys, v, hd, o),
        2 => accumulate_block::<2>(p, keys, v, hd, o),
        3 => accumulate_block::<3>(p, keys, v, hd, o),
        4 => accumulate_block::<4>(p, keys, v, hd, o),
        5 => accumulate_block::<5>(p, keys, v, hd, o),
        _ => {}
    }
}
