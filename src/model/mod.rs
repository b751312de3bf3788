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

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unsupported architecture '{arch}' (Spillway runs {})",
        hparams::Arch::SUPPORTED
    )]
    Unsupported { arch: String },
    #[error("malformed model: {0}")]
    Format(String),
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
            // The CUDA backend reports CUDA_ERROR_OUT_OF_MEMORY in its text.
            ModelError::Candle(e) => {
                let s = e.to_string();
                s.contains("OUT_OF_MEMORY") || s.contains("out of memory")
            }
            _ => false,
        }
    }
}
