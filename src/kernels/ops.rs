//! Vector operations of the decode step besides the matmuls (dot products
//! and sums for attention, exp for softmax and SiLU), each with a scalar
//! version and SIMD versions chosen by [`super::isa::active`].

use super::isa::{self, Isa, UnsupportedIsa};

#[inline]
pub fn half_to_f32(bits: u16, bf16: bool) -> f32 {
    if bf16 {
        half::bf16::from_bits(bits).to_f32()
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    x.clamp(-87.0, 88.0).exp()
}

#[inline]
pub fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + exp_scalar(-x))
}

/// The kernels above for a given ISA (tests compare every level the CPU
/// has); an ISA this CPU lacks is an error, never an illegal instruction.
pub fn dot_with(isa: Isa, a: &[f32], b: &[f32]) -> Result<f32, UnsupportedIsa> {
    isa.check()?;
    Ok(dot_on(isa, a, b))
}

pub fn axpy_with(isa: Isa, y: &mut [f32], alpha: f32, x: &[f32]) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    axpy_on(isa, y, alpha, x);
    Ok(())
}

pub fn exp_sum_with(isa: Isa, x: &mut [f32], shift: f32) -> Result<f32, UnsupportedIsa> {
    isa.check()?;
    Ok(exp_sum_on(isa, x, shift))
}

pub fn silu_mul_with(isa: Isa, g: &mut [f32], u: &[f32]) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    silu_mul_on(isa, g, u);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    attend_on(isa, q, k, v, hd, scale, scores, out);
    Ok(())
}

/// Whether the x86 SIMD helpers may run for `isa`.
#[inline(always)]
fn simd(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa != Isa::Scalar
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_on(isa::active(), a, b)
}

fn dot_on(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd(isa) {
        // SAFETY: `isa` is supported (only supported levels are active or
        // passed in by tests that check), bounds are the slices'.
        return unsafe { super::x86::dot_f32(a, b) };
    }
    let _ = isa;
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha · x`
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    axpy_on(isa::active(), y, alpha, x)
}

fn axpy_on(isa: Isa, y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd(isa) {
        // SAFETY: as in `dot_with`.
        return unsafe { super::x86::axpy(y, alpha, x) };
    }
    let _ = isa;
    for (o, v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// `x[i] = e^(x[i] - shift)`; returns the sum (softmax).
pub fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    exp_sum_on(isa::active(), x, shift)
}

fn exp_sum_on(isa: Isa, x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd(isa) {
        // SAFETY: as in `dot_with`.
        return unsafe { super::x86::exp_sum(x, shift) };
    }
    let _ = isa;
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = exp_scalar(*v - shift);
        s += *v;
    }
    s
}

/// `g[i] = silu(g[i]) · u[i]` (the SwiGLU gate).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    silu_mul_on(isa::active(), g, u)
}

fn silu_mul_on(isa: Isa, g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd(isa) {
        // SAFETY: as in `dot_with`.
        return unsafe { super::x86::silu_mul(g, u) };
    }
    let _ = isa;
    for (o, v) in g.iter_mut().zip(u) {
        *o = silu_scalar(*o) * v;
    }
}

/// Attention of one query row over one KV head's cached rows:
/// `out = softmax(scale · K q) · V` over `scores.len()` positions, `k` and
/// `v` holding `hd`-float rows from position 0. `scores` is scratch.
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_on(isa::active(), q, k, v, hd, scale, scores, out)
}

#[allow(clippy::too_many_arguments)]
fn attend_on(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let len = scores.len();
    assert!(q.len() >= hd && out.len() >= hd && k.len() >= len * hd && v.len() >= len * hd);
    #[cfg(target_arch = "x86_64")]
    if simd(isa) && hd.is_multiple_of(8) {
        // SAFETY: as in `dot_with`; sizes asserted above.
        return unsafe { super::x86::attend(q, k, v, hd, scale, scores, out) };
    }
    let mut max = f32::NEG_INFINITY;
    for (j, o) in scores.iter_mut().enumerate() {
        *o = dot_on(isa, &q[..hd], &k[j * hd..(j + 1) * hd]) * scale;
        max = max.max(*o);
    }
    let inv = 1.0 / exp_sum_on(isa, scores, max);
    let out = &mut out[..hd];
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        axpy_on(isa, out, p * inv, &v[j * hd..(j + 1) * hd]);
    }
}

/// RMSNorm of each `w.len()`-wide row of `x` into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// RMSNorm of each `w.len()`-wide row of `x`, in place (per-head query and
/// key norms).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ms = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in xr.iter_mut().zip(w) {
            *v *= inv * g;
        }
    }
}

/// `g[i] = gelu(g[i]) · u[i]` with GELU's tanh approximation (Gemma's
/// GeGLU); `u` is scratch afterwards. `gelu(x) = x·σ(y)` with `y =
/// x·(c₁ + c₂x²)`, so this is the SwiGLU kernel on `y` with `u` divided by
/// `c₁ + c₂x²` (never below c₁): one vectorised pass, no tanh.
pub fn gelu_tanh_mul(g: &mut [f32], u: &mut [f32]) {
    // 2·√(2/π) and 2·√(2/π)·0.044715.
    const C1: f32 = 2.0 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    const C2: f32 = C1 * 0.044715;
    for (x, v) in g.iter_mut().zip(u.iter_mut()) {
        let s = C1 + C2 * *x * *x;
        *x *= s;
        *v /= s;
    }
    silu_mul(g, u);
}

/// `x[i] = gelu(x[i])` with GELU's tanh approximation (`gelu_pytorch_tanh`),
/// as [`gelu_tanh_mul`] computes it; `scratch` is resized and overwritten.
pub fn gelu_tanh(x: &mut [f32], scratch: &mut Vec<f32>) {
    scratch.clear();
    scratch.resize(x.len(), 1.0);
    gelu_tanh_mul(x, scratch);
}

/// `y += x`
pub fn add(y: &mut [f32], x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0
                    - 0.5)
                    * 20.0
            })
            .collect()
    }

    /// Every SIMD level agrees with the scalar one, including tails.
    #[test]
    fn simd_ops_match_scalar() {
        for isa in Isa::available() {
            for n in [1usize, 7, 8, 15, 16, 17, 64, 131] {
                let (a, b) = (data(n, 1), data(n, 2));
                let (d0, d1) = (
                    dot_with(Isa::Scalar, &a, &b).unwrap(),
                    dot_with(isa, &a, &b).unwrap(),
                );
                assert!(
                    (d0 - d1).abs() <= 1e-4 * d0.abs().max(1.0),
                    "{isa:?} dot {n}"
                );

                let (mut y0, mut y1) = (a.clone(), a.clone());
                axpy_with(Isa::Scalar, &mut y0, 0.3, &b).unwrap();
                axpy_with(isa, &mut y1, 0.3, &b).unwrap();
                assert!(y0
                    .iter()
                    .zip(&y1)
                    .all(|(p, q)| (p - q).abs() <= 1e-5 * p.abs().max(1.0)));

                let (mut e0, mut e1) = (a.clone(), a.clone());
                let s0 = exp_sum_with(Isa::Scalar, &mut e0, 3.0).unwrap();
                let s1 = exp_sum_with(isa, &mut e1, 3.0).unwrap();
                assert!((s0 - s1).abs() <= 1e-6 * s0, "{isa:?} exp sum {n}");
                assert!(e0
                    .iter()
                    .zip(&e1)
                    .all(|(p, q)| (p - q).abs() <= 1e-6 * p.abs().max(1e-30)));

                let (mut g0, mut g1) = (a.clone(), a.clone());
                silu_mul_with(Isa::Scalar, &mut g0, &b).unwrap();
                silu_mul_with(isa, &mut g1, &b).unwrap();
                assert!(
                    g0.iter()
                        .zip(&g1)
                        .all(|(p, q)| (p - q).abs() <= 1e-5 * p.abs().max(1.0)),
                    "{isa:?} silu {n}"
                );
            }
        }
    }

    /// The fused attention kernel equals the plain one, for head sizes
    /// with and without full 64-wide chunks and key counts off the 4-key
    /// step.
    #[test]
    fn attention_matches_scalar() {
        for isa in Isa::available() {
            for hd in [8usize, 24, 64, 72, 128] {
                for len in [1usize, 3, 4, 9, 130] {
                    let q = data(hd, 3);
                    let (k, v) = (data(len * hd, 4), data(len * hd, 5));
                    let scale = 1.0 / (hd as f32).sqrt() * 0.05;
                    let (mut s0, mut s1) = (vec![0f32; len], vec![0f32; len]);
                    let (mut o0, mut o1) = (vec![0f32; hd], vec![0f32; hd]);
                    attend_with(Isa::Scalar, &q, &k, &v, hd, scale, &mut s0, &mut o0).unwrap();
                    attend_with(isa, &q, &k, &v, hd, scale, &mut s1, &mut o1).unwrap();
                    for (a, b) in o0.iter().zip(&o1) {
                        assert!(
                            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                            "{isa:?} hd {hd} len {len}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        for isa in Isa::available() {
            let mut x: Vec<f32> = (0..2000).map(|i| -80.0 + i as f32 * 0.045).collect();
            let want: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
            exp_sum_with(isa, &mut x, 0.0).unwrap();
            for (g, w) in x.iter().zip(&want) {
                assert!(((*g as f64) - w).abs() <= 3e-7 * w, "{isa:?}: {g} vs {w}");
            }
        }
    }

    /// Every entry point that takes an ISA refuses one this CPU lacks with
    /// an error (run here with each level the machine does not have; on a
    /// machine with all of them there is nothing to refuse).
    #[test]
    fn an_isa_the_cpu_lacks_is_an_error_not_a_crash() {
        use crate::kernels::formats::QActs;
        use crate::kernels::matmul::{int8_matmul_with, MatmulError};
        let missing: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| !i.supported())
            .collect();
        let (a, b) = (data(64, 1), data(64, 2));
        for isa in missing {
            let err = UnsupportedIsa(isa.name());
            assert_eq!(dot_with(isa, &a, &b), Err(err.clone()));
            assert_eq!(axpy_with(isa, &mut a.clone(), 0.5, &b), Err(err.clone()));
            assert_eq!(exp_sum_with(isa, &mut a.clone(), 0.0), Err(err.clone()));
            assert_eq!(silu_mul_with(isa, &mut a.clone(), &b), Err(err.clone()));
            let (mut s, mut o) = (vec![0f32; 4], vec![0f32; 16]);
            assert_eq!(
                attend_with(isa, &a[..16], &a, &b, 16, 0.1, &mut s, &mut o),
                Err(err)
            );
            let mut acts = QActs::default();
            assert!(matches!(
                acts.quantize_with(isa, &a, 2, 32, 32),
                Err(MatmulError::Isa(_))
            ));
            acts.quantize_with(Isa::Scalar, &a, 2, 32, 32).unwrap();
            let fmt = crate::kernels::formats::Format::Q8_0;
            let w = vec![0u8; 4 * fmt.block_bytes()];
            let mut out = vec![0f32; 8];
            assert!(matches!(
                int8_matmul_with(isa, fmt, &w, 4, &acts, &mut out),
                Err(MatmulError::Isa(_))
            ));
        }
    }
}
