//! Bridge-wide performance counters: how long audio spends inside the bridge, per leg, and how
//! late the async runtime wakes up. Read by `GET /debug/stats` (when `server.debug_stats` is
//! on) and by `callbridge loadtest`.
//!
//! Latency is measured at the bridge's edges: from the moment a message was taken off one
//! socket (or, for paced agent audio, the moment the pacer released it) to the moment the
//! resulting frame was written to the other socket. Recording is a few relaxed atomic adds,
//! so it stays on in production.
//!
//! Histograms are log-linear (8 sub-buckets per power of two of microseconds, ≤ 12.5 %
//! relative error, 1 µs to ~70 min). Prometheus-style fixed buckets are too coarse for a p99
//! in the 100 µs–5 ms range, and HdrHistogram's recorders need per-thread handles plus a merge
//! step; this is 40 lines of atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB: usize = 8;
const POWERS: usize = 32;
const BUCKETS: usize = SUB * POWERS;

/// A concurrent histogram of durations (microsecond resolution).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// Bucket index of a value in µs: values below 8 get their own bucket; above, 8 sub-buckets
/// per power of two.
fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let power = 63 - us.leading_zeros() as usize; // ≥ 3
    let sub = ((us >> (power - 3)) & (SUB as u64 - 1)) as usize;
    ((power - 2) * SUB + sub).min(BUCKETS - 1)
}

/// The largest value (µs) that lands in bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let power = i / SUB + 2;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub + 1) << (power - 3)) - 1
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`Histogram`]; two snapshots subtract to give an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Counts per log-linear bucket.
    pub buckets: Vec<u64>,
    /// Values recorded.
    pub count: u64,
    /// Sum of the values, µs.
    pub sum_us: u64,
    /// Largest value, µs (since start: not reduced by [`HistogramSnapshot::since`]).
    pub max_us: u64,
}

impl HistogramSnapshot {
    /// The value (µs, bucket upper bound) below which a fraction `q` of the values lie.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(i).min(self.max_us);
            }
        }
        self.max_us
    }

    /// Mean, µs.
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    /// What was recorded between `earlier` and `self`. The max cannot be split, so it is the
    /// largest bucket's upper bound seen in the interval (capped by the overall max).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .zip(earlier.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let top = buckets.iter().rposition(|n| *n > 0);
        HistogramSnapshot {
            count: self.count.saturating_sub(earlier.count),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            max_us: top.map_or(0, |i| bucket_upper(i).min(self.max_us)),
            buckets,
        }
    }

    /// Cumulative counts at fixed bounds (µs, ascending), for Prometheus-style buckets: the
    /// count at a bound sums the log-linear buckets that lie wholly at or below it, so every
    /// value counted is ≤ its bound (a value up to 12.5 % below a bound may be counted at the
    /// next one). The last element is the total (the `+Inf` bucket), which is also the sum
    /// of [`HistogramSnapshot::buckets`].
    pub fn cumulative_at(&self, bounds_us: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_us.len() + 1);
        let mut i = 0;
        let mut seen = 0u64;
        for &bound in bounds_us {
            while i < self.buckets.len() && bucket_upper(i) <= bound {
                seen += self.buckets[i];
                i += 1;
            }
            out.push(seen);
        }
        out.push(
            seen + self.buckets[i.min(self.buckets.len())..]
                .iter()
                .sum::<u64>(),
        );
        out
    }

    /// JSON for `/debug/stats`: summary figures plus the raw buckets.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "mean_us": self.mean_us(),
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.max_us,
            "sum_us": self.sum_us,
            "buckets": self.buckets,
        })
    }

    /// Parses what [`HistogramSnapshot::to_json`] wrote.
    pub fn from_json(v: &serde_json::Value) -> Option<HistogramSnapshot> {
        Some(HistogramSnapshot {
            buckets: v
                .get("buckets")?
                .as_array()?
                .iter()
                .map(|n| n.as_u64())
                .collect::<Option<Vec<u64>>>()?,
            count: v.get("count")?.as_u64()?,
            sum_us: v.get("sum_us")?.as_u64()?,
            max_us: v.get("max_us")?.as_u64()?,
        })
    }
}

/// Counters shared by every call of one bridge.
#[derive(Default)]
pub struct BridgeStats {
    /// Caller frame read → its audio written to the model socket.
    pub uplink: Histogram,
    /// Model audio read (or released by the pacer) → its μ-law frame written to the caller.
    pub downlink: Histogram,
    /// How late the runtime woke a 10 ms timer (a saturated runtime shows here first).
    pub runtime_lag: Histogram,
    /// Audio messages written to model sockets.
    pub frames_to_model: AtomicU64,
    /// μ-law media frames written to callers.
    pub frames_to_caller: AtomicU64,
    /// Calls accepted on the media endpoint.
    pub calls_started: AtomicU64,
}

impl BridgeStats {
    /// The whole set as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "uplink": self.uplink.snapshot().to_json(),
            "downlink": self.downlink.snapshot().to_json(),
            "runtime_lag": self.runtime_lag.snapshot().to_json(),
            "frames_to_model": self.frames_to_model.load(Ordering::Relaxed),
            "frames_to_caller": self.frames_to_caller.load(Ordering::Relaxed),
            "calls_started": self.calls_started.load(Ordering::Relaxed),
        })
    }

    /// Samples how late a 10 ms timer fires, until the process ends.
    pub async fn watch_runtime_lag(self: std::sync::Arc<Self>) {
        let period = Duration::from_millis(10);
        loop {
            let due = tokio::time::Instant::now() + period;
            tokio::time::sleep_until(due).await;
            self.runtime_lag
                .record(tokio::time::Instant::now().saturating_duration_since(due));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = None;
        for us in (0..200_000u64).chain([u32::MAX as u64, u64::MAX / 2]) {
            let b = bucket_of(us);
            assert!(bucket_upper(b) >= us || b == BUCKETS - 1, "{us} in {b}");
            if b > 0 && b < BUCKETS - 1 {
                assert!(bucket_upper(b - 1) < us, "{us} in {b}");
            }
            if let Some(l) = last {
                assert!(b >= l);
            }
            last = Some(b);
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0), (1.0, 10_000.0)] {
            let got = s.quantile_us(q) as f64;
            assert!(got >= exact && got <= exact * 1.125 + 1.0, "q{q}: {got}");
        }
        assert_eq!(s.max_us, 10_000);
        assert_eq!(s.count, 10_000);
    }

    #[test]
    fn cumulative_counts_never_include_values_above_their_bound() {
        let h = Histogram::default();
        for us in [3u64, 40, 50, 51, 60, 99, 100, 104, 2_000, 90_000_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        let c = s.cumulative_at(&[0, 5, 50, 100, 1_000, 1_000_000]);
        assert_eq!(c.len(), 7);
        assert_eq!(c[0], 0);
        assert_eq!(c[1], 1);
        // 48..=51 share a bucket: 50 and 51 are counted at the next bound, not at 50.
        assert_eq!(c[2], 2);
        // 96..=103 share a bucket: 99 and 100 are counted only at 1 ms; 104 too.
        assert_eq!(c[3], 5);
        assert_eq!(c[4], 8);
        assert_eq!(c[5], 9);
        assert_eq!(c[6], 10);
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c[6], s.buckets.iter().sum::<u64>());
    }

    #[test]
    fn intervals_subtract_and_round_trip_through_json() {
        let h = Histogram::default();
        h.record(Duration::from_millis(40));
        let a = h.snapshot();
        for _ in 0..99 {
            h.record(Duration::from_micros(100));
        }
        let b = h.snapshot();
        let d = b.since(&a);
        assert_eq!(d.count, 99);
        assert!(d.quantile_us(0.99) <= 112, "{}", d.quantile_us(0.99));
        assert!(d.max_us < 1000, "interval max {}", d.max_us);
        assert_eq!(HistogramSnapshot::from_json(&b.to_json()), Some(b));
    }
}
