//! Per-client rate limits (bytes per second, broadcast frames per second) as token buckets.
//! Pure: time is a millisecond count passed in.

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: u64,
    /// Capacity, in milli-tokens.
    burst_milli: u64,
    /// Current fill, in milli-tokens (integer arithmetic, no drift).
    milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` per second, holding one second's worth (at least `min_burst`).
    pub fn new(rate: u64, min_burst: u64, now_ms: u64) -> Self {
        let burst_milli = rate.max(min_burst).saturating_mul(1000);
        TokenBucket {
            rate,
            burst_milli,
            milli: burst_milli,
            last_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if available at `now_ms`; returns whether it did.
    pub fn allow(&mut self, cost: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms.max(self.last_ms);
        self.milli = (self.milli + elapsed.saturating_mul(self.rate)).min(self.burst_milli);
        let need = cost.saturating_mul(1000);
        if self.milli >= need {
            self.milli -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10, 0, 0);
        assert_eq!((0..20).filter(|_| b.allow(1, 0)).count(), 10);
        assert!(!b.allow(1, 50));
        assert!(b.allow(1, 100));
    }

    proptest! {
        /// Over any schedule, what passes is at most the burst plus rate × elapsed time.
        #[test]
        fn never_exceeds_rate(rate in 1u64..10_000, steps in prop::collection::vec((0u64..50, 1u64..2000), 1..200)) {
            let mut b = TokenBucket::new(rate, 0, 0);
            let (mut now, mut passed) = (0u64, 0u64);
            for (dt, cost) in steps {
                now += dt;
                if b.allow(cost, now) {
                    passed += cost;
                }
            }
            prop_assert!(passed * 1000 <= rate * 1000 + now * rate);
        }
    }
}
