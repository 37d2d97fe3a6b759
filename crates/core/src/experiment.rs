//! The statistics of an A/B test between model versions, on the sufficient
//! statistics a store computes in SQL (per arm: units, the sum of the
//! metric and the sum of its squares), so a report never loads the log.
//!
//! The difference between an arm and the control is judged with a mixture
//! sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh,
//! "Always valid inference", 2017) under the normal approximation: with the
//! observed difference `d`, its variance `V` and a normal mixing
//! distribution of the true difference with variance `τ²`,
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp(d² τ² / (2 V (V + τ²)))
//! ```
//!
//! is a nonnegative martingale under "no difference", so by Ville's
//! inequality `P(Λ ever ≥ 1/α) ≤ α`: the test may be looked at after every
//! outcome, as often as anyone likes, and its false-positive rate stays at
//! most `α`. The matching confidence sequence (the set of differences not
//! rejected) is `d ± sqrt(V (V + τ²) / τ² · (2 ln(1/α) + ln((V + τ²) / V)))`.
//! `τ` is the size of difference the test is tuned to find fastest; it is
//! set per metric from the control arm's spread ([`Msprt::tau_for`]).
//!
//! The sample-ratio check compares units per arm with the configured weights
//! (Pearson's χ², `k − 1` degrees of freedom): a mismatch means the split or
//! the logging is broken, and no verdict should be trusted.

/// What happened after an answer, as the outcome join or `POST /feedback`
/// records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// A match prediction's pair decided to travel together.
    Matched,
    /// A match prediction's pair decided not to.
    NotMatched,
    /// A recommended destination was saved…
    Saved,
    /// …booked…
    Booked,
    /// …or visited.
    Visited,
    /// A planned notification was sent and opened.
    Opened,
    /// It was sent and not opened within the window.
    NotOpened,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 7] = [
        Self::Matched,
        Self::NotMatched,
        Self::Saved,
        Self::Booked,
        Self::Visited,
        Self::Opened,
        Self::NotOpened,
    ];

    /// The name stored and accepted on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::NotMatched => "not_matched",
            Self::Saved => "saved",
            Self::Booked => "booked",
            Self::Visited => "visited",
            Self::Opened => "opened",
            Self::NotOpened => "not_opened",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The endpoint whose predictions can have this outcome (as the log
    /// names it: `match`, `recommend`, `notify`).
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Matched | Self::NotMatched => "match",
            Self::Saved | Self::Booked | Self::Visited => "recommend",
            Self::Opened | Self::NotOpened => "notify",
        }
    }

    /// The outcome as the number the metrics add up: 1 for a match, a
    /// converted place or an opened notification, 0 otherwise.
    pub fn value(self) -> f64 {
        match self {
            Self::NotMatched | Self::NotOpened => 0.0,
            _ => 1.0,
        }
    }

    /// The outcomes an endpoint's predictions can have.
    pub fn of_endpoint(endpoint: &str) -> Vec<OutcomeKind> {
        Self::ALL
            .into_iter()
            .filter(|k| k.endpoint() == endpoint)
            .collect()
    }
}

/// Per-arm sufficient statistics of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmStats {
    /// Units measured (predictions with an outcome window closed, say).
    pub n: u64,
    /// Sum of the metric over units.
    pub sum: f64,
    /// Sum of the metric's squares over units.
    pub sum_sq: f64,
}

impl ArmStats {
    /// Statistics of the given values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        values.into_iter().fold(Self::default(), |mut a, x| {
            a.push(x);
            a
        })
    }

    pub fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance of one unit's metric (0 below two units).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }

    /// The variance of the mean.
    fn mean_variance(&self) -> f64 {
        if self.n == 0 {
            return f64::INFINITY;
        }
        self.variance() / self.n as f64
    }

    /// A 95 % interval of the mean (normal approximation; for a rate with
    /// no spread observed yet, the rule of three's width).
    pub fn interval95(&self) -> Option<(f64, f64)> {
        let m = self.mean()?;
        let half = 1.96 * self.mean_variance().sqrt();
        let half = if half > 0.0 {
            half
        } else {
            3.0 / self.n as f64
        };
        Some((m - half, m + half))
    }
}

/// The mSPRT's settings: `alpha`, the false-positive rate it guarantees
/// however often it is looked at, and `tau`, the mixing scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Msprt {
    pub alpha: f64,
    pub tau: f64,
}

/// Which side an arm's difference to the control falls on, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The arm's metric is higher than the control's.
    Higher,
    /// The arm's metric is lower than the control's.
    Lower,
    /// Not decided yet.
    Undecided,
}

/// An arm against the control.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    /// The arm's mean minus the control's.
    pub difference: f64,
    /// The always-valid confidence interval of the difference at level
    /// 1 − alpha (a confidence sequence: valid at every look).
    pub interval: (f64, f64),
    /// The always-valid p-value (1/Λ, at most 1).
    pub p_value: f64,
    pub decision: Decision,
    /// When undecided: about how many more units (both arms together, in
    /// the current proportions) the test needs if the observed difference
    /// stays as it is; `None` when no difference is observed or when an arm
    /// has no units yet.
    pub more_units_needed: Option<u64>,
}

impl Msprt {
    /// A test at level `alpha` tuned to differences of about `tau`.
    pub fn new(alpha: f64, tau: f64) -> Self {
        Self { alpha, tau }
    }

    /// A mixing scale for a metric from the control arm: a tenth of one
    /// unit's standard deviation (a 10 %-of-a-standard-deviation effect is
    /// found fastest), floored so a control with no spread yet still works.
    pub fn tau_for(control: &ArmStats) -> f64 {
        (0.1 * control.variance().sqrt()).max(1e-3)
    }

    /// The mixture likelihood ratio Λ for a difference `d` of variance `v`.
    pub fn likelihood_ratio(&self, d: f64, v: f64) -> f64 {
        let t2 = self.tau * self.tau;
        if v.is_nan() || v <= 0.0 || v.is_infinite() {
            return 1.0;
        }
        let log = 0.5 * (v / (v + t2)).ln() + d * d * t2 / (2.0 * v * (v + t2));
        log.min(700.0).exp()
    }

    /// The arm against the control now.
    pub fn compare(&self, control: &ArmStats, arm: &ArmStats) -> Option<Comparison> {
        let (mc, ma) = (control.mean()?, arm.mean()?);
        let d = ma - mc;
        let v = control.mean_variance() + arm.mean_variance();
        let t2 = self.tau * self.tau;
        let lambda = self.likelihood_ratio(d, v);
        let p_value = (1.0 / lambda).min(1.0);
        let half = if v > 0.0 {
            (v * (v + t2) / t2 * (2.0 * (1.0 / self.alpha).ln() + ((v + t2) / v).ln())).sqrt()
        } else {
            f64::INFINITY
        };
        let decision = if lambda >= 1.0 / self.alpha {
            if d > 0.0 {
                Decision::Higher
            } else {
                Decision::Lower
            }
        } else {
            Decision::Undecided
        };
        let more_units_needed = (decision == Decision::Undecided)
            .then(|| self.units_needed(control, arm, d))
            .flatten();
        Some(Comparison {
            difference: d,
            interval: (d - half, d + half),
            p_value,
            decision,
            more_units_needed,
        })
    }

    /// Units to add (both arms, current proportions) until Λ would cross
    /// 1/α with the difference as observed.
    fn units_needed(&self, control: &ArmStats, arm: &ArmStats, d: f64) -> Option<u64> {
        let n0 = (control.n + arm.n) as f64;
        if d == 0.0 || control.n < 2 || arm.n < 2 {
            return None;
        }
        // V at a total of n units: each arm's unit variance over its share of n.
        let (wc, wa) = (control.n as f64 / n0, arm.n as f64 / n0);
        let per_unit = control.variance() / wc + arm.variance() / wa;
        if per_unit.is_nan() || per_unit <= 0.0 {
            return None;
        }
        let crosses = |n: f64| self.likelihood_ratio(d, per_unit / n) >= 1.0 / self.alpha;
        let mut hi = n0.max(1.0);
        while !crosses(hi) {
            hi *= 2.0;
            if hi > 1e12 {
                return None;
            }
        }
        let mut lo = n0;
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if crosses(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some((hi - n0).ceil().max(1.0) as u64)
    }
}

/// The sample-ratio check: the p-value of Pearson's χ² test of `observed`
/// units per arm against the configured `weights`. Below 0.001 the split is
/// not doing what it was told.
pub fn sample_ratio_p(observed: &[u64], weights: &[f64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    let wsum: f64 = weights.iter().sum();
    if observed.len() != weights.len()
        || observed.len() < 2
        || total == 0
        || wsum.is_nan()
        || wsum <= 0.0
    {
        return None;
    }
    let chi2: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = total as f64 * w / wsum;
            if e > 0.0 {
                (o as f64 - e).powi(2) / e
            } else {
                0.0
            }
        })
        .sum();
    Some(chi2_survival(chi2, (observed.len() - 1) as f64))
}

/// P(χ²_k ≥ x): the regularised upper incomplete gamma Q(k/2, x/2).
pub fn chi2_survival(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(k / 2.0, x / 2.0)
}

/// Q(a, x) by its series below a + 1 and its continued fraction above
/// (Numerical Recipes, §6.2).
fn gamma_q(a: f64, x: f64) -> f64 {
    let ln_front = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * ln_front.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (ln_front.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) so the simulations are
    /// the same every run without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn bernoulli(&mut self, p: f64) -> f64 {
            f64::from(u8::from(self.next() < p))
        }
    }

    /// Run `experiments` experiments of `looks` batches of `batch` units per
    /// arm (rates `pa`, `pb`), looking after every batch; the share of
    /// experiments in which some look decided, and the decisions' sides.
    fn simulate(
        pa: f64,
        pb: f64,
        experiments: usize,
        looks: usize,
        batch: usize,
        seed: u64,
    ) -> (f64, usize, usize) {
        let mut rng = Rng(seed);
        let (mut decided, mut higher, mut lower) = (0, 0, 0);
        for _ in 0..experiments {
            let (mut a, mut b) = (ArmStats::default(), ArmStats::default());
            for _ in 0..looks {
                for _ in 0..batch {
                    a.push(rng.bernoulli(pa));
                    b.push(rng.bernoulli(pb));
                }
                let test = Msprt::new(0.05, Msprt::tau_for(&a));
                match test.compare(&a, &b).unwrap().decision {
                    Decision::Undecided => continue,
                    Decision::Higher => higher += 1,
                    Decision::Lower => lower += 1,
                }
                decided += 1;
                break;
            }
        }
        (decided as f64 / experiments as f64, higher, lower)
    }

    #[test]
    fn a_a_tests_looked_at_after_every_batch_stay_under_five_percent() {
        // 400 A/A experiments, each looked at 100 times (every 50 units per
        // arm, 5,000 per arm in the end): a fixed-horizon z-test looked at
        // this often would decide in about a third of them.
        let (rate, _, _) = simulate(0.2, 0.2, 400, 100, 50, 7);
        eprintln!("A/A at 20 %: {rate} decided");
        assert!(rate <= 0.05, "false positives {rate}");
        // The same with a rarer outcome (a notification's open, a booking).
        let (rate, _, _) = simulate(0.03, 0.03, 400, 100, 50, 8);
        eprintln!("A/A at 3 %: {rate} decided");
        assert!(rate <= 0.05, "false positives at 3 %: {rate}");
    }

    #[test]
    fn a_real_difference_is_found_on_the_right_side() {
        // 20 % against 23 %: over 5,000 units per arm the test decides
        // almost always, and never for the wrong side.
        let (power, higher, lower) = simulate(0.20, 0.23, 200, 100, 50, 9);
        eprintln!("20 % against 23 %: power {power}");
        assert!(power >= 0.8, "power {power}");
        assert_eq!(lower, 0);
        assert!(higher > 0);
    }

    #[test]
    fn the_interval_covers_the_difference_and_the_p_value_agrees() {
        let a = ArmStats::of((0..4_000).map(|i| f64::from(u8::from(i % 5 == 0))));
        let b = ArmStats::of((0..4_000).map(|i| f64::from(u8::from(i % 4 == 0))));
        let t = Msprt::new(0.05, Msprt::tau_for(&a));
        let c = t.compare(&a, &b).unwrap();
        assert!((c.difference - 0.05).abs() < 1e-9);
        assert!(c.interval.0 < 0.05 && 0.05 < c.interval.1);
        assert_eq!(c.decision, Decision::Higher);
        assert!(c.p_value < 0.05);
        assert!(
            c.interval.0 > 0.0,
            "decided, so the interval excludes 0: {c:?}"
        );
        // Equal arms: undecided, p = 1 (capped), an interval around 0.
        let c = t.compare(&a, &a).unwrap();
        assert_eq!(c.decision, Decision::Undecided);
        assert!(c.interval.0 < 0.0 && c.interval.1 > 0.0);
        assert_eq!(c.more_units_needed, None);
        assert!(t.compare(&a, &ArmStats::default()).is_none());
    }

    #[test]
    fn units_needed_are_enough_and_not_far_more() {
        let a = ArmStats::of((0..1_000).map(|i| f64::from(u8::from(i % 5 == 0))));
        let b = ArmStats::of((0..1_000).map(|i| f64::from(u8::from(i % 9 < 2 || i % 50 == 0))));
        let t = Msprt::new(0.05, Msprt::tau_for(&a));
        let c = t.compare(&a, &b).unwrap();
        assert_eq!(c.decision, Decision::Undecided, "{c:?}");
        let more = c.more_units_needed.unwrap();
        // Scale both arms (same means and spreads) to the suggested size.
        let scale = |s: &ArmStats, k: f64| ArmStats {
            n: (s.n as f64 * k).round() as u64,
            sum: s.sum * k,
            sum_sq: s.sum_sq * k,
        };
        let k = (2_000 + more) as f64 / 2_000.0;
        let decided = t.compare(&scale(&a, k), &scale(&b, k)).unwrap();
        assert_ne!(
            decided.decision,
            Decision::Undecided,
            "{more} more were not enough"
        );
        let k = (2_000.0 + more as f64 * 0.9) / 2_000.0;
        let short = t.compare(&scale(&a, k), &scale(&b, k)).unwrap();
        assert_eq!(
            short.decision,
            Decision::Undecided,
            "{more} was not the least"
        );
    }

    #[test]
    fn the_sample_ratio_check_flags_a_broken_split() {
        // 90/10 as configured: fine.
        assert!(sample_ratio_p(&[9_030, 970], &[90.0, 10.0]).unwrap() > 0.01);
        // 85/15 where 90/10 was asked: broken.
        assert!(sample_ratio_p(&[8_500, 1_500], &[90.0, 10.0]).unwrap() < 1e-6);
        // Three arms.
        assert!(sample_ratio_p(&[3_340, 3_300, 3_360], &[1.0, 1.0, 1.0]).unwrap() > 0.1);
        assert!(sample_ratio_p(&[10], &[1.0]).is_none());
    }

    #[test]
    fn chi_square_tails_match_known_values() {
        // Tables: P(χ²₁ ≥ 3.841) = 0.05, P(χ²₂ ≥ 5.991) = 0.05,
        // P(χ²₁₀ ≥ 18.307) = 0.05, P(χ²₁ ≥ 10.828) = 0.001.
        for (x, k, p) in [
            (3.841, 1.0, 0.05),
            (5.991, 2.0, 0.05),
            (18.307, 10.0, 0.05),
            (10.828, 1.0, 0.001),
        ] {
            let got = chi2_survival(x, k);
            assert!((got - p).abs() < p * 0.01, "χ²({k}) ≥ {x}: {got}");
        }
        assert_eq!(chi2_survival(0.0, 3.0), 1.0);
    }
}
