//! The matmul front door: picks the kernel for a weight's type and the batch
//! size, splits the work into tasks for the thread pool, and checks every
//! size before any unsafe kernel runs.
//!
//! - Integer formats ([`Format`]): activations are quantized once per input
//!   ([`QActs::quantize`]) and multiplied with the stored blocks by the
//!   tiled integer kernels, for decode and prompts alike.
//! - F16/BF16/F32 weights: f32 dot products for decode-sized batches; the
//!   dequantize-then-GEMM path for prompts.
//! - Other types (Q2_K): the dequantize-then-GEMM path for both.

use candle_core::quantized::GgmlDType;

use super::formats::{self, Format, QActs, GROUP};
use super::isa::{self, Isa};
use super::pool::{self, Tasks};
use super::{dequant_gemm, ops};

#[derive(Debug, thiserror::Error)]
pub enum MatmulError {
    #[error("matmul shapes do not fit: {0}")]
    Shape(String),
    #[error(transparent)]
    Isa(#[from] super::isa::UnsupportedIsa),
}

/// Which kernel family serves a weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Int8(Format),
    Float(GgmlDType),
    Dequant(GgmlDType),
}

impl Kernel {
    pub fn for_type(t: GgmlDType) -> Kernel {
        match Format::from_ggml(t) {
            Some(f) => Kernel::Int8(f),
            None => match t {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Kernel::Float(t),
                _ => Kernel::Dequant(t),
            },
        }
    }

    /// Whether the kernel reads quantized activations.
    pub fn wants_qacts(self) -> bool {
        matches!(self, Kernel::Int8(_))
    }

    /// Activation values that share one scale for this kernel: a whole
    /// block for the K-quants (llama.cpp's Q8_K), a group otherwise (Q8_0).
    /// Any span gives a correct product; this one rounds as llama.cpp does.
    pub fn act_span(self) -> usize {
        match self {
            Kernel::Int8(f @ (Format::Q3K | Format::Q4K | Format::Q5K | Format::Q6K)) => {
                f.block_values()
            }
            _ => GROUP,
        }
    }

    /// [`Kernel::act_span`] for rows of `k` values (per 32 when `k` holds
    /// no whole spans).
    pub fn act_span_for(self, k: usize) -> usize {
        Some(self.act_span())
            .filter(|s| k.is_multiple_of(*s))
            .unwrap_or(GROUP)
    }
}

/// Batches up to this many rows give each row the same bits as a batch of
/// one (speculative decoding's verification passes stay within it).
pub const BATCH_INVARIANT_ROWS: usize = 17;

/// Batches up to this size use the float dot-product path for F16/BF16/F32
/// weights (each row as in a batch of one); larger ones dequantize tiles
/// and run a GEMM.
const FLOAT_DOT_MAX_ROWS: usize = BATCH_INVARIANT_ROWS;

/// An output buffer shared by tasks writing disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub *mut f32);
// SAFETY: tasks write disjoint elements and the owner waits for them all.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl QActs {
    /// Quantizes `x` (`m` rows of `k` values; `k` a multiple of 32), one
    /// scale per 32 values.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) -> Result<(), MatmulError> {
        self.quantize_with(isa::active(), x, m, k, GROUP)
    }

    /// Quantizes `x` for `kernel`, one scale per [`Kernel::act_span`]
    /// values when `k` holds whole spans (per 32 otherwise).
    pub fn quantize_for(
        &mut self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        k: usize,
    ) -> Result<(), MatmulError> {
        self.quantize_with(isa::active(), x, m, k, kernel.act_span_for(k))
    }

    /// Quantizes with one scale per `span` values (a multiple of 32 that
    /// divides `k`).
    pub fn quantize_with(
        &mut self,
        isa: Isa,
        x: &[f32],
        m: usize,
        k: usize,
        span: usize,
    ) -> Result<(), MatmulError> {
        isa.check()?;
        if !k.is_multiple_of(GROUP)
            || x.len() < m * k
            || !span.is_multiple_of(GROUP)
            || span == 0
            || !k.is_multiple_of(span)
        {
            return Err(MatmulError::Shape(format!(
                "cannot quantize {m}×{k} activations from {} values in spans of {span}",
                x.len()
            )));
        }
        self.resize(m, k);
        self.span = span;
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: AVX2 is supported (every non-scalar level includes it);
            // `resize` sized the buffers for m×k, x holds m×k values and
            // `span` (a multiple of 32) divides k.
            unsafe { super::x86::quantize_avx2(x, self, 0..m) };
            return Ok(());
        }
        let _ = isa;
        let gpr = k / GROUP;
        for r in 0..m {
            for sp in (0..k).step_by(span) {
                let at = r * k + sp;
                let amax = x[at..at + span].iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                for g in sp / GROUP..(sp + span) / GROUP {
                    let at = r * k + g * GROUP;
                    let sum = formats::quantize_scaled(
                        &x[at..at + GROUP],
                        &mut self.q[at..at + GROUP],
                        amax,
                    );
                    self.d[r * gpr + g] = d;
                    self.s[r * gpr + g] = d * sum as f32;
                }
            }
        }
        Ok(())
    }
}

/// Row and column ranges of one task.
fn task_shape(n: usize, m: usize, threads: usize) -> (usize, usize) {
    if m < GEMM_MIN_COLS {
        // Decode: about eight tasks per thread, in multiples of 4 rows.
        let rows = n.div_ceil(threads * 8).div_ceil(4) * 4;
        (rows.clamp(4, 512), m)
    } else {
        // Prompts: a panel of 32 unpacked rows serves 128 columns.
        (32, 128)
    }
}

/// Batches of at least this many columns unpack weight rows into panels
/// (the prompt GEMM); smaller ones read the stored blocks directly, each
/// column as a batch of one would (see [`BATCH_INVARIANT_ROWS`]).
const GEMM_MIN_COLS: usize = BATCH_INVARIANT_ROWS + 1;

/// Numbers matmul calls, so per-thread panels are never reused across calls.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `out (m × n) = acts (m × k) · Wᵀ` for an integer-format weight `w`
/// (`n` rows of `k` values, whole blocks).
pub fn int8_matmul(
    fmt: Format,
    w: &[u8],
    n: usize,
    acts: &QActs,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    int8_matmul_with(isa::active(), fmt, w, n, acts, out)
}

pub fn int8_matmul_with(
    isa: Isa,
    fmt: Format,
    w: &[u8],
    n: usize,
    acts: &QActs,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    isa.check()?;
    let (m, k) = (acts.m, acts.k);
    if k % fmt.block_values() != 0 {
        return Err(MatmulError::Shape(format!(
            "{k} inputs are not whole {:?} blocks",
            fmt.ggml()
        )));
    }
    let row_bytes = k / fmt.block_values() * fmt.block_bytes();
    if w.len() != n * row_bytes
        || out.len() < m * n
        || acts.q.len() < m * k
        || acts.d.len() < m * k / GROUP
        || acts.s.len() < m * k / GROUP
    {
        return Err(MatmulError::Shape(format!(
            "weight {} bytes for {n}×{k} {:?}, output {} for {m}×{n}",
            w.len(),
            fmt.ggml(),
            out.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let pool = pool::global();
    let (tr, tc) = task_shape(n, m, pool.threads());
    let (row_tasks, col_tasks) = (n.div_ceil(tr), m.div_ceil(tc));
    let tasks = Tasks::new(row_tasks * col_tasks);
    let dst = Out(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let args = super::x86::TileArgs {
        w: w.as_ptr(),
        row_bytes,
        aq: acts.q.as_ptr(),
        ad: acts.d.as_ptr(),
        asum: acts.s.as_ptr(),
        k,
        out: dst.ptr(),
        n,
    };
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let gemm = m >= GEMM_MIN_COLS;
    pool.run(&|_| {
        while let Some(t) = tasks.next() {
            // Row block outermost: consecutive tasks share a row block, so a
            // thread usually reuses its unpacked panel.
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let rows = rt * tr..((rt + 1) * tr).min(n);
            let cols = ct * tc..((ct + 1) * tc).min(m);
            match isa {
                // SAFETY: sizes checked above; the level is supported; tasks
                // write disjoint (row, column) elements.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 if gemm => unsafe { super::x86::gemm_avx2(fmt, &args, call, rows, cols) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni if gemm => unsafe {
                    super::x86::gemm_vnni(fmt, &args, call, rows, cols)
                },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { super::x86::matmul_avx2(fmt, &args, rows, cols) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => unsafe { super::x86::matmul_vnni(fmt, &args, rows, cols) },
                _ => {
                    for c in cols {
                        for r in rows.clone() {
                            let v = formats::dot_row(
                                fmt,
                                &w[r * row_bytes..(r + 1) * row_bytes],
                                acts,
                                c,
                            );
                            // SAFETY: (c, r) is inside the m×n output and
                            // written by this task only.
                            unsafe { *dst.ptr().add(c * n + r) = v };
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// `out (m × n) = x (m × k) · Wᵀ` for an F16/BF16/F32 weight, small `m`.
fn float_dot_matmul(
    t: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let isa = isa::active();
    let pool = pool::global();
    let tr = n.div_ceil(pool.threads() * 8).clamp(8, 512);
    let tasks = Tasks::new(n.div_ceil(tr));
    let dst = Out(out.as_mut_ptr());
    pool.run(&|_| {
        while let Some(task) = tasks.next() {
            let task_rows = task * tr..((task + 1) * tr).min(n);
            // A few rows at a time for all columns: the rows stay in cache.
            for r0 in task_rows.clone().step_by(8) {
                let rows = r0..(r0 + 8).min(task_rows.end);
                for c in 0..m {
                    let xc = &x[c * k..(c + 1) * k];
                    // SAFETY: rows and columns are inside the m×n output, which
                    // this task alone writes for these rows.
                    let o = unsafe { dst.ptr().add(c * n) };
                    if t == GgmlDType::F32 {
                        for r in rows.clone() {
                            let row = &w[r * k * 4..(r + 1) * k * 4];
                            // SAFETY: f32 weight bytes are 4-byte aligned (the
                            // reader's block storage) and `row` holds k values.
                            let row = unsafe {
                                std::slice::from_raw_parts(row.as_ptr().cast::<f32>(), k)
                            };
                            unsafe { *o.add(r) = ops::dot(row, xc) };
                        }
                        continue;
                    }
                    let bf16 = t == GgmlDType::BF16;
                    // SAFETY: f16/bf16 storage is 2-byte aligned and holds n×k.
                    let halves =
                        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), n * k) };
                    #[cfg(target_arch = "x86_64")]
                    if isa != Isa::Scalar {
                        // SAFETY: AVX2 supported; rows inside the n×k matrix.
                        unsafe { super::x86::half_rows(halves, bf16, k, xc, rows.clone(), o) };
                        continue;
                    }
                    for r in rows.clone() {
                        let row = &halves[r * k..(r + 1) * k];
                        let s: f32 = row
                            .iter()
                            .zip(xc)
                            .map(|(&h, v)| ops::half_to_f32(h, bf16) * v)
                            .sum();
                        unsafe { *o.add(r) = s };
                    }
                }
            }
        }
    });
}

/// `out (m × n) = x (m × k) · Wᵀ` for a weight of type `t` stored as `w`.
/// `acts` must hold `x` quantized when [`Kernel::wants_qacts`].
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    t: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    acts: &QActs,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    if x.len() < m * k || out.len() < m * n {
        return Err(MatmulError::Shape(format!(
            "input {} / output {} for {m}×{k}·{k}×{n}",
            x.len(),
            out.len()
        )));
    }
    match Kernel::for_type(t) {
        Kernel::Int8(f) => {
            if acts.m != m || acts.k != k {
                return Err(MatmulError::Shape(format!(
                    "quantized activations are {}×{}, expected {m}×{k}",
                    acts.m, acts.k
                )));
            }
            int8_matmul(f, w, n, acts, out)
        }
        Kernel::Float(t) if m <= FLOAT_DOT_MAX_ROWS => {
            let elem = if t == GgmlDType::F32 { 4 } else { 2 };
            if w.len() != n * k * elem {
                return Err(MatmulError::Shape(format!(
                    "weight is {} bytes for {n}×{k} {t:?}",
                    w.len()
                )));
            }
            // The casts to f32/u16 rows below need the storage aligned (the
            // reader's block storage is); a misaligned slice is refused.
            if !(w.as_ptr() as usize).is_multiple_of(elem) {
                return Err(MatmulError::Shape(format!(
                    "{t:?} weight bytes are not {elem}-byte aligned"
                )));
            }
            float_dot_matmul(t, w, n, k, x, m, out);
            Ok(())
        }
        Kernel::Float(t) | Kernel::Dequant(t) => {
            dequant_gemm::matmul_into(t, w, n, k, &x[..m * k], m, &mut out[..m * n])
                .map_err(|e| MatmulError::Shape(e.to_string()))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Seeded values in −2..2 (an LCG, the same on every machine).
    pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / 16777216.0 - 0.5) * 4.0
            })
            .collect()
    }

    /// Random blocks of every format, odd row and column counts (ragged
    /// tiles and tasks): every SIMD level equals the scalar reference, and
    /// the scalar reference equals an f64 dot product of the dequantized
    /// weights with the dequantized activations.
    #[test]
    fn every_isa_matches_scalar_for_every_format() {
        let dev = Device::Cpu;
        for fmt in Format::ALL {
            for (n, k) in [
                (37usize, fmt.block_values() * 3),
                (5, fmt.block_values()),
                (130, 512),
            ] {
                let w = Tensor::from_vec(rand_vec(n * k, n as u64), (n, k), &dev).unwrap();
                let q = QTensor::quantize(&w, fmt.ggml()).unwrap();
                let wq = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
                let bytes = q.data().unwrap();
                for m in [1usize, 2, 3, 70, 133] {
                    let x = rand_vec(m * k, 7 + m as u64);
                    // K-quants take one activation scale per block.
                    let span = Kernel::Int8(fmt).act_span();
                    let mut acts = QActs::default();
                    acts.quantize_with(Isa::Scalar, &x, m, k, span).unwrap();
                    for scales in acts.d.chunks_exact(span / GROUP) {
                        assert!(
                            scales.iter().all(|&d| d == scales[0]),
                            "{fmt:?} one scale a span"
                        );
                    }
                    let mut want = vec![0f32; m * n];
                    int8_matmul_with(Isa::Scalar, fmt, &bytes, n, &acts, &mut want).unwrap();
                    for c in 0..m {
                        for r in 0..n {
                            let exact: f64 = (0..k)
                                .map(|i| {
                                    let a = acts.d[(c * k + i) / GROUP] as f64
                                        * acts.q[c * k + i] as f64;
                                    wq[r][i] as f64 * a
                                })
                                .sum();
                            let mag: f64 =
                                (0..k).map(|i| (wq[r][i] * x[c * k + i]).abs() as f64).sum();
                            let got = want[c * n + r] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * mag.max(1.0),
                                "{fmt:?} scalar {got} vs {exact}"
                            );
                        }
                    }
                    // Both prompt layouts (interleaved octets and panels).
                    for (isa, panels) in Isa::available()
                        .into_iter()
                        .flat_map(|i| [(i, false), (i, true)])
                    {
                        #[cfg(target_arch = "x86_64")]
                        super::super::x86::set_panels_only(panels);
                        let mut a2 = QActs::default();
                        a2.quantize_with(isa, &x, m, k, span).unwrap();
                        assert_eq!(a2.q, acts.q, "{isa:?} quantized values");
                        assert_eq!(a2.d, acts.d);
                        let mut got = vec![0f32; m * n];
                        int8_matmul_with(isa, fmt, &bytes, n, &a2, &mut got).unwrap();
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                                "{isa:?} {fmt:?} panels {panels} n={n} k={k} m={m} at {i}: {g} vs {e}"
                            );
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    super::super::x86::set_panels_only(false);
                }
            }
        }
    }

    /// Speculative decoding checks several tokens in one pass and must
    /// pick what one-token decoding would: a row's result is the same,
    /// bit for bit, whatever batch it is computed in (up to
    /// [`BATCH_INVARIANT_ROWS`]), for every weight type and ISA.
    #[test]
    fn a_row_is_bit_identical_in_any_small_batch() {
        let dev = Device::Cpu;
        let (n, k) = (70usize, 512usize);
        let w = Tensor::from_vec(rand_vec(n * k, 5), (n, k), &dev).unwrap();
        let mut types: Vec<GgmlDType> = Format::ALL.iter().map(|f| f.ggml()).collect();
        types.extend([
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q2K,
        ]);
        for t in types {
            let q = QTensor::quantize(&w, t).unwrap();
            let bytes = q.data().unwrap();
            let m_max = BATCH_INVARIANT_ROWS;
            let x = rand_vec(m_max * k, 13);
            let kernel = Kernel::for_type(t);
            for isa in Isa::available() {
                let run = |m: usize, x: &[f32]| {
                    let mut acts = QActs::default();
                    acts.quantize_with(isa, x, m, k, kernel.act_span_for(k))
                        .unwrap();
                    let mut out = vec![0f32; m * n];
                    match kernel {
                        Kernel::Int8(f) => {
                            int8_matmul_with(isa, f, &bytes, n, &acts, &mut out).unwrap()
                        }
                        _ => matmul(t, &bytes, n, k, x, m, &acts, &mut out).unwrap(),
                    }
                    out
                };
                let single: Vec<Vec<f32>> =
                    (0..m_max).map(|c| run(1, &x[c * k..(c + 1) * k])).collect();
                for m in [2usize, 5, 8, 9, m_max] {
                    let batch = run(m, &x[..m * k]);
                    for c in 0..m {
                        let same = batch[c * n..(c + 1) * n]
                            .iter()
                            .zip(&single[c])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{t:?} {isa:?}: row {c} of a batch of {m} differs");
                    }
                }
            }
        }
    }

    #[test]
    fn float_weights_and_fallback_types_match_a_plain_matmul() {
        let dev = Device::Cpu;
        let (n, k) = (45usize, 256usize);
        let w = Tensor::from_vec(rand_vec(n * k, 3), (n, k), &dev).unwrap();
        for t in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q2K,
        ] {
            let q = QTensor::quantize(&w, t).unwrap();
            let wd = q.dequantize(&dev).unwrap();
            let bytes = q.data().unwrap();
            for m in [1usize, 3, 9] {
                let x = rand_vec(m * k, 11);
                let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
                let want = xt
                    .matmul(&wd.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let mut got = vec![0f32; m * n];
                matmul(t, &bytes, n, k, &x, m, &QActs::default(), &mut got).unwrap();
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-3 * e.abs().max(1.0),
                        "{t:?} m={m}: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Every stored value at its largest (all bits set) and every
    /// activation at ±127: the prompt GEMM's 16-bit partial sums must not
    /// saturate, so every ISA equals the scalar reference, for prompts and
    /// decode alike.
    #[test]
    fn extreme_values_do_not_overflow() {
        // Where each format keeps its f16 scales (set to 1/64; all bits
        // set elsewhere).
        let scales = |f: Format| -> &'static [usize] {
            match f {
                Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => &[0],
                Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => &[0, 2],
                Format::Q3K => &[108],
                Format::Q6K => &[208],
            }
        };
        let scale = half::f16::from_f32(1.0 / 64.0).to_le_bytes();
        for fmt in Format::ALL {
            let (n, k) = (19usize, 2 * fmt.block_values());
            // The largest magnitude: all bits set, or −128 for Q8_0's
            // signed bytes (|−128| needs the ninth bit).
            let fill = if matches!(fmt, Format::Q8_0) {
                0x80
            } else {
                0xff
            };
            let mut block = vec![fill; fmt.block_bytes()];
            for &at in scales(fmt) {
                block[at..at + 2].copy_from_slice(&scale);
            }
            let bytes: Vec<u8> = block
                .iter()
                .copied()
                .cycle()
                .take(n * k / fmt.block_values() * fmt.block_bytes())
                .collect();
            for sign in [1.0f32, -1.0] {
                for m in [1usize, 40] {
                    let x = vec![sign; m * k];
                    let span = Kernel::Int8(fmt).act_span();
                    let mut acts = QActs::default();
                    acts.quantize_with(Isa::Scalar, &x, m, k, span).unwrap();
                    assert!(acts.q.iter().all(|&q| q == 127 * sign as i8));
                    let mut want = vec![0f32; m * n];
                    int8_matmul_with(Isa::Scalar, fmt, &bytes, n, &acts, &mut want).unwrap();
                    for isa in Isa::available() {
                        let mut got = vec![0f32; m * n];
                        int8_matmul_with(isa, fmt, &bytes, n, &acts, &mut got).unwrap();
                        for (g, e) in got.iter().zip(&want) {
                            assert!(
                                (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                                "{isa:?} {fmt:?} m={m} sign {sign}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_errors_not_crashes() {
        let acts = QActs::default();
        let mut out = vec![0f32; 4];
        assert!(int8_matmul(Format::Q8_0, &[0u8; 10], 2, &acts, &mut out).is_err());
        let mut a = QActs::default();
        a.quantize(&[0.5f32; 64], 1, 64).unwrap();
        assert!(int8_matmul(Format::Q8_0, &[0u8; 10], 2, &a, &mut out).is_err());
        assert!(int8_matmul(Format::Q4K, &[0u8; 144], 1, &a, &mut out).is_err());
        assert!(a.quantize(&[0.5f32; 60], 1, 60).is_err());
    }
}
