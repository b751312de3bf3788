//! Model architectures as plain structs with `forward`, the KV cache and the
//! sampler. Nothing here reads files or picks devices: weights arrive through
//! [`transformer::TensorSource`] and layers through
//! [`transformer::LayerProvider`].

pub mod device_block;
pub mod hparams;
pub mod kv_cache;
pub mod linear;
pub mod sampler;
pub mod transformer;

use crate::weights::read::ReadError;

/// Tokens per forward pass while reading a prompt: bounds the attention
/// scratch (heads × chunk × context floats) without slowing long prompts,
/// and sizes a sliding-window layer's KV cache.
pub const PROMPT_CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unsupported architecture '{arch}' (Spillway runs {})",
        hparams::Arch::SUPPORTED
    )]
    Unsupported { arch: String },
    #[error("malformed model: {0}")]
    Format(String),
    /// A request the model cannot serve (e.g. a context beyond its training).
    #[error("{0}")]
    Invalid(String),
    #[error("the conversation needs {needed} tokens but the context holds {context}")]
    ContextFull { needed: usize, context: usize },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("the layer prefetch thread stopped unexpectedly")]
    PrefetchLost,
    #[error("the GPU ran out of memory allocating {what} ({} MiB; {} MiB of {} MiB in use)", needed >> 20, used >> 20, budget >> 20)]
    OutOfMemory {
        what: String,
        needed: u64,
        /// Bytes the GPU tier held when the allocation failed.
        used: u64,
        budget: u64,
    },
}

impl ModelError {
    /// Whether this is a GPU allocation failure, which the engine recovers
    /// from by re-planning with less VRAM.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            ModelError::OutOfMemory { .. } => true,
            ModelError::Candle(e) => candle_out_of_memory(e),
            _ => false,
        }
    }
}

/// Whether a candle error is a device allocation failure, told by its
/// error code (CUDA_ERROR_OUT_OF_MEMORY from the driver,
/// CUBLAS_STATUS_ALLOC_FAILED from cuBLAS), never by its text.
pub fn candle_out_of_memory(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            candle_out_of_memory(inner)
        }
        #[cfg(feature = "cuda")]
        E::Cuda(inner) => cuda_out_of_memory(inner.as_ref()),
        _ => false,
    }
}

#[cfg(feature = "cuda")]
fn cuda_out_of_memory(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use candle_core::cuda_backend::cudarc::cublas::{result::CublasError, sys::cublasStatus_t};
    use candle_core::cuda_backend::cudarc::driver::{sys::CUresult, DriverError};
    use candle_core::cuda_backend::CudaError;
    let driver = |d: &DriverError| d.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY;
    let cublas = |c: &CublasError| c.0 == cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED;
    if let Some(d) = e.downcast_ref::<DriverError>() {
        return driver(d);
    }
    if let Some(c) = e.downcast_ref::<CublasError>() {
        return cublas(c);
    }
    match e.downcast_ref::<CudaError>() {
        Some(CudaError::Cuda(d)) | Some(CudaError::Load { cuda: d, .. }) => driver(d),
        Some(CudaError::Cublas(c)) => cublas(c),
        _ => false,
    }
}

#[cfg(test)]
mod oom_tests {
    use super::*;

    /// Out-of-memory is told by type or code: a message that merely says
    /// so (a file name, a model's text) is not one, however it is wrapped.
    #[test]
    fn out_of_memory_is_told_by_type_not_text() {
        let typed = ModelError::OutOfMemory {
            what: "layer 3".into(),
            needed: 1,
            used: 0,
            budget: 0,
        };
        assert!(typed.is_out_of_memory());
        let text = candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY: out of memory".into())
            .context("loading layer 3")
            .bt();
        assert!(!ModelError::Candle(text).is_out_of_memory());
        assert!(!ModelError::Format("out of memory".into()).is_out_of_memory());
    }
}
