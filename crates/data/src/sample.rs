//! What training reads when the app's data is larger than training needs: a
//! deterministic sample of users, so memory stays bounded however many users
//! the store holds. Every store feeds its rows through [`DatasetBuilder`], in
//! one pass per table (match outcomes before profiles), so neither store ever
//! holds more than the sample plus one batch of rows.
//!
//! With `n` profiles and a bound of `m` users (`n > m`): a user is sampled when
//! the hash of their id falls below `m / n`, and a match outcome when the hash
//! of its pair falls below `m / matches`; the users of a sampled outcome are
//! kept too, so the match trainer sees both sides. At most about `3m` users'
//! rows are kept. The hash is fixed, so a rerun picks the same users, and it
//! is independent of the rows' contents, so the sample is unbiased.

use ml_core::types::*;
use std::collections::HashSet;
use uuid::Uuid;

/// How much of the data training reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingSample {
    /// Users to sample when the store holds more (outcomes add their pairs).
    pub max_users: usize,
}

impl TrainingSample {
    /// Everything, whatever its size.
    pub const ALL: TrainingSample = TrainingSample {
        max_users: usize::MAX,
    };
}

/// A stable hash of ids onto `0..u64::MAX` (splitmix64 of the 128 bits).
fn hash(ids: &[Uuid]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for id in ids {
        let v = id.as_u128();
        for part in [(v >> 64) as u64, v as u64] {
            let mut z = h ^ part;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            h = z ^ (z >> 31);
        }
    }
    h
}

fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate.max(0.0) * u64::MAX as f64) as u64
    }
}

/// Builds a [`Dataset`] from rows fed table by table: destinations, match
/// outcomes, profiles, then the per-user tables.
#[derive(Debug)]
pub struct DatasetBuilder {
    data: Dataset,
    /// `None`: keep everything.
    sample: Option<Sampler>,
}

#[derive(Debug)]
struct Sampler {
    user_below: u64,
    match_below: u64,
    /// Users named by a sampled match outcome.
    partners: HashSet<Uuid>,
    /// Users whose rows are kept (known once profiles have been read).
    kept: HashSet<Uuid>,
}

impl DatasetBuilder {
    /// A builder for a store holding `profiles` profiles and `matches` match
    /// outcomes (counted before reading).
    pub fn new(sample: TrainingSample, profiles: u64, matches: u64) -> Self {
        let m = sample.max_users as f64;
        let sample = ((profiles as f64) > m).then(|| Sampler {
            user_below: threshold(m / profiles as f64),
            match_below: threshold(m / (matches.max(1) as f64)),
            partners: HashSet::new(),
            kept: HashSet::new(),
        });
        Self {
            data: Dataset::default(),
            sample,
        }
    }

    /// Whether rows of `user` are kept (after profiles have been fed).
    fn keeps(&self, user: &Uuid) -> bool {
        self.sample.as_ref().is_none_or(|s| s.kept.contains(user))
    }

    pub fn destination(&mut self, d: Destination) {
        self.data.destinations.push(d);
    }

    pub fn match_outcome(&mut self, m: MatchOutcome) {
        if let Some(s) = &mut self.sample {
            if hash(&[m.user_a, m.user_b]) > s.match_below {
                return;
            }
            s.partners.insert(m.user_a);
            s.partners.insert(m.user_b);
        }
        self.data.matches.push(m);
    }

    pub fn profile(&mut self, p: Profile) {
        if let Some(s) = &mut self.sample {
            if hash(&[p.id]) > s.user_below && !s.partners.contains(&p.id) {
                return;
            }
            s.kept.insert(p.id);
        }
        self.data.profiles.push(p);
    }

    pub fn interaction(&mut self, i: Interaction) {
        if self.keeps(&i.user_id) {
            self.data.interactions.push(i);
        }
    }

    pub fn activity(&mut self, a: ActivityEvent) {
        if self.keeps(&a.user_id) {
            self.data.activity.push(a);
        }
    }

    pub fn notification(&mut self, n: NotificationRecord) {
        if self.keeps(&n.user_id) {
            self.data.notifications.push(n);
        }
    }

    pub fn consent(&mut self, c: ChannelConsent) {
        if self.keeps(&c.user_id) {
            self.data.consents.push(c);
        }
    }

    pub fn finish(mut self) -> Dataset {
        // A sampled outcome whose user has no profile row (impossible under
        // the schema's foreign keys, but cheap to guard) would break training.
        if let Some(s) = &self.sample {
            self.data
                .matches
                .retain(|m| s.kept.contains(&m.user_a) && s.kept.contains(&m.user_b));
        }
        self.data
    }
}

/// Feed a whole in-memory dataset through a builder (tests and tools).
pub fn sample_dataset(d: &Dataset, sample: TrainingSample) -> Dataset {
    let mut b = DatasetBuilder::new(sample, d.profiles.len() as u64, d.matches.len() as u64);
    d.destinations
        .iter()
        .cloned()
        .for_each(|x| b.destination(x));
    d.matches.iter().cloned().for_each(|x| b.match_outcome(x));
    d.profiles.iter().cloned().for_each(|x| b.profile(x));
    d.interactions
        .iter()
        .cloned()
        .for_each(|x| b.interaction(x));
    d.activity.iter().copied().for_each(|x| b.activity(x));
    d.notifications
        .iter()
        .cloned()
        .for_each(|x| b.notification(x));
    d.consents.iter().copied().for_each(|x| b.consent(x));
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_train::generator::{generate, GeneratorConfig};

    #[test]
    fn a_sample_is_bounded_consistent_and_the_same_every_time() {
        let d = generate(&GeneratorConfig {
            users: 2000,
            ..Default::default()
        });
        let all = sample_dataset(&d, TrainingSample::ALL);
        assert_eq!(all.profiles.len(), 2000);
        assert_eq!(all.matches.len(), d.matches.len());
        assert_eq!(all.activity.len(), d.activity.len());

        let s = sample_dataset(&d, TrainingSample { max_users: 200 });
        let users: HashSet<Uuid> = s.profiles.iter().map(|p| p.id).collect();
        assert!(
            users.len() <= 3 * 200 && users.len() >= 150,
            "{} users kept",
            users.len()
        );
        assert!(!s.matches.is_empty() && s.matches.len() < d.matches.len());
        assert!(s
            .matches
            .iter()
            .all(|m| users.contains(&m.user_a) && users.contains(&m.user_b)));
        assert!(s.interactions.iter().all(|i| users.contains(&i.user_id)));
        assert!(s.activity.iter().all(|a| users.contains(&a.user_id)));
        assert!(s.notifications.iter().all(|n| users.contains(&n.user_id)));
        // Every row of a kept user is kept: the sample thins users, not histories.
        let u = s.profiles[0].id;
        assert_eq!(
            s.activity.iter().filter(|a| a.user_id == u).count(),
            d.activity.iter().filter(|a| a.user_id == u).count()
        );
        assert_eq!(s.destinations.len(), d.destinations.len());
        let again = sample_dataset(&d, TrainingSample { max_users: 200 });
        assert_eq!(again.profiles, s.profiles);
        assert_eq!(again.matches, s.matches);
    }

    #[test]
    fn the_match_outcome_rate_in_a_sample_follows_the_data() {
        // The sample is drawn by id hashes, never by outcome: the matched share
        // of sampled outcomes stays close to the whole data's.
        let d = generate(&GeneratorConfig {
            users: 3000,
            ..Default::default()
        });
        let share =
            |m: &[MatchOutcome]| m.iter().filter(|m| m.matched).count() as f64 / m.len() as f64;
        let s = sample_dataset(&d, TrainingSample { max_users: 600 });
        assert!(s.matches.len() > 300, "{}", s.matches.len());
        assert!(
            (share(&s.matches) - share(&d.matches)).abs() < 0.06,
            "{} vs {}",
            share(&s.matches),
            share(&d.matches)
        );
    }
}
