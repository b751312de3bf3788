//! f32 kernels for the rest of the decode step (dots, axpy, f16/bf16 rows,
//! exp, SiLU), built with AVX2 + FMA + F16C. Same safety contract as the
//! parent module.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::hsum;

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 16 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            acc[0],
        );
        acc[1] = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            _mm256_loadu_ps(b.as_ptr().add(i + 8)),
            acc[1],
        );
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// `y += alpha · x`
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let p = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(
            p,
            _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
        );
        i += 8;
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}

#[inline(always)]
unsafe fn load_half(p: *const u16, bf16: bool) -> __m256 {
    let h = _mm_loadu_si128(p.cast());
    if bf16 {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    } else {
        _mm256_cvtph_ps(h)
    }
}

/// Dot products of `x` with rows `rows` of an f16 or bf16 matrix (`k`
/// values per row) into `out[r]`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn half_rows(
    w: &[u16],
    bf16: bool,
    k: usize,
    x: &[f32],
    rows: std::ops::Range<usize>,
    out: *mut f32,
) {
    for r in rows {
        let row = w.as_ptr().add(r * k);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= k {
            acc[0] = _mm256_fmadd_ps(
                load_half(row.add(i), bf16),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                load_half(row.add(i + 8), bf16),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                acc[1],
            );
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
        while i < k {
            s += crate::kernels::ops::half_to_f32(*row.add(i), bf16) * x[i];
            i += 1;
        }
        *out.add(r) = s;
    }
}

/// e^x for 8 lanes: x = n·ln2 + r with |r| ≤ ln2/2, e^r by its Taylor
/// series to degree 6 (relative error below 2e-7), 2^n through the
/// exponent bits. Inputs are clamped to the finite range.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 split in two so n·ln2 is exact in its high part.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

/// `x[i] = e^(x[i] - shift)`; returns the sum.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    let sv = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= x.len() {
        let p = x.as_mut_ptr().add(i);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), sv));
        _mm256_storeu_ps(p, e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut s = hsum(acc);
    while i < x.len() {
        x[i] = crate::kernels::ops::exp_scalar(x[i] - shift);
        s += x[i];
        i += 1;
    }
    s
}

/// `g[i] = silu(g[i]) · u[i]`
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let one = _mm256_set1_ps(1.0);
    let neg = _mm256_set1_ps(-0.0);
    let mut i = 0;
    while i + 8 <= n {
        let p = g.as_mut_ptr().add(i);
        let x = _mm256_loadu_ps(p);
        let e = exp8(_mm256_xor_ps(x, neg));
        let y = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(p, _mm256_mul_ps(y, _mm256_loadu_ps(u.as_ptr().add(i))));
        i += 8;
    }
    while i < n {
        g[i] = crate::kernels::ops::silu_scalar(g[i]) * u[i];
        i += 1;
    }
}
