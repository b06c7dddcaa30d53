//! Named retry policies for transient node errors, kept in one place so every retry in phoenix
//! is one of a few reviewed shapes.
//!
//! A policy only says how long to wait before the next attempt; how many attempts there are is
//! bounded by the node timeout, which the engine enforces over all attempts and delays together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How the computed delay is randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the exponential delay (deterministic; for tests).
    None,
    /// Uniform in `[0, delay]` ("full jitter"), so that many nodes throttled by the same API do not
    /// retry in lock step.
    Full,
}

/// An exponential backoff: `initial * multiplier^(retry-1)`, capped at `max`, then jittered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: &'static str,
    pub initial: Duration,
    pub multiplier: u32,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Policy {
    /// The default for provider calls: 200ms, doubling, at most 5s, full jitter.
    pub const STANDARD: Policy = Policy {
        name: "standard",
        initial: Duration::from_millis(200),
        multiplier: 2,
        max: Duration::from_secs(5),
        jitter: Jitter::Full,
    };

    /// For cloud APIs that throttle hard (EC2 `RequestLimitExceeded`): 1s, doubling, at most 30s,
    /// full jitter.
    pub const THROTTLED: Policy = Policy {
        name: "throttled",
        initial: Duration::from_secs(1),
        multiplier: 2,
        max: Duration::from_secs(30),
        jitter: Jitter::Full,
    };

    /// Short and deterministic, for tests: 2ms, doubling, at most 10ms, no jitter.
    pub const fn fast_for_tests() -> Policy {
        Policy {
            name: "fast-for-tests",
            initial: Duration::from_millis(2),
            multiplier: 2,
            max: Duration::from_millis(10),
            jitter: Jitter::None,
        }
    }

    /// The un-jittered delay before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(32);
        let factor = self.multiplier.max(1).saturating_pow(exponent);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(random_fraction()),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::STANDARD
    }
}

/// A uniform value in `[0, 1)`. Jitter needs no cryptographic quality: std's per-instance random
/// hasher keys are enough, and spare a dependency.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    // 53 random bits map exactly onto the f64 mantissa.
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
