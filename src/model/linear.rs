//! The matmul seam. Every projection in every model goes through [`Linear`],
//! so faster kernels and other devices replace one type, not the model code.

use std::sync::Arc;

use candle_core::quantized::QTensor;

use crate::kernels::formats::QActs;
use crate::kernels::matmul::{self, Kernel};

use super::ModelError;

/// `y = x · Wᵀ (+ b)` with `W` kept in its stored GGML type.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<QTensor>,
    bias: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
    kernel: Kernel,
}

impl Linear {
    pub fn new(weight: Arc<QTensor>, bias: Option<Vec<f32>>) -> Result<Self, ModelError> {
        let (out_features, in_features) = weight.shape().dims2()?;
        if in_features % weight.dtype().block_size() != 0 {
            return Err(ModelError::Format(format!(
                "{in_features} inputs are not whole {:?} blocks",
                weight.dtype()
            )));
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(ModelError::Format(format!(
                    "bias has {} values for {out_features} outputs",
                    b.len()
                )));
            }
        }
        Ok(Linear {
            kernel: Kernel::for_type(weight.dtype()),
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

    pub fn weight(&self) -> &QTensor {
        &self.weight
    }

    /// Whether [`Linear::forward`] reads the quantized activations.
    pub fn wants_qacts(&self) -> bool {
        self.kernel.wants_qacts()
    }

    /// `out (m × out_features) = x (m × in_features) · Wᵀ (+ b)`. `acts` holds
    /// `x` quantized ([`QActs::quantize`]) when [`Linear::wants_qacts`];
    /// several projections of one input share it.
    pub fn forward(&self, x: &[f32], m: usize, acts: &QActs, out: &mut [f32]) -> Result<(), ModelError> {
        let (n, k) = (self.out_features, self.in_features);
        let bytes = self.weight.data()?;
        let out = out
            .get_mut(..m * n)
            .ok_or_else(|| ModelError::Format(format!("output buffer too small for {m}×{n}")))?;
        matmul::matmul(self.weight.dtype(), &bytes, n, k, x, m, acts, out)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(n) {
                crate::kernels::ops::add(row, b);
            }
        }
        Ok(())
    }
}
