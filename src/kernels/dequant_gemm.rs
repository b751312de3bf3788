//! Prompt-sized matmuls: dequantize the weight a tile of rows at a time
//! (tiles in parallel, straight from the stored blocks, no copy), then one
//! f32 GEMM per tile against every prompt row.
//!
//! Each weight element is dequantized once per call and reused across all
//! `m` rows, so for prompts the cost is the GEMM's. Activations stay f32,
//! which is also more precise than quantizing them to 8 bits.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlDType, GgmlType as CandleBlock, QTensor};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Rows of weight dequantized per tile: 256 rows × 4096 inputs × 4 bytes is
/// 4 MiB, small enough to stay in cache while the GEMM reuses it.
const TILE_ROWS: usize = 256;

fn to_float<T: CandleBlock>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 || (bytes.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
        candle_core::bail!("weight bytes are not whole, aligned blocks")
    }
    // SAFETY: GGML blocks are repr(C) plain data valid for any bytes; length
    // and alignment checked above.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
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

/// `x (m × k) · Wᵀ` for a weight `W (n × k)`; returns `(m, n)`.
pub fn matmul(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let (_, xk) = x.dims2()?;
    if xk != k {
        candle_core::bail!("matmul: input has {xk} features, weight expects {k}")
    }
    let dtype = w.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let bytes = w.data()?;
    let tiles: Vec<(usize, usize)> = (0..n)
        .step_by(TILE_ROWS)
        .map(|r0| (r0, (r0 + TILE_ROWS).min(n)))
        .collect();
    let parts: Vec<Tensor> = tiles
        .par_iter()
        .map(|&(r0, r1)| -> Result<Tensor> {
            let mut tile = vec![0f32; (r1 - r0) * k];
            dequantize_rows(dtype, &bytes[r0 * row_bytes..r1 * row_bytes], &mut tile)?;
            let tile = Tensor::from_vec(tile, (r1 - r0, k), &Device::Cpu)?;
            x.matmul(&tile.t()?)
        })
        .collect::<Result<_>>()?;
    Tensor::cat(&parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block type, odd row counts and a row count past one tile: the
    /// kernel equals an f32 matmul against candle's own dequantization.
    #[test]
    fn matches_dequantized_reference_for_every_type() {
        let dev = Device::Cpu;
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
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 64), candle_core::DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::zeros((2, 32), candle_core::DType::F32, &dev).unwrap();
        assert!(matmul(&q, &x).is_err());
    }
}
