//! The prompt GEMM. A block of weight rows is unpacked once into a panel —
//! one 32-byte vector of values per group, with the group's scale and bias
//! as f32 — and then multiplied with every activation column of the task
//! by a register-tiled microkernel that does no unpacking at all: per group
//! and (row, column) pair it is one byte product, one widening, one
//! conversion and two float operations, whatever the stored format. The
//! bias terms are a separate small f32 dot product per pair.
//!
//! Same safety contract as the parent module.

#![allow(clippy::missing_safety_doc)]
// Tiles index rows and columns of several register arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::{hsum, Avx2, Dot, Fmt, Form, TileArgs, Vnni, GROUP};
use super::{Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
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

#[inline(always)]
unsafe fn dispatch<D: Dot>(
    fmt: Format,
    t: &TileArgs,
    call: u64,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    match fmt {
        Format::Q4_0 => gemm::<Q4_0, D>(t, call, rows, cols),
        Format::Q4_1 => gemm::<Q4_1, D>(t, call, rows, cols),
        Format::Q5_0 => gemm::<Q5_0, D>(t, call, rows, cols),
        Format::Q5_1 => gemm::<Q5_1, D>(t, call, rows, cols),
        Format::Q8_0 => gemm::<Q8_0, D>(t, call, rows, cols),
        Format::Q4K => gemm::<Q4K, D>(t, call, rows, cols),
        Format::Q5K => gemm::<Q5K, D>(t, call, rows, cols),
        Format::Q6K => gemm::<Q6K, D>(t, call, rows, cols),
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
