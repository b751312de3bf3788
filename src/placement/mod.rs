//! Where each layer lives: the footprint (exact bytes), the budgets (what
//! each tier may hold), the pure planner, the tier store with its GPU tier
//! and disk prefetch, the calibration of each tier's speed, and the offload
//! folder.
//!
//! A layer's tier is data (`Tier`), never a separate code path through the
//! model on the CPU side: RAM, disk and the simulated GPU tier give
//! bit-identical results.

pub mod alloc;
pub mod budget;
pub mod calibrate;
pub mod experts;
pub mod footprint;
pub mod gpu;
pub mod offload;
pub mod planner;
pub mod store;

pub use budget::{BudgetOptions, Budgets};
pub use footprint::{Footprint, Quant};
pub use planner::{plan, Mode, Placement, PlacementError, Rates};
pub use store::{LayerStore, Tier};
