//! The in-memory session registry against the registry suite every backend
//! passes (the CQL one runs it in crates/store/tests/cql.rs).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use natter_presence::SessionRegistry;
use natter_presence::local::LocalSessionRegistry;

/// One instance stands for every process sharing it.
async fn local_registry() -> [Arc<dyn SessionRegistry>; 2] {
    let registry: Arc<dyn SessionRegistry> = Arc::new(LocalSessionRegistry::new());
    [registry.clone(), registry]
}

natter_store::conformance_tests!(registry: local_registry);
