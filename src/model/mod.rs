//! Model architectures as plain structs with `forward`, the KV cache and the
//! sampler. Nothing here reads files or picks devices: weights arrive through
//! [`transformer::TensorSource`] and layers through
//! [`transformer::LayerProvider`].

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
    #[error("the layer prefetch thread stopped unexpectedly")]
    PrefetchLost,
}
