//! What a recommendation answer is made of besides the model's scores: the
//! destinations a request may get (known to the catalogue, within the
//! filters, not yet consumed) and the reason of each recommended one, from
//! each signal's share of its score.

use crate::catalogue::Catalogue;
use crate::features::UserFeatures;
use crate::post::{
    destination_mask, passes_filters, recommendation_reason, strongest_two, RecDriver,
};
use crate::types::{Budget, TripDuration};

/// The model columns a request may get, in column order: destinations the
/// catalogue knows (`columns[c]`, the catalogue index of column `c`'s
/// destination), within the filters, and not in `consumed` (catalogue
/// indices of places the user booked or visited). Filters apply before
/// top-k, so `limit` results come back whenever that many destinations match.
pub fn candidates<'a>(
    catalogue: &'a Catalogue,
    columns: &'a [Option<usize>],
    consumed: Option<&[u32]>,
    budget: Option<Budget>,
    duration: Option<TripDuration>,
) -> impl Iterator<Item = u32> + 'a {
    let consumed = consumed.map(destination_mask).unwrap_or_default();
    columns
        .iter()
        .enumerate()
        .filter(move |(_, d)| {
            d.is_some_and(|d| {
                !consumed.get(d).is_some_and(|c| *c)
                    && passes_filters(&catalogue.destinations[d], budget, duration)
            })
        })
        .map(|(c, _)| c as u32)
}

/// Each signal's share of one recommended destination's score: the score
/// less the score without that signal (history, the profile), and the
/// score on popularity alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalShares {
    pub history: f32,
    pub interests: f32,
    pub popularity: f32,
}

/// The reason of a recommendation of catalogue destination `d`: the history
/// when its share is positive and the largest (naming the two history
/// destinations with the largest shares of `history_shares`, (share,
/// column) pairs, read only then), else the profile when its share is
/// positive and not below popularity's, else popularity.
pub fn reason(
    catalogue: &Catalogue,
    user: &UserFeatures,
    columns: &[Option<usize>],
    d: usize,
    shares: SignalShares,
    history_shares: impl Iterator<Item = (f32, usize)>,
) -> String {
    let SignalShares {
        history,
        interests,
        popularity,
    } = shares;
    let mut names = [("", false); 2];
    let mut named = 0;
    let driver = if history > 0.0 && history >= interests && history >= popularity {
        let (top, n) = strongest_two(history_shares);
        for (_, h) in &top[..n] {
            if let Some(d) = columns[*h] {
                names[named] = (
                    catalogue.destinations[d].name.as_str(),
                    user.has_consumed(d),
                );
                named += 1;
            }
        }
        RecDriver::History(&names[..named])
    } else if interests > 0.0 && interests >= popularity {
        RecDriver::Profile {
            interests: user.interests.intersection(&catalogue.tags[d]),
            budget: user.budget,
            duration: user.preferred_duration,
        }
    } else {
        RecDriver::Popularity
    };
    recommendation_reason(&driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::builtin;
    use crate::types::*;

    fn catalogue() -> Catalogue {
        Catalogue::new(builtin())
    }

    /// The crate's test user (food and art, a medium budget, week-long
    /// trips) with the given destinations engaged with (all explored,
    /// `consumed` also booked).
    fn user(engaged: &[u32], consumed: &[u32]) -> UserFeatures {
        let mut u = crate::testing::user("UTC");
        u.engaged = engaged.to_vec();
        u.consumed = consumed.to_vec();
        u
    }

    #[test]
    fn candidates_skip_unknown_consumed_and_filtered_destinations() {
        let cat = catalogue();
        // Column 1 has no destination; column 2 is destination 0, consumed.
        let columns: Vec<Option<usize>> = vec![Some(3), None, Some(0), Some(5), Some(7)];
        let all: Vec<u32> = candidates(&cat, &columns, None, None, None).collect();
        assert_eq!(all, vec![0, 2, 3, 4]);
        let fresh: Vec<u32> = candidates(&cat, &columns, Some(&[0]), None, None).collect();
        assert_eq!(fresh, vec![0, 3, 4]);
        // A budget keeps only places at or below it, as `passes_filters` says.
        let cheap: Vec<u32> = candidates(&cat, &columns, None, Some(Budget::Low), None).collect();
        let expected: Vec<u32> = [0u32, 2, 3, 4]
            .into_iter()
            .filter(|&c| {
                let d = columns[c as usize].unwrap();
                cat.destinations[d].cost_level <= Budget::Low
            })
            .collect();
        assert_eq!(cheap, expected);
        let week: Vec<u32> =
            candidates(&cat, &columns, None, None, Some(TripDuration::Week)).collect();
        assert!(week.iter().all(|&c| {
            let d = columns[c as usize].unwrap();
            cat.destinations[d]
                .trip_lengths
                .contains(&TripDuration::Week)
        }));
    }

    #[test]
    fn the_history_names_its_two_strongest_places_and_whether_the_user_went() {
        let cat = catalogue();
        let columns: Vec<Option<usize>> = (0..cat.len()).map(Some).collect();
        let u = user(&[1, 2, 4], &[2]);
        let shares = SignalShares {
            history: 0.5,
            interests: 0.2,
            popularity: 0.1,
        };
        let r = reason(
            &cat,
            &u,
            &columns,
            9,
            shares,
            [(0.1, 1), (0.3, 2), (0.2, 4)].into_iter(),
        );
        let (a, b) = (&cat.destinations[2].name, &cat.destinations[4].name);
        assert_eq!(
            r,
            recommendation_reason(&RecDriver::History(&[(a, true), (b, false)]))
        );
    }

    #[test]
    fn the_profile_or_popularity_speaks_when_the_history_does_not_lead() {
        let cat = catalogue();
        let columns: Vec<Option<usize>> = (0..cat.len()).map(Some).collect();
        let u = user(&[1], &[]);
        // The history shares are not read unless the history leads.
        let unread =
            std::iter::from_fn(|| -> Option<(f32, usize)> { panic!("history shares read") });
        let profile = SignalShares {
            history: 0.1,
            interests: 0.4,
            popularity: 0.4,
        };
        let d = 3;
        assert_eq!(
            reason(&cat, &u, &columns, d, profile, unread),
            recommendation_reason(&RecDriver::Profile {
                interests: u.interests.intersection(&cat.tags[d]),
                budget: Budget::Medium,
                duration: TripDuration::Week,
            })
        );
        let popular = SignalShares {
            history: 0.0,
            interests: 0.1,
            popularity: 0.5,
        };
        assert_eq!(
            reason(&cat, &u, &columns, d, popular, std::iter::empty()),
            recommendation_reason(&RecDriver::Popularity)
        );
        // No positive share at all: popularity, even when it is negative.
        let none = SignalShares {
            history: -0.2,
            interests: -0.1,
            popularity: -0.3,
        };
        assert_eq!(
            reason(&cat, &u, &columns, d, none, std::iter::empty()),
            recommendation_reason(&RecDriver::Popularity)
        );
    }
}
