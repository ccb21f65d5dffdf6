//! The natter.toml that k8s/configmap.yaml and deploy/compose.yaml ship must
//! load into `Config` and pass every role's validation once the secrets
//! (which come from the environment there) are set: a renamed or mistyped
//! key would otherwise surface only when a pod starts.
#![cfg(feature = "distributed")]
#![allow(clippy::unwrap_used)]

use std::path::Path;

use natter_server::cluster::{Role, validate};
use natter_server::{Config, Overrides};

/// The indented block scalar after the line ending in the last of `path`,
/// each marker searched for after the previous one.
fn block_after(text: &str, path: &[&str]) -> String {
    let mut lines = text.lines();
    for marker in path {
        assert!(lines.by_ref().any(|l| l.trim_end().ends_with(marker)), "{marker} not found");
    }
    let block: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || l.starts_with("    ")).collect();
    let indent = block.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap();
    block.iter().map(|l| if l.len() >= indent { &l[indent..] } else { "" }).collect::<Vec<_>>().join("\n")
}

fn check(file: &str, path: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let toml = block_after(&std::fs::read_to_string(root.join(file)).unwrap(), path);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natter.toml");
    std::fs::write(&path, &toml).unwrap();
    let mut config = Config::load(Some(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{file}: {e:#}"));
    assert!(config.auth.api_key.is_empty() && config.auth.token_secret.is_empty(), "{file}: secrets stay out");
    config.auth.api_key = "k".repeat(32);
    config.auth.token_secret = "s".repeat(32);
    for role in [Role::Gateway, Role::Presence, Role::Message, Role::Conversation] {
        validate(&config, Some(role)).unwrap_or_else(|e| panic!("{file} as {role}: {e:#}"));
    }
}

#[test]
fn k8s_configmap_loads_and_validates_for_every_role() {
    check("k8s/configmap.yaml", &["natter.toml: |"]);
}

#[test]
fn compose_config_loads_and_validates_for_every_role() {
    check("deploy/compose.yaml", &["natter-toml:", "content: |"]);
}
