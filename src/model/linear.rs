//! The matmul seam. Every projection in every model goes through [`Linear`],
//! so faster kernels and other devices replace one type, not the model code.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};

use crate::placement::alloc::AlignedBytes;

use crate::kernels::formats::QActs;
use crate::kernels::matmul::{self, Kernel};

use super::ModelError;

/// Where a weight's stored blocks live.
#[derive(Debug, Clone)]
enum Weight {
    /// A tensor of its own (RAM-tier and non-layer weights).
    Tensor(Arc<QTensor>),
    /// Rows of a tensor (one expert of a stacked expert tensor).
    Slice {
        tensor: Arc<QTensor>,
        at: usize,
        len: usize,
    },
    /// A range of a disk layer's read buffer, shared by the layer's
    /// projections and reused for the next disk layer once they are dropped.
    Shared {
        buf: Arc<AlignedBytes>,
        at: usize,
        len: usize,
        dtype: GgmlDType,
    },
}

/// `y = x · Wᵀ (+ b)` with `W` kept in its stored GGML type.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
    kernel: Kernel,
}

impl Linear {
    /// A projection over `weight`; a tensor of more than two dimensions
    /// (stacked experts) is its rows one after another.
    pub fn new(weight: Arc<QTensor>, bias: Option<Vec<f32>>) -> Result<Self, ModelError> {
        let (out_features, in_features) = flat_dims(weight.shape().dims())?;
        let dtype = weight.dtype();
        Self::checked(
            Weight::Tensor(weight),
            dtype,
            out_features,
            in_features,
            bias,
        )
    }

    /// A weight of `dtype` and shape `(out, in)` stored at `buf[at..at + len]`.
    pub fn shared(
        buf: Arc<AlignedBytes>,
        at: usize,
        len: usize,
        dtype: GgmlDType,
        (out_features, in_features): (usize, usize),
        bias: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        let expected = (out_features * in_features)
            .checked_div(dtype.block_size())
            .map(|blocks| blocks * dtype.type_size());
        if at.checked_add(len).is_none_or(|end| end > buf.len()) || expected != Some(len) {
            return Err(ModelError::Format(format!(
                "weight of {out_features}×{in_features} {dtype:?} does not fit bytes {at}..{} of a {}-byte buffer",
                at.saturating_add(len),
                buf.len()
            )));
        }
        let weight = Weight::Shared {
            buf,
            at,
            len,
            dtype,
        };
        Self::checked(weight, dtype, out_features, in_features, bias)
    }

    /// Rows `start..start + count` of this projection (expert `e` of a
    /// stacked expert tensor), sharing its bytes.
    pub fn rows(&self, start: usize, count: usize) -> Result<Self, ModelError> {
        let dtype = self.dtype();
        let row = self.in_features / dtype.block_size() * dtype.type_size();
        if start
            .checked_add(count)
            .is_none_or(|end| end > self.out_features)
            || self.bias.is_some()
        {
            return Err(ModelError::Format(format!(
                "rows {start}..{} of a {}-row weight",
                start.saturating_add(count),
                self.out_features
            )));
        }
        let weight = match &self.weight {
            Weight::Tensor(t) => Weight::Slice {
                tensor: t.clone(),
                at: start * row,
                len: count * row,
            },
            Weight::Slice { tensor, at, .. } => Weight::Slice {
                tensor: tensor.clone(),
                at: at + start * row,
                len: count * row,
            },
            Weight::Shared { buf, at, dtype, .. } => Weight::Shared {
                buf: buf.clone(),
                at: at + start * row,
                len: count * row,
                dtype: *dtype,
            },
        };
        Ok(Linear {
            weight,
            bias: None,
            out_features: count,
            in_features: self.in_features,
            kernel: self.kernel,
        })
    }

    fn checked(
        weight: Weight,
        dtype: GgmlDType,
        out_features: usize,
        in_features: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        if !in_features.is_multiple_of(dtype.block_size()) {
            return Err(ModelError::Format(format!(
                "{in_features} inputs are not whole {dtype:?} blocks"
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
            kernel: Kernel::for_type(dtype),
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    fn dtype(&self) -> GgmlDType {
        match &self.weight {
            Weight::Tensor(t) | Weight::Slice { tensor: t, .. } => t.dtype(),
            Weight::Shared { dtype, .. } => *dtype,
        }
    }

    fn bytes(&self) -> Result<Cow<'_, [u8]>, ModelError> {
        Ok(match &self.weight {
            Weight::Tensor(t) => t.data()?,
            Weight::Slice { tensor, at, len } => match tensor.data()? {
                Cow::Borrowed(b) => Cow::Borrowed(&b[*at..*at + *len]),
                Cow::Owned(v) => Cow::Owned(v[*at..*at + *len].to_vec()),
            },
            Weight::Shared { buf, at, len, .. } => Cow::Borrowed(&buf.as_slice()[*at..*at + *len]),
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Whether [`Linear::forward`] reads the quantized activations.
    pub fn wants_qacts(&self) -> bool {
        self.kernel.wants_qacts()
    }

    /// Quantizes `x` (`m` rows of `in_features`) into `acts` as this
    /// weight's kernel rounds them (see [`crate::kernels::matmul::Kernel::act_span`]).
    pub fn quantize_input(&self, x: &[f32], m: usize, acts: &mut QActs) -> Result<(), ModelError> {
        acts.quantize_for(self.kernel, x, m, self.in_features)
            .map_err(|e| ModelError::Format(e.to_string()))
    }

    /// Whether `acts` (quantized for another weight over the same input)
    /// are rounded as this weight's kernel would round them.
    pub fn shares_qacts(&self, acts: &QActs) -> bool {
        !self.wants_qacts() || acts.span == self.kernel.act_span_for(self.in_features)
    }

    /// `out (m × out_features) = x (m × in_features) · Wᵀ (+ b)`. `acts` holds
    /// `x` quantized ([`QActs::quantize`]) when [`Linear::wants_qacts`];
    /// several projections of one input share it.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        acts: &QActs,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let (n, k) = (self.out_features, self.in_features);
        let bytes = self.bytes()?;
        let out = out
            .get_mut(..m * n)
            .ok_or_else(|| ModelError::Format(format!("output buffer too small for {m}×{n}")))?;
        matmul::matmul(self.dtype(), &bytes, n, k, x, m, acts, out)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(n) {
                crate::kernels::ops::add(row, b);
            }
        }
        Ok(())
    }
}

/// A weight's shape as (rows, row length): leading dimensions multiplied.
pub fn flat_dims(dims: &[usize]) -> Result<(usize, usize), ModelError> {
    match dims {
        [.., last] if dims.len() >= 2 => Ok((dims[..dims.len() - 1].iter().product(), *last)),
        _ => Err(ModelError::Format(format!(
            "a weight of shape {dims:?} is not a matrix"
        ))),
    }
}
