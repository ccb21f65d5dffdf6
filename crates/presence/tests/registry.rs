//! The in-memory session registry against the registry suite every backend
//! passes (the CQL one runs it in crates/store/tests/cql.rs).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use natter_presence::SessionRegistry;
use natter_presence::local::LocalSessionRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_registry_passes_the_registry_suite() {
    let registry = Arc::new(LocalSessionRegistry::new());
    natter_store::conformance::run_registry(registry.as_ref()).await;
    let shared: Arc<dyn SessionRegistry> = registry;
    natter_store::conformance::run_registry_concurrent(&[shared.clone(), shared]).await;
}
