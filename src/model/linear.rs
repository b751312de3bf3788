//! The matmul seam. Every projection in every model goes through [`Linear`],
//! so faster kernels (the CPU-kernels work) and other devices replace one
//! type, not the model code.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use crate::kernels::q8_1::{self, BlockQ4_1, BlockQ5_1, Q8_1Weights};

#[derive(Debug, Clone)]
enum Kernel {
    Candle(QMatMul),
    /// Q4_1 / Q5_1 through Spillway's Q8_1 kernel.
    Q8_1(Arc<QTensor>),
}

/// `y = x · Wᵀ (+ b)` with `W` kept in its stored GGML type.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Kernel,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn new(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.shape().dims2()?;
        if let Some(b) = &bias {
            if b.dims1()? != out_features {
                candle_core::bail!("bias has {} values for {out_features} outputs", b.dims1()?)
            }
        }
        Ok(Linear {
            weight: match weight.dtype() {
                GgmlDType::Q4_1 | GgmlDType::Q5_1 => Kernel::Q8_1(weight),
                _ => Kernel::Candle(QMatMul::from_arc(weight)?),
            },
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
        let y = match &self.weight {
            Kernel::Candle(w) => w.forward(x)?,
            Kernel::Q8_1(w) => self.forward_q8_1(w, x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn forward_q8_1(&self, w: &QTensor, x: &Tensor) -> Result<Tensor> {
        let (k, n) = (self.in_features, self.out_features);
        let mut dims = x.dims().to_vec();
        let m = x.elem_count() / k;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes = w.data()?;
        let bad = || candle_core::Error::Msg("misaligned weight blocks".into());
        let blocks = match w.dtype() {
            GgmlDType::Q4_1 => Q8_1Weights::Q4_1(q8_1::blocks::<BlockQ4_1>(&bytes).ok_or_else(bad)?),
            _ => Q8_1Weights::Q5_1(q8_1::blocks::<BlockQ5_1>(&bytes).ok_or_else(bad)?),
        };
        let mut out = vec![0f32; m * n];
        q8_1::matmul(&blocks, &xs, m, k, n, &mut out);
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Tensor::from_vec(out, dims, x.device())
    }
}
