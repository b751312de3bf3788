//! The fallback for weight types without integer kernels (Q2_K) and
//! for F16/BF16/F32 prompts: dequantize the weight a tile of rows at a time
//! (tiles in parallel, straight from the stored blocks, no copy), then one
//! f32 GEMM per tile against every prompt row.
//!
//! Each weight element is dequantized once per call and reused across all
//! `m` rows, so for prompts the cost is the GEMM's. Activations stay f32,
//! which is also more precise than quantizing them to 8 bits.

use super::pool::{self, Tasks};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlDType, GgmlType as CandleBlock, QTensor};
use candle_core::{Result, Tensor};

/// Rows of weight dequantized per tile: 256 rows × 4096 inputs × 4 bytes is
/// 4 MiB, small enough to stay in cache while the GEMM reuses it.
const TILE_ROWS: usize = 256;

fn to_float<T: CandleBlock>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        candle_core::bail!("weight bytes are not whole, aligned blocks")
    }
    // SAFETY: GGML blocks are repr(C) plain data valid for any bytes; length
    // and alignment checked above.
    let blocks =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
    if blocks.len() * T::BLCK_SIZE != out.len() {
        candle_core::bail!("dequantize size mismatch")
    }
    T::to_float(blocks, out);
    Ok(())
}

/// Dequantizes whole rows of GGML bytes into `out`.
pub fn dequantize_rows(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    match dtype {
        GgmlDType::F32 => to_float::<f32>(bytes, out),
        GgmlDType::F16 => to_float::<half::f16>(bytes, out),
        GgmlDType::BF16 => to_float::<half::bf16>(bytes, out),
        GgmlDType::Q4_0 => to_float::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => to_float::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => to_float::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => to_float::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => to_float::<BlockQ8_0>(bytes, out),
        GgmlDType::Q8_1 => to_float::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => to_float::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => to_float::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => to_float::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => to_float::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => to_float::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => to_float::<BlockQ8K>(bytes, out),
    }
}

thread_local! {
    /// Each compute thread's dequantized tile, reused across calls so the
    /// hot path allocates nothing.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output buffer, shared by tile tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: every task writes only its own column range of the buffer.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// Through a method, so closures capture the `Send` wrapper, not the
    /// raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst (m × n) = x (m × k) · Wᵀ` for a weight `W (n × k)` of type `dtype`
/// stored as `bytes`, all row-major.
pub fn matmul_into(
    dtype: GgmlDType,
    bytes: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    dst: &mut [f32],
) -> Result<()> {
    if x.len() != m * k || dst.len() != m * n || !k.is_multiple_of(dtype.block_size()) {
        candle_core::bail!(
            "matmul: input {} / output {} do not fit {m}×{k}·{k}×{n}",
            x.len(),
            dst.len()
        )
    }
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    if bytes.len() != n * row_bytes {
        candle_core::bail!(
            "matmul: weight is {} bytes, expected {}",
            bytes.len(),
            n * row_bytes
        )
    }
    let out = DstPtr(dst.as_mut_ptr());
    let tasks = Tasks::new(n.div_ceil(TILE_ROWS));
    let failed = std::sync::Mutex::new(None);
    pool::run(&|_| {
        while let Some(t) = tasks.next() {
            let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(n));
            let rows = r1 - r0;
            let r = TILE.with(|cell| -> Result<()> {
                let mut tile = cell.borrow_mut();
                tile.resize(rows * k, 0.0);
                dequantize_rows(dtype, &bytes[r0 * row_bytes..r1 * row_bytes], &mut tile)?;
                if m <= super::matmul::BATCH_INVARIANT_ROWS {
                    // Small batches: one dot product per element, so a row
                    // gets the same bits in any of them.
                    for (i, w) in tile.chunks_exact(k).enumerate() {
                        for (c, xc) in x.chunks_exact(k).enumerate() {
                            // SAFETY: (c, r0 + i) lies in the m×n output and
                            // only this task writes its columns.
                            unsafe { *out.get().add(c * n + r0 + i) = super::ops::dot(w, xc) };
                        }
                    }
                    return Ok(());
                }
                // SAFETY: lhs is m×k row-major (x), rhs is the tile read as its
                // transpose (k×rows), dst is columns r0..r1 of the m×n output;
                // all three lie inside their buffers, and no other task writes
                // these columns.
                unsafe {
                    gemm::gemm(
                        m,
                        rows,
                        k,
                        out.get().add(r0),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        tile.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                Ok(())
            });
            if let Err(e) = r {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `x (m × k) · Wᵀ` for a weight `W (n × k)`; returns `(m, n)`.
pub fn matmul(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k {
        candle_core::bail!("matmul: input has {xk} features, weight expects {k}")
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; m * n];
    matmul_into(w.dtype(), &w.data()?, n, k, &xs, m, &mut dst)?;
    Tensor::from_vec(dst, (m, n), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block type, odd row counts and a row count past one tile: the
    /// kernel equals an f32 matmul against candle's own dequantization.
    #[test]
    fn matches_dequantized_reference_for_every_type() {
        let dev = candle_core::Device::Cpu;
        let (n, k) = (TILE_ROWS + 37, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        for dtype in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let reference_w = q.dequantize(&dev).unwrap();
            for m in [1usize, 3, 17] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let got = matmul(&q, &x).unwrap();
                let want = x.matmul(&reference_w.t().unwrap()).unwrap();
                assert_eq!(got.dims(), &[m, n]);
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-3, "{dtype:?} m={m}: max difference {diff}");
            }
        }
    }

    #[test]
    fn rejects_mismatched_input() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::zeros((4, 64), candle_core::DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::zeros((2, 32), candle_core::DType::F32, &dev).unwrap();
        assert!(matmul(&q, &x).is_err());
    }
}
