//! The matmul seam. Every projection in every model goes through [`Linear`],
//! so faster kernels (the CPU-kernels work) and other devices replace one
//! type, not the model code.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor};

use crate::kernels::dequant_gemm;

/// `y = x · Wᵀ (+ b)` with `W` kept in its stored GGML type.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<QTensor>,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn new(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.shape().dims2()?;
        if in_features % weight.dtype().block_size() != 0 {
            candle_core::bail!(
                "{in_features} inputs are not whole {:?} blocks",
                weight.dtype()
            )
        }
        if let Some(b) = &bias {
            if b.dims1()? != out_features {
                candle_core::bail!("bias has {} values for {out_features} outputs", b.dims1()?)
            }
        }
        Ok(Linear {
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `x` is `(.., in_features)`; the result `(.., out_features)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / self.in_features;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_features;
        }
        let x2 = x.reshape((rows, self.in_features))?.contiguous()?;
        let y = dequant_gemm::matmul(&self.weight, &x2)?.reshape(dims)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
