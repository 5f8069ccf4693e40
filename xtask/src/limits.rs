//! Time limits a user may set through the environment (XTASK_REGISTRY_TIMEOUT,
//! XTASK_KUBE_TIMEOUT, XTASK_CTR_TIMEOUT), read one way. Below every other module.

use std::time::Duration;

/// The limit set in seconds through `var` (a positive whole number); `default_secs`
/// otherwise.
pub fn env_seconds(var: &str, default_secs: u64) -> Duration {
    Duration::from_secs(std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(default_secs))
}
