//! x86-64 SIMD kernels. One generic body per kernel, built twice: for AVX2
//! (`vpmaddubsw` + `vpmaddwd`) and for AVX-512 VNNI (`vpdpbusd` on 256-bit
//! registers). The entry points carry `#[target_feature]`; everything they
//! call is `#[inline(always)]`, so each build is specialised as a whole.
//!
//! Safety contract of every entry point: the caller has checked that the
//! CPU supports the features ([`super::isa::Isa::supported`]) and that the
//! ranges lie inside the buffers (see `super::matmul`).

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::formats::{k_scale_min, q3k_scale, Format, QActs, GROUP};

mod float;
pub mod kv;
mod panel;

pub use float::{axpy, dot_f32, exp_sum, half_rows, silu_mul};
pub use kv::attend_f32 as attend;
#[cfg(test)]
pub use panel::set_panels_only;
pub use panel::{gemm_avx2, gemm_vnni};

// ---------------------------------------------------------------------------
// The integer dot step: the only place the two builds differ.

trait Dot {
    /// Sums of 4 adjacent `x[i] (u8) · y[i] (i8)` products as 8 i32 lanes.
    unsafe fn dot(x: __m256i, y: __m256i) -> __m256i;
}

struct Avx2;
struct Vnni;

impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }
}

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot(x: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    }
}

/// Lanes 0..4 of the i32 result cover values 0..16, lanes 4..8 values 16..32;
/// with sub-scales each half is weighted in i16 before widening.
#[inline(always)]
unsafe fn dot_scaled(x: __m256i, y: __m256i, isc: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), isc)
}

// ---------------------------------------------------------------------------
// Formats, unpacked one 32-value group at a time into registers.

/// How the prompt GEMM feeds a format's values to the unsigned × signed
/// byte product (see `panel`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Values are small and unsigned (≤ 63): `v · a`, plus the group bias
    /// times the activation sum.
    Unsigned,
    /// Values are signed and small (|v| ≤ 32): activations shifted to
    /// unsigned, `(a + 128) · v`, minus `128 · Σv` times the scale.
    ShiftActs,
    /// Full-range signed values (Q8_0): `|v| · sign(a, v)`.
    Sign,
}

#[derive(Clone, Copy)]
struct G {
    v: __m256i,
    isc: __m256i,
    d: f32,
    bias: f32,
}

trait Fmt {
    const GROUPS: usize;
    const BYTES: usize;
    /// `v` is signed (every form but `Unsigned`); the direct kernels use
    /// |v| and sign(a, v).
    const SIGNED: bool = !matches!(Self::FORM, Form::Unsigned);
    /// Unsigned values carry a per-group bias.
    const BIAS: bool = matches!(Self::FORM, Form::Unsigned);
    /// Two integer sub-scales per group (Q6_K).
    const ISC: bool;
    /// How the prompt GEMM multiplies the unpacked values.
    const FORM: Form;
    unsafe fn group(b: *const u8, g: usize) -> G;
    /// K-quants only: `d` and `bias` of all 8 groups of block `b` at once
    /// (what `group` gives one group at a time).
    #[inline(always)]
    unsafe fn block_scales(_b: *const u8) -> (__m256, __m256) {
        (_mm256_setzero_ps(), _mm256_setzero_ps())
    }
}

/// Q4_K/Q5_K: the 8 six-bit scales and mins, unpacked four at a time from
/// the 12 packed bytes, times the block's `d` and `−dmin`.
#[inline(always)]
unsafe fn k_block_scales(b: *const u8) -> (__m256, __m256) {
    let w = |i: usize| u32::from_le(std::ptr::read_unaligned(b.add(4 + 4 * i).cast::<u32>()));
    let (u0, u1, u2) = (w(0), w(1), w(2));
    let sc_lo = u0 & 0x3f3f_3f3f;
    let m_lo = u1 & 0x3f3f_3f3f;
    let sc_hi = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
    let to_f = |lo: u32, hi: u32| {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(
            0, 0, hi as i32, lo as i32,
        )))
    };
    let d = _mm256_mul_ps(to_f(sc_lo, sc_hi), _mm256_set1_ps(f16(b)));
    let bias = _mm256_mul_ps(to_f(m_lo, m_hi), _mm256_set1_ps(-f16(b.add(2))));
    (d, bias)
}

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p.cast::<u16>());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 16 bytes of packed nibbles: low nibbles are values 0..16, high 16..32.
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p.cast());
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(x, m);
    let hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// Byte `i` is 0x10 where bit `i` of `qh` is set.
#[inline(always)]
unsafe fn bits32(qh: u32) -> __m256i {
    let x = _mm256_set1_epi32(qh as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let y = _mm256_shuffle_epi8(x, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(y, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[inline(always)]
unsafe fn one_isc() -> __m256i {
    _mm256_set1_epi16(1)
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;
struct Q3K;
struct Q4K;
struct Q5K;
struct Q6K;

impl Fmt for Q4_0 {
    const GROUPS: usize = 1;
    const BYTES: usize = Format::Q4_0.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, _: usize) -> G {
        let d = f16(b);
        G {
            v: nibbles16(b.add(2)),
            isc: one_isc(),
            d,
            bias: -8.0 * d,
        }
    }
}

impl Fmt for Q4_1 {
    const GROUPS: usize = 1;
    const BYTES: usize = Format::Q4_1.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, _: usize) -> G {
        G {
            v: nibbles16(b.add(4)),
            isc: one_isc(),
            d: f16(b),
            bias: f16(b.add(2)),
        }
    }
}

impl Fmt for Q5_0 {
    const GROUPS: usize = 1;
    const BYTES: usize = Format::Q5_0.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, _: usize) -> G {
        let qh = std::ptr::read_unaligned(b.add(2).cast::<u32>());
        let v = _mm256_or_si256(nibbles16(b.add(6)), bits32(u32::from_le(qh)));
        let d = f16(b);
        G {
            v,
            isc: one_isc(),
            d,
            bias: -16.0 * d,
        }
    }
}

impl Fmt for Q5_1 {
    const GROUPS: usize = 1;
    const BYTES: usize = Format::Q5_1.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, _: usize) -> G {
        let qh = std::ptr::read_unaligned(b.add(4).cast::<u32>());
        let v = _mm256_or_si256(nibbles16(b.add(8)), bits32(u32::from_le(qh)));
        G {
            v,
            isc: one_isc(),
            d: f16(b),
            bias: f16(b.add(2)),
        }
    }
}

impl Fmt for Q8_0 {
    const GROUPS: usize = 1;
    const BYTES: usize = Format::Q8_0.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Sign;
    #[inline(always)]
    unsafe fn group(b: *const u8, _: usize) -> G {
        G {
            v: _mm256_loadu_si256(b.add(2).cast()),
            isc: one_isc(),
            d: f16(b),
            bias: 0.0,
        }
    }
}

/// Values of Q4_K/Q5_K group `g` from its 32-byte chunk of nibbles.
#[inline(always)]
unsafe fn k_nibbles(qs: *const u8, g: usize) -> __m256i {
    let chunk = _mm256_loadu_si256(qs.add(32 * (g / 2)).cast());
    let chunk = if g & 1 == 0 {
        chunk
    } else {
        _mm256_srli_epi16(chunk, 4)
    };
    _mm256_and_si256(chunk, _mm256_set1_epi8(0xF))
}

#[inline(always)]
unsafe fn k_group(b: *const u8, g: usize, v: __m256i) -> G {
    let (sc, m) = k_scale_min(std::slice::from_raw_parts(b.add(4), 12), g);
    G {
        v,
        isc: one_isc(),
        d: f16(b) * sc as f32,
        bias: -f16(b.add(2)) * m as f32,
    }
}

impl Fmt for Q4K {
    const GROUPS: usize = 8;
    const BYTES: usize = Format::Q4K.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> G {
        k_group(b, g, k_nibbles(b.add(16), g))
    }
    #[inline(always)]
    unsafe fn block_scales(b: *const u8) -> (__m256, __m256) {
        k_block_scales(b)
    }
}

impl Fmt for Q5K {
    const GROUPS: usize = 8;
    const BYTES: usize = Format::Q5K.block_bytes();
    const ISC: bool = false;
    const FORM: Form = Form::Unsigned;
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> G {
        let qh = _mm256_loadu_si256(b.add(16).cast());
        let hb = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(g as i32)),
            _mm256_set1_epi8(1),
        );
        let v = _mm256_or_si256(k_nibbles(b.add(48), g), _mm256_slli_epi16(hb, 4));
        k_group(b, g, v)
    }
    #[inline(always)]
    unsafe fn block_scales(b: *const u8) -> (__m256, __m256) {
        k_block_scales(b)
    }
}

impl Fmt for Q3K {
    const GROUPS: usize = 8;
    const BYTES: usize = Format::Q3K.block_bytes();
    const ISC: bool = true;
    const FORM: Form = Form::ShiftActs;
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> G {
        // Low pairs of group g: bits 2·(g % 4) of bytes 32 + 32·(g / 4)..;
        // its high bits: bit g of the first 32 bytes (set means no −4).
        let (h, j) = (g / 4, g % 4);
        let qs = _mm256_loadu_si256(b.add(32 + 32 * h).cast());
        let lo = _mm256_and_si256(
            _mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)),
            _mm256_set1_epi8(3),
        );
        let hm = _mm256_loadu_si256(b.cast());
        let hi = _mm256_and_si256(
            _mm256_srl_epi16(hm, _mm_cvtsi32_si128(g as i32)),
            _mm256_set1_epi8(1),
        );
        let v = _mm256_sub_epi8(
            _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)),
            _mm256_set1_epi8(4),
        );
        let sc = std::slice::from_raw_parts(b.add(96), 12);
        let isc = _mm256_set_m128i(
            _mm_set1_epi16(q3k_scale(sc, 2 * g + 1)),
            _mm_set1_epi16(q3k_scale(sc, 2 * g)),
        );
        G {
            v,
            isc,
            d: f16(b.add(108)),
            bias: 0.0,
        }
    }
    #[inline(always)]
    unsafe fn block_scales(b: *const u8) -> (__m256, __m256) {
        (_mm256_set1_ps(f16(b.add(108))), _mm256_setzero_ps())
    }
}

impl Fmt for Q6K {
    const GROUPS: usize = 8;
    const BYTES: usize = Format::Q6K.block_bytes();
    const ISC: bool = true;
    const FORM: Form = Form::ShiftActs;
    #[inline(always)]
    unsafe fn group(b: *const u8, g: usize) -> G {
        let (h, k) = (g / 4, g % 4);
        let ql = _mm256_loadu_si256(b.add(64 * h + 32 * (k & 1)).cast());
        let ql = if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
        let lo = _mm256_and_si256(ql, _mm256_set1_epi8(0xF));
        let qh = _mm256_loadu_si256(b.add(128 + 32 * h).cast());
        let hi = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)),
            _mm256_set1_epi8(3),
        );
        let v = _mm256_sub_epi8(
            _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)),
            _mm256_set1_epi8(32),
        );
        let sc = b.add(192 + 8 * h + 2 * k).cast::<i8>();
        let isc = _mm256_set_m128i(
            _mm_set1_epi16(*sc.add(1) as i16),
            _mm_set1_epi16(*sc as i16),
        );
        G {
            v,
            isc,
            d: f16(b.add(208)),
            bias: 0.0,
        }
    }
    #[inline(always)]
    unsafe fn block_scales(b: *const u8) -> (__m256, __m256) {
        (_mm256_set1_ps(f16(b.add(208))), _mm256_setzero_ps())
    }
}

// ---------------------------------------------------------------------------
// The microkernel: RM weight rows × RN activation columns, each weight group
// unpacked once and reused for every column.

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Where a tile reads and writes.
#[derive(Clone, Copy)]
pub struct TileArgs {
    pub w: *const u8,
    pub row_bytes: usize,
    pub aq: *const i8,
    pub ad: *const f32,
    pub asum: *const f32,
    /// Values (and i8 bytes) per activation row.
    pub k: usize,
    pub out: *mut f32,
    /// Output row stride (the weight's row count).
    pub n: usize,
}

// SAFETY: the pointers are read-only inputs and an output whose elements
// each task writes disjointly; the caller keeps the buffers alive until
// every task is done (the pool joins before returning).
unsafe impl Send for TileArgs {}
unsafe impl Sync for TileArgs {}

const PF: usize = 512;

/// The integer product of one group with activations `a`, as 8 i32 lanes.
#[inline(always)]
unsafe fn group_product<F: Fmt, D: Dot>(grp: &G, a: __m256i) -> __m256i {
    let x = if F::SIGNED {
        _mm256_sign_epi8(grp.v, grp.v)
    } else {
        grp.v
    };
    let y = if F::SIGNED {
        _mm256_sign_epi8(a, grp.v)
    } else {
        a
    };
    if F::ISC {
        dot_scaled(x, y, grp.isc)
    } else {
        D::dot(x, y)
    }
}

/// One weight row · `RN` activation columns `c0..c0 + RN`, for decode
/// and small batches: the row is read front to back (one stream for the
/// prefetcher), each group unpacked once for all columns, and four groups'
/// integer sums are gathered into one vector before the float work, which
/// is then done once per four groups. Every column goes through the same
/// operations in the same order whatever `RN` is, so a token's result does
/// not depend on the batch it is computed in (speculative decoding relies
/// on that).
#[inline(always)]
unsafe fn row_dots<F: Fmt, D: Dot, const RN: usize>(
    t: &TileArgs,
    r: usize,
    c0: usize,
) -> [f32; RN] {
    let gpr = t.k / GROUP;
    let w = t.w.add(r * t.row_bytes);
    let mut aq = [t.aq; RN];
    let mut ad = [t.ad; RN];
    let mut asum = [t.asum; RN];
    for c in 0..RN {
        aq[c] = t.aq.add((c0 + c) * t.k);
        ad[c] = t.ad.add((c0 + c) * gpr);
        asum[c] = t.asum.add((c0 + c) * gpr);
    }
    if F::GROUPS == 8 {
        return block_row_dots::<F, D, RN>(w, &aq, &ad, &asum, gpr / 8);
    }
    let mut acc = [_mm_setzero_ps(); RN];
    let mut bacc = [_mm_setzero_ps(); RN];
    let mut g = 0;
    while g + 4 <= gpr {
        if PF > 0 {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(g / F::GROUPS * F::BYTES + PF).cast());
        }
        // Plain loops, not closures: closures would not inherit the
        // caller's target features.
        let mut grp = [G {
            v: _mm256_setzero_si256(),
            isc: one_isc(),
            d: 0.0,
            bias: 0.0,
        }; 4];
        for (u, gr) in grp.iter_mut().enumerate() {
            *gr = F::group(w.add((g + u) / F::GROUPS * F::BYTES), (g + u) % F::GROUPS);
        }
        let d = _mm_setr_ps(grp[0].d, grp[1].d, grp[2].d, grp[3].d);
        let b = _mm_setr_ps(grp[0].bias, grp[1].bias, grp[2].bias, grp[3].bias);
        for c in 0..RN {
            let mut p = [_mm256_setzero_si256(); 4];
            for u in 0..4 {
                p[u] = group_product::<F, D>(
                    &grp[u],
                    _mm256_loadu_si256(aq[c].add((g + u) * GROUP).cast()),
                );
            }
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            let sum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            acc[c] = _mm_fmadd_ps(
                _mm_mul_ps(_mm_cvtepi32_ps(sum), _mm_loadu_ps(ad[c].add(g))),
                d,
                acc[c],
            );
            if F::BIAS {
                bacc[c] = _mm_fmadd_ps(b, _mm_loadu_ps(asum[c].add(g)), bacc[c]);
            }
        }
        g += 4;
    }
    let mut total = [0f32; RN];
    for c in 0..RN {
        let s = _mm_add_ps(acc[c], bacc[c]);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        total[c] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
    while g < gpr {
        let grp = F::group(w.add(g / F::GROUPS * F::BYTES), g % F::GROUPS);
        for c in 0..RN {
            let p = group_product::<F, D>(&grp, _mm256_loadu_si256(aq[c].add(g * GROUP).cast()));
            let v = _mm256_cvtepi32_ps(p);
            total[c] += hsum(v) * grp.d * *ad[c].add(g);
            if F::BIAS {
                total[c] += grp.bias * *asum[c].add(g);
            }
        }
        g += 1;
    }
    total
}

/// [`row_dots`] for the K-quants: a block's 8 integer sums are reduced into
/// one vector and its scales unpacked together.
#[inline(always)]
unsafe fn block_row_dots<F: Fmt, D: Dot, const RN: usize>(
    w: *const u8,
    aq: &[*const i8; RN],
    ad: &[*const f32; RN],
    asum: &[*const f32; RN],
    blocks: usize,
) -> [f32; RN] {
    let mut acc = [_mm256_setzero_ps(); RN];
    let mut bacc = [_mm256_setzero_ps(); RN];
    for b in 0..blocks {
        let blk = w.add(b * F::BYTES);
        if PF > 0 {
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF).cast());
        }
        let mut grp = [G {
            v: _mm256_setzero_si256(),
            isc: one_isc(),
            d: 0.0,
            bias: 0.0,
        }; 8];
        for (g, gr) in grp.iter_mut().enumerate() {
            *gr = F::group(blk, g);
        }
        let (d, bias) = F::block_scales(blk);
        for c in 0..RN {
            let mut p = [_mm256_setzero_si256(); 8];
            for (g, pg) in p.iter_mut().enumerate() {
                *pg = group_product::<F, D>(
                    &grp[g],
                    _mm256_loadu_si256(aq[c].add((8 * b + g) * GROUP).cast()),
                );
            }
            let h01 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            let h23 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
            let sum = _mm256_add_epi32(
                _mm256_permute2x128_si256(h01, h23, 0x20),
                _mm256_permute2x128_si256(h01, h23, 0x31),
            );
            acc[c] = _mm256_fmadd_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(ad[c].add(8 * b))),
                d,
                acc[c],
            );
            if F::BIAS {
                bacc[c] = _mm256_fmadd_ps(bias, _mm256_loadu_ps(asum[c].add(8 * b)), bacc[c]);
            }
        }
    }
    let mut out = [0f32; RN];
    for c in 0..RN {
        out[c] = hsum(_mm256_add_ps(acc[c], bacc[c]));
    }
    out
}

/// Rows `rows` × columns `cols`, four columns at a time.
#[inline(always)]
unsafe fn direct<F: Fmt, D: Dot>(
    t: &TileArgs,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    for r in rows {
        let mut c = cols.start;
        while c + 4 <= cols.end {
            let v = row_dots::<F, D, 4>(t, r, c);
            for (i, v) in v.into_iter().enumerate() {
                *t.out.add((c + i) * t.n + r) = v;
            }
            c += 4;
        }
        while c < cols.end {
            *t.out.add(c * t.n + r) = row_dots::<F, D, 1>(t, r, c)[0];
            c += 1;
        }
    }
}

#[inline(always)]
unsafe fn dispatch<D: Dot>(
    fmt: Format,
    t: &TileArgs,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    macro_rules! go {
        ($f:ty) => {
            direct::<$f, D>(t, rows, cols)
        };
    }
    match fmt {
        Format::Q4_0 => go!(Q4_0),
        Format::Q4_1 => go!(Q4_1),
        Format::Q5_0 => go!(Q5_0),
        Format::Q5_1 => go!(Q5_1),
        Format::Q8_0 => go!(Q8_0),
        Format::Q3K => go!(Q3K),
        Format::Q4K => go!(Q4K),
        Format::Q5K => go!(Q5K),
        Format::Q6K => go!(Q6K),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_avx2(
    fmt: Format,
    t: &TileArgs,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    dispatch::<Avx2>(fmt, t, rows, cols)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matmul_vnni(
    fmt: Format,
    t: &TileArgs,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    dispatch::<Vnni>(fmt, t, rows, cols)
}

// ---------------------------------------------------------------------------
// Activation quantization.

/// Quantizes rows `rows` of `x` (`k` values each) into `a`, one scale per
/// `a.span` values (a multiple of 32 dividing `k`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_avx2(x: &[f32], a: &mut QActs, rows: std::ops::Range<usize>) {
    let k = a.k;
    let gpr = k / GROUP;
    let per_span = a.span.max(GROUP) / GROUP;
    let sign_mask = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for r in rows {
        for g0 in (0..gpr).step_by(per_span) {
            let mut m = _mm256_setzero_ps();
            for g in g0..g0 + per_span {
                let p = x.as_ptr().add(r * k + g * GROUP);
                for j in 0..4 {
                    m = _mm256_max_ps(
                        m,
                        _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(p.add(8 * j))),
                    );
                }
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let d = amax / 127.0;
            for g in g0..g0 + per_span {
                let p = x.as_ptr().add(r * k + g * GROUP);
                let q = [
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), idv)),
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8)), idv)),
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(16)), idv)),
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(24)), idv)),
                ];
                let sum =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let s = _mm_add_epi32(
                    _mm256_castsi256_si128(sum),
                    _mm256_extracti128_si256(sum, 1),
                );
                let s = _mm_hadd_epi32(s, s);
                let s = _mm_hadd_epi32(s, s);
                let isum = _mm_cvtsi128_si32(s);
                let w16a = _mm256_packs_epi32(q[0], q[1]);
                let w16b = _mm256_packs_epi32(q[2], q[3]);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16a, w16b), perm);
                _mm256_storeu_si256(a.q.as_mut_ptr().add(r * k + g * GROUP).cast(), bytes);
                a.d[r * gpr + g] = d;
                a.s[r * gpr + g] = d * isum as f32;
            }
        }
    }
}
