//! The prompt GEMM. Weight rows are unpacked once per task and reused for
//! every activation column of it, in one of two layouts:
//!
//! - Interleaved octets (every format: Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
//!   Q8_0 with the sign trick a vector at a time, and Q3_K and Q6_K with
//!   their own sub-scale step): eight rows repacked so that one broadcast activation
//!   word multiplies all eight at once, the byte products summed in 16 bits
//!   as far as the values' width allows, and the float work done once per
//!   group for eight rows (see `oct_tile`).
//! - Panels (`SPILLWAY_PROMPT_GEMM=panels`, the layout before octets, kept
//!   for side-by-side runs): one 32-byte vector of values per group, with
//!   the group's scale and bias as f32, multiplied by a register-tiled
//!   microkernel: per group and (row, column) pair one byte product, one
//!   widening, one conversion and two float operations. The bias terms are
//!   a separate small f32 dot product per pair.
//!
//! Same safety contract as the parent module.

#![allow(clippy::missing_safety_doc)]
// Tiles index rows and columns of several register arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::{hsum, Avx2, Dot, Fmt, Form, TileArgs, Vnni, GROUP};
use super::{Q3K, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
use crate::kernels::formats::Format;

/// Rows per microkernel tile, and activation columns.
const RM: usize = 4;
const RN: usize = 2;

/// Unpacked weight rows, reused by a thread across tasks and calls.
#[derive(Default)]
struct Panel {
    /// (call, first row) the panel holds.
    key: Option<(u64, usize)>,
    gpr: usize,
    /// Per row and group: the values (Unsigned, ShiftActs) or |v| (Sign).
    v: Vec<__m256i>,
    /// Sign: the signed values; ShiftActs with sub-scales: the i16 scales.
    aux: Vec<__m256i>,
    d: Vec<f32>,
    /// Per row and group: the term multiplied with the activation sum
    /// (Unsigned) or the activation scale (ShiftActs).
    bias: Vec<f32>,
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
}

impl Panel {
    #[inline(always)]
    unsafe fn unpack<F: Fmt>(&mut self, t: &TileArgs, rows: Range<usize>) {
        let gpr = t.k / GROUP;
        let len = rows.len() * gpr;
        self.gpr = gpr;
        self.v.resize(len, _mm256_setzero_si256());
        self.aux.resize(len, _mm256_setzero_si256());
        self.d.resize(len, 0.0);
        self.bias.resize(len, 0.0);
        let blocks = t.k / (F::GROUPS * GROUP);
        for (i, r) in rows.enumerate() {
            for b in 0..blocks {
                let blk = t.w.add(r * t.row_bytes + b * F::BYTES);
                for g in 0..F::GROUPS {
                    let at = i * gpr + b * F::GROUPS + g;
                    let grp = F::group(blk, g);
                    *self.d.get_unchecked_mut(at) = grp.d;
                    match F::FORM {
                        Form::Unsigned => {
                            *self.v.get_unchecked_mut(at) = grp.v;
                            *self.bias.get_unchecked_mut(at) = grp.bias;
                        }
                        Form::Sign => {
                            *self.v.get_unchecked_mut(at) = _mm256_sign_epi8(grp.v, grp.v);
                            *self.aux.get_unchecked_mut(at) = grp.v;
                            *self.bias.get_unchecked_mut(at) = 0.0;
                        }
                        Form::ShiftActs => {
                            *self.v.get_unchecked_mut(at) = grp.v;
                            *self.aux.get_unchecked_mut(at) = grp.isc;
                            // Σ isc·v, for the −128·Σ isc·v correction.
                            let sum = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(_mm256_set1_epi8(1), grp.v),
                                grp.isc,
                            );
                            *self.bias.get_unchecked_mut(at) =
                                -128.0 * grp.d * hsum_i32(sum) as f32;
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// `Σ a[i]·b[i]` for `n` floats.
#[inline(always)]
unsafe fn dotf(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
        i += 8;
    }
    let mut s = hsum(acc);
    while i < n {
        s += *a.add(i) * *b.add(i);
        i += 1;
    }
    s
}

/// Panel rows `pr0..pr0 + R` (weight rows `r0..`) × columns `c0..c0 + C`.
#[inline(always)]
unsafe fn tile<F: Fmt, D: Dot, const R: usize, const C: usize>(
    p: &Panel,
    t: &TileArgs,
    pr0: usize,
    r0: usize,
    c0: usize,
) {
    let gpr = p.gpr;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for g in 0..gpr {
        let mut a = [_mm256_setzero_si256(); C];
        let mut da = [_mm256_setzero_ps(); C];
        for c in 0..C {
            a[c] = _mm256_loadu_si256(t.aq.add((c0 + c) * t.k + g * GROUP).cast());
            if F::FORM == Form::ShiftActs {
                a[c] = _mm256_xor_si256(a[c], _mm256_set1_epi8(-128));
            }
            da[c] = _mm256_set1_ps(*t.ad.add((c0 + c) * gpr + g));
        }
        for r in 0..R {
            let at = (pr0 + r) * gpr + g;
            let v = *p.v.get_unchecked(at);
            let d = _mm256_set1_ps(*p.d.get_unchecked(at));
            for c in 0..C {
                let prod = match F::FORM {
                    Form::Unsigned => D::dot(v, a[c]),
                    Form::Sign => D::dot(v, _mm256_sign_epi8(a[c], *p.aux.get_unchecked(at))),
                    Form::ShiftActs if F::ISC => {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(a[c], v), *p.aux.get_unchecked(at))
                    }
                    Form::ShiftActs => D::dot(a[c], v),
                };
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(prod), da[c]), d, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        let bias = p.bias.as_ptr().add((pr0 + r) * gpr);
        for c in 0..C {
            let col = c0 + c;
            let mut v = hsum(acc[r][c]);
            match F::FORM {
                Form::Unsigned => v += dotf(bias, t.asum.add(col * gpr), gpr),
                Form::ShiftActs => v += dotf(bias, t.ad.add(col * gpr), gpr),
                Form::Sign => {}
            }
            *t.out.add(col * t.n + r0 + r) = v;
        }
    }
}

/// Weight rows `rows` × activation columns `cols`; `call` identifies the
/// matmul call, so a thread reuses its panel across the call's tasks that
/// share rows and never across calls.
#[inline(always)]
unsafe fn gemm<F: Fmt, D: Dot>(t: &TileArgs, call: u64, rows: Range<usize>, cols: Range<usize>) {
    // A raw pointer rather than a borrow inside `with`: the work must stay
    // in this function, which inherits the caller's target features. The
    // pool never runs two tasks on one thread at once.
    let p = &mut *PANEL.with(|cell| cell.as_ptr());
    {
        if p.key != Some((call, rows.start)) {
            p.unpack::<F>(t, rows.clone());
            p.key = Some((call, rows.start));
        }
        let n_rows = rows.len();
        let full_r = n_rows / RM * RM;
        let full_c = cols.start + cols.len() / RN * RN;
        let mut pr = 0;
        while pr < full_r {
            let mut c = cols.start;
            while c < full_c {
                tile::<F, D, RM, RN>(p, t, pr, rows.start + pr, c);
                c += RN;
            }
            for c in full_c..cols.end {
                tile::<F, D, RM, 1>(p, t, pr, rows.start + pr, c);
            }
            pr += RM;
        }
        for pr in full_r..n_rows {
            let mut c = cols.start;
            while c < full_c {
                tile::<F, D, 1, RN>(p, t, pr, rows.start + pr, c);
                c += RN;
            }
            for c in full_c..cols.end {
                tile::<F, D, 1, 1>(p, t, pr, rows.start + pr, c);
            }
        }
    }
}

/// `SPILLWAY_PROMPT_GEMM=panels`: every format on the unpacked panels
/// (the layout before interleaved octets), for side-by-side benchmarks.
fn panels_only() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match PANELS.load(Relaxed) {
        0 => {
            let on = std::env::var("SPILLWAY_PROMPT_GEMM").is_ok_and(|v| v == "panels");
            PANELS.store(if on { 2 } else { 1 }, Relaxed);
            on
        }
        v => v == 2,
    }
}

/// 0: not read yet, 1: octets, 2: panels only.
static PANELS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses the layout for the rest of the process (tests of both).
#[cfg(test)]
pub fn set_panels_only(on: bool) {
    PANELS.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
}

#[inline(always)]
unsafe fn dispatch<D: Dot + OctDot>(
    fmt: Format,
    t: &TileArgs,
    call: u64,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    // The byte-product vectors summed in 16 bits for 4- and 5-bit values
    // (all eight with VNNI, which sums in 32 bits).
    const S4: usize = oct_sums(15);
    const S5: usize = oct_sums(31);
    if panels_only() {
        return match fmt {
            Format::Q4_0 => gemm::<Q4_0, D>(t, call, rows, cols),
            Format::Q4_1 => gemm::<Q4_1, D>(t, call, rows, cols),
            Format::Q5_0 => gemm::<Q5_0, D>(t, call, rows, cols),
            Format::Q5_1 => gemm::<Q5_1, D>(t, call, rows, cols),
            Format::Q8_0 => gemm::<Q8_0, D>(t, call, rows, cols),
            Format::Q3K => gemm::<Q3K, D>(t, call, rows, cols),
            Format::Q4K => gemm::<Q4K, D>(t, call, rows, cols),
            Format::Q5K => gemm::<Q5K, D>(t, call, rows, cols),
            Format::Q6K => gemm::<Q6K, D>(t, call, rows, cols),
        };
    }
    match fmt {
        Format::Q4_0 if D::WIDE => oct_gemm::<Q4_0, D, 8>(t, call, rows, cols),
        Format::Q4_0 => oct_gemm::<Q4_0, D, S4>(t, call, rows, cols),
        Format::Q4_1 if D::WIDE => oct_gemm::<Q4_1, D, 8>(t, call, rows, cols),
        Format::Q4_1 => oct_gemm::<Q4_1, D, S4>(t, call, rows, cols),
        Format::Q5_0 if D::WIDE => oct_gemm::<Q5_0, D, 8>(t, call, rows, cols),
        Format::Q5_0 => oct_gemm::<Q5_0, D, S5>(t, call, rows, cols),
        Format::Q5_1 if D::WIDE => oct_gemm::<Q5_1, D, 8>(t, call, rows, cols),
        Format::Q5_1 => oct_gemm::<Q5_1, D, S5>(t, call, rows, cols),
        Format::Q4K if D::WIDE => oct_gemm::<Q4K, D, 8>(t, call, rows, cols),
        Format::Q4K => oct_gemm::<Q4K, D, S4>(t, call, rows, cols),
        Format::Q5K if D::WIDE => oct_gemm::<Q5K, D, 8>(t, call, rows, cols),
        Format::Q5K => oct_gemm::<Q5K, D, S5>(t, call, rows, cols),
        Format::Q8_0 => oct_gemm::<Q8_0, D, 1>(t, call, rows, cols),
        Format::Q3K => oct6_gemm::<Q3K>(t, call, rows, cols),
        Format::Q6K => oct6_gemm::<Q6K>(t, call, rows, cols),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_avx2(
    fmt: Format,
    t: &TileArgs,
    call: u64,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    dispatch::<Avx2>(fmt, t, call, rows, cols)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_vnni(
    fmt: Format,
    t: &TileArgs,
    call: u64,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    dispatch::<Vnni>(fmt, t, call, rows, cols)
}

// ---------------------------------------------------------------------------
// Interleaved octets: the prompt GEMM for the unsigned formats (Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q5_K).
//
// Eight weight rows are repacked together: per group, eight vectors, vector
// `j` holding values `4j..4j+4` of each of the eight rows in its eight
// 32-bit lanes. One activation column's four bytes, broadcast to every lane,
// then multiply all eight rows at once, and every lane of the result belongs
// to one row — no horizontal sums, and the float work (conversion, scales,
// the group's bias) is done once per group for eight rows instead of once
// per row. On AVX2 the byte products of several vectors are summed in 16
// bits before one widening: as many as the values' width allows without
// overflow (`Oct::SUMS`); VNNI accumulates in 32 bits directly.

/// Rows per repacked octet, and activation columns per microkernel tile.
const OR: usize = 8;
const OC: usize = 4;

/// How a build accumulates an octet's byte products.
trait OctDot {
    /// Accumulates in 32 bits (no limit on the vectors summed).
    const WIDE: bool;
    /// `acc + Σ w·a` over `S` vectors (`S` ≤ what the values' width allows
    /// in 16 bits), as 8 i32 lanes.
    unsafe fn sums<const S: usize>(acc: __m256i, w: &[__m256i], a: &[__m256i]) -> __m256i;
    /// `acc + Σ |w|·a'` for one vector of signed values, `abs` = |w| and
    /// `a'` the activations carrying w's signs (a full-range product pair
    /// fills 16 bits, so nothing more is summed there).
    unsafe fn signed(acc: __m256i, abs: __m256i, a: __m256i) -> __m256i;
}

impl OctDot for Avx2 {
    const WIDE: bool = false;
    #[inline(always)]
    unsafe fn sums<const S: usize>(acc: __m256i, w: &[__m256i], a: &[__m256i]) -> __m256i {
        let mut s = _mm256_maddubs_epi16(w[0], a[0]);
        for j in 1..S {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[j], a[j]));
        }
        _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn signed(acc: __m256i, abs: __m256i, a: __m256i) -> __m256i {
        let s = _mm256_maddubs_epi16(abs, a);
        _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }
}

impl OctDot for Vnni {
    const WIDE: bool = true;
    #[inline(always)]
    unsafe fn sums<const S: usize>(acc: __m256i, w: &[__m256i], a: &[__m256i]) -> __m256i {
        let mut acc = acc;
        for j in 0..S {
            acc = _mm256_dpbusd_epi32(acc, w[j], a[j]);
        }
        acc
    }
    #[inline(always)]
    unsafe fn signed(acc: __m256i, abs: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, abs, a)
    }
}

/// Byte-product vectors that may be summed in 16 bits before widening:
/// a product pair is at most `2 · max · 128`, and the sum must stay within
/// i16 (4-bit values: 8 vectors, 5-bit: 4, 6-bit: 2).
const fn oct_sums(max: i32) -> usize {
    let pair = 2 * max * 128;
    let mut s: usize = 8;
    while s as i32 * pair > i16::MAX as i32 {
        s /= 2;
    }
    s
}

/// Repacked octets of weight rows, reused by a thread across tasks.
#[derive(Default)]
struct Octets {
    key: Option<(u64, usize)>,
    gpr: usize,
    /// Per octet, group and piece `j`: the eight rows' values `4j..4j+4`.
    v: Vec<__m256i>,
    /// Per octet and group: the eight rows' scales, and their biases (for
    /// Q6_K the term undoing the activations' shift).
    d: Vec<f32>,
    bias: Vec<f32>,
    /// Q3_K/Q6_K: per octet, group and half, each row's sub-scale in both i16
    /// lanes; and the task's activation columns shifted to unsigned.
    isc: Vec<__m256i>,
    acts: Vec<__m256i>,
}

thread_local! {
    static OCTETS: RefCell<Octets> = RefCell::new(Octets::default());
}

impl Octets {
    /// The thread's octets holding weight rows `rows` of matmul `call`,
    /// repacked unless this thread already did for an earlier task.
    #[inline(always)]
    unsafe fn for_task<'a, F: Fmt>(t: &TileArgs, call: u64, rows: Range<usize>) -> &'a mut Octets {
        // A raw pointer rather than a borrow inside `with`: the work must
        // stay in the caller, which has its target features. The pool
        // never runs two tasks on one thread at once.
        let p = &mut *OCTETS.with(|cell| cell.as_ptr());
        if p.key != Some((call, rows.start)) {
            p.repack::<F>(t, rows.clone());
            p.key = Some((call, rows.start));
        }
        p
    }

    /// Repacks weight rows `rows` (the last octet padded with zero rows).
    #[inline(always)]
    unsafe fn repack<F: Fmt>(&mut self, t: &TileArgs, rows: Range<usize>) {
        let gpr = t.k / GROUP;
        let octs = rows.len().div_ceil(OR);
        self.gpr = gpr;
        self.v.clear();
        self.v.resize(octs * gpr * 8, _mm256_setzero_si256());
        self.d.clear();
        self.d.resize(octs * gpr * OR, 0.0);
        self.bias.clear();
        self.bias.resize(octs * gpr * OR, 0.0);
        self.isc.clear();
        if F::ISC {
            self.isc.resize(octs * gpr * 2, _mm256_setzero_si256());
        }
        let blocks = t.k / (F::GROUPS * GROUP);
        let lanes = self.v.as_mut_ptr().cast::<u32>();
        let sc_lanes = self.isc.as_mut_ptr().cast::<u32>();
        let mut vals = [0u32; 8];
        for (i, r) in rows.enumerate() {
            let (o, lane) = (i / OR, i % OR);
            for b in 0..blocks {
                let blk = t.w.add(r * t.row_bytes + b * F::BYTES);
                for g in 0..F::GROUPS {
                    let gg = b * F::GROUPS + g;
                    let grp = F::group(blk, g);
                    _mm256_storeu_si256(vals.as_mut_ptr().cast(), grp.v);
                    let at = o * gpr + gg;
                    for (j, &x) in vals.iter().enumerate() {
                        *lanes.add((at * 8 + j) * 8 + lane) = x;
                    }
                    *self.d.get_unchecked_mut(at * OR + lane) = grp.d;
                    let bias = if F::ISC {
                        // Each half's sub-scale, and −128 · d · Σ sc·v.
                        let bytes = std::slice::from_raw_parts(vals.as_ptr().cast::<i8>(), 32);
                        let mut shift = 0i32;
                        for h in 0..2 {
                            let half = if h == 0 {
                                grp.isc
                            } else {
                                _mm256_permute2x128_si256::<1>(grp.isc, grp.isc)
                            };
                            let sc = _mm256_extract_epi16::<0>(half) as u16;
                            *sc_lanes.add((at * 2 + h) * 8 + lane) = sc as u32 | (sc as u32) << 16;
                            let sum: i32 =
                                bytes[16 * h..16 * h + 16].iter().map(|&x| x as i32).sum();
                            shift += sc as i16 as i32 * sum;
                        }
                        -128.0 * grp.d * shift as f32
                    } else {
                        grp.bias
                    };
                    *self.bias.get_unchecked_mut(at * OR + lane) = bias;
                }
            }
        }
    }
}

/// Octet `o` (weight rows `r0..r0 + rn`, `rn` ≤ 8) × columns `c0..c0 + C`.
#[inline(always)]
unsafe fn oct_tile<F: Fmt, D: OctDot, const S: usize, const C: usize>(
    p: &Octets,
    t: &TileArgs,
    o: usize,
    r0: usize,
    rn: usize,
    c0: usize,
) {
    let gpr = p.gpr;
    let mut acc = [_mm256_setzero_ps(); C];
    let mut arow = [t.aq; C];
    for c in 0..C {
        arow[c] = t.aq.add((c0 + c) * t.k);
    }
    for g in 0..gpr {
        let at = o * gpr + g;
        let w = p.v.as_ptr().add(at * 8);
        let mut isum = [_mm256_setzero_si256(); C];
        if F::FORM == Form::Sign {
            // Signed 8-bit values (Q8_0): |w| times the activations given
            // w's signs, a vector at a time.
            for j in 0..8 {
                let wj = *w.add(j);
                let abs = _mm256_sign_epi8(wj, wj);
                for c in 0..C {
                    let src = arow[c].add(g * GROUP + 4 * j);
                    let a = _mm256_set1_epi32(std::ptr::read_unaligned(src.cast::<i32>()));
                    isum[c] = D::signed(isum[c], abs, _mm256_sign_epi8(a, wj));
                }
            }
        } else {
            for h in 0..8 / S {
                let ws: [__m256i; S] = std::array::from_fn(|j| *w.add(h * S + j));
                for c in 0..C {
                    let src = arow[c].add(g * GROUP + 4 * h * S);
                    let a: [__m256i; S] = std::array::from_fn(|j| {
                        _mm256_set1_epi32(std::ptr::read_unaligned(src.add(4 * j).cast::<i32>()))
                    });
                    isum[c] = D::sums::<S>(isum[c], &ws, &a);
                }
            }
        }
        let d = _mm256_loadu_ps(p.d.as_ptr().add(at * OR));
        let bias = _mm256_loadu_ps(p.bias.as_ptr().add(at * OR));
        for c in 0..C {
            let col = c0 + c;
            let da = _mm256_set1_ps(*t.ad.add(col * gpr + g));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(d, da), acc[c]);
            if F::BIAS {
                let sa = _mm256_set1_ps(*t.asum.add(col * gpr + g));
                acc[c] = _mm256_fmadd_ps(bias, sa, acc[c]);
            }
        }
    }
    store_octet(t, &acc, r0, rn, c0);
}

/// Writes an octet's results for columns `c0..`: rows `r0..r0 + rn`.
#[inline(always)]
unsafe fn store_octet<const C: usize>(
    t: &TileArgs,
    acc: &[__m256; C],
    r0: usize,
    rn: usize,
    c0: usize,
) {
    for c in 0..C {
        let dst = t.out.add((c0 + c) * t.n + r0);
        if rn == OR {
            _mm256_storeu_ps(dst, acc[c]);
        } else {
            let mut tmp = [0f32; OR];
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc[c]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, rn);
        }
    }
}

/// The octet GEMM over weight rows `rows` × columns `cols`.
#[inline(always)]
unsafe fn oct_gemm<F: Fmt, D: OctDot, const S: usize>(
    t: &TileArgs,
    call: u64,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    let p = Octets::for_task::<F>(t, call, rows.clone());
    let full_c = cols.start + cols.len() / OC * OC;
    for o in 0..rows.len().div_ceil(OR) {
        let r0 = rows.start + o * OR;
        let rn = (rows.end - r0).min(OR);
        let mut c = cols.start;
        while c < full_c {
            oct_tile::<F, D, S, OC>(p, t, o, r0, rn, c);
            c += OC;
        }
        for c in full_c..cols.end {
            oct_tile::<F, D, S, 1>(p, t, o, r0, rn, c);
        }
    }
}

// ---------------------------------------------------------------------------
// Q6_K and Q3_K in octets: the signed values (6 or 3 bits) times
// activations shifted to unsigned (a + 128, the task's columns shifted
// once), the two sub-scales of a group applied in 16 bits (`vpmaddwd` with
// each row's sub-scale), and the shift undone by a per-row term,
// −128 · d · Σ sc·v, times the activation scale. Two byte products are
// summed in 16 bits (at most 2 · 255 · 32 each).

/// Octet `o` × `C` columns of the shifted activations starting at `a0`
/// (column `c0` of the output).
#[inline(always)]
unsafe fn oct6_tile<const C: usize>(
    p: &Octets,
    t: &TileArgs,
    a0: *const i8,
    o: usize,
    r0: usize,
    rn: usize,
    c0: usize,
) {
    let gpr = p.gpr;
    let mut acc = [_mm256_setzero_ps(); C];
    for g in 0..gpr {
        let at = o * gpr + g;
        let w = p.v.as_ptr().add(at * 8);
        let mut isum = [_mm256_setzero_si256(); C];
        for h in 0..4 {
            let (w0, w1) = (*w.add(2 * h), *w.add(2 * h + 1));
            let isc = *p.isc.get_unchecked(at * 2 + h / 2);
            for c in 0..C {
                let src = a0.add(c * t.k + g * GROUP + 8 * h);
                let x0 = _mm256_set1_epi32(std::ptr::read_unaligned(src.cast::<i32>()));
                let x1 = _mm256_set1_epi32(std::ptr::read_unaligned(src.add(4).cast::<i32>()));
                let s =
                    _mm256_add_epi16(_mm256_maddubs_epi16(x0, w0), _mm256_maddubs_epi16(x1, w1));
                isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s, isc));
            }
        }
        let d = _mm256_loadu_ps(p.d.as_ptr().add(at * OR));
        let bias = _mm256_loadu_ps(p.bias.as_ptr().add(at * OR));
        for c in 0..C {
            let da = _mm256_set1_ps(*t.ad.add((c0 + c) * gpr + g));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(d, da), acc[c]);
            acc[c] = _mm256_fmadd_ps(bias, da, acc[c]);
        }
    }
    store_octet(t, &acc, r0, rn, c0);
}

#[inline(always)]
unsafe fn oct6_gemm<F: Fmt>(t: &TileArgs, call: u64, rows: Range<usize>, cols: Range<usize>) {
    let p = Octets::for_task::<F>(t, call, rows.clone());
    // The columns shifted to unsigned, once per task.
    let per_col = t.k / 32;
    p.acts.clear();
    p.acts.reserve(cols.len() * per_col);
    let flip = _mm256_set1_epi8(-128);
    for c in cols.clone() {
        let src = t.aq.add(c * t.k);
        for i in 0..per_col {
            p.acts.push(_mm256_xor_si256(
                _mm256_loadu_si256(src.add(32 * i).cast()),
                flip,
            ));
        }
    }
    let a = p.acts.as_ptr().cast::<i8>();
    let full_c = cols.start + cols.len() / OC * OC;
    for o in 0..rows.len().div_ceil(OR) {
        let r0 = rows.start + o * OR;
        let rn = (rows.end - r0).min(OR);
        let mut c = cols.start;
        while c < full_c {
            oct6_tile::<OC>(p, t, a.add((c - cols.start) * t.k), o, r0, rn, c);
            c += OC;
        }
        for c in full_c..cols.end {
            oct6_tile::<1>(p, t, a.add((c - cols.start) * t.k), o, r0, rn, c);
        }
    }
}
