//! Where each layer lives, and moving bytes between tiers: the tier store
//! with its disk prefetch, and the offload folder.
//!
//! The planner and the GPU tier join this module in the placement work; the
//! store already treats a layer's tier as data (`Tier`), never as a separate
//! code path through the model.

pub mod alloc;
pub mod offload;
pub mod store;

pub use store::{LayerStore, Tier};
