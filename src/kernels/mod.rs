//! Spillway's own CPU matmul kernels, used where candle's are slow or
//! numerically off. Each kernel computes `y = x · Wᵀ` for a weight kept in
//! its GGML block type, quantizing the activations on the fly the way
//! llama.cpp does, so results track the reference implementation.
//!
//! Today: Q4_1 and Q5_1 against Q8_1 activations. candle 0.11's Q8_1
//! quantizer rounds the block sum to f16 before scaling it (llama.cpp scales
//! in f32 and rounds once); on small models that shifts greedy choices. The
//! CPU-kernels work adds the other types and SIMD paths behind this module.

pub mod q8_1;
