//! The model library: the recommended models and the planner's verdict for
//! each on this machine (`catalogue`), the Hub's search with exact
//! footprints before download (`hub`), models that PyPI packages ship — the
//! starter — (`fetch`), and the models on disk with their last use
//! (`disk`). Nothing here touches the window; `ui::models` draws it.

pub mod catalogue;
pub mod disk;
pub mod fetch;
pub mod hub;
