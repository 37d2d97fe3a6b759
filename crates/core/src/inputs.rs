//! Model input layouts: how a user becomes the recommendation model's input
//! row (engaged destinations, then the profile inputs) and the rows of one
//! recommendation call that measure each signal's share of a score. The
//! trainer and the server build inputs with these same functions, so a
//! served model reads exactly what it was trained on.

use crate::catalogue::Catalogue;
use crate::features::*;
use crate::post::destination_mask;
use crate::types::*;

/// Names of the profile inputs that follow the destination columns.
pub fn rec_profile_names() -> Vec<String> {
    TAGS.iter()
        .map(|t| format!("tag:{t}"))
        .chain(Budget::ALL.iter().map(|b| format!("budget:{b}")))
        .chain(TripDuration::ALL.iter().map(|d| format!("duration:{d}")))
        .chain(TAGS.iter().map(|t| format!("affinity:{t}")))
        .collect()
}

/// The profile inputs of a user: interests (1/√k each), budget and preferred
/// trip length (one-hot), and the tag profile of the places they engaged with.
pub fn rec_profile_input(u: &UserFeatures, space: InterestSpace) -> Vec<f32> {
    let mut x = interest_input(u, space).to_vec();
    x.extend(Budget::ALL.iter().map(|b| (*b == u.budget) as u8 as f32));
    x.extend(
        TripDuration::ALL
            .iter()
            .map(|d| (*d == u.preferred_duration) as u8 as f32),
    );
    x.extend(u.tag_affinity);
    x
}

/// The user's interests as the model reads them: 1/√k on each of k declared
/// tags; for a semantic model, on each of the k tags they stand for
/// ([`UserFeatures::interest_tags`]).
pub fn interest_input(u: &UserFeatures, space: InterestSpace) -> [f32; TAGS.len()] {
    let tags = match space {
        InterestSpace::Semantic => u.interest_tags(),
        InterestSpace::Exact => u.interests,
    };
    let k = tags.len().max(1) as f32;
    std::array::from_fn(|t| {
        if tags.contains(t) {
            1.0 / k.sqrt()
        } else {
            0.0
        }
    })
}

/// Tag-to-destination weights: 1/√(number of tags) where the destination has the
/// tag, so `interests · T` is the cosine of interests and tags.
pub fn tag_matrix(cat: &Catalogue) -> Vec<f32> {
    let items = cat.len();
    let mut m = vec![0f32; TAGS.len() * items];
    for (i, tags) in cat.tags.iter().enumerate() {
        let w = 1.0 / (tags.len().max(1) as f32).sqrt();
        for t in 0..TAGS.len() {
            if tags.contains(t) {
                m[t * items + i] = w;
            }
        }
    }
    m
}

/// The model input of one user: engagement per destination (catalogue order),
/// then the profile inputs.
pub fn rec_input(u: &UserFeatures, items: usize, space: InterestSpace) -> Vec<f32> {
    let mut x = vec![0f32; items];
    for &d in &u.engaged {
        if (d as usize) < items {
            x[d as usize] = 1.0;
        }
    }
    x.extend(rec_profile_input(u, space));
    x
}

/// Input names of the recommendation model: `item:<destination id>` per
/// destination, then the profile inputs ([`rec_profile_names`]).
pub fn rec_feature_names(cat: &Catalogue) -> Vec<String> {
    cat.destinations
        .iter()
        .map(|d| format!("item:{}", d.id))
        .chain(rec_profile_names())
        .collect()
}

/// History destinations whose share of a recommendation is measured.
pub const MAX_ATTRIBUTED_HISTORY: usize = 30;

/// The input rows of one recommendation call, and the model columns of the
/// history destinations measured. Row 0 is the user as they are; then the
/// same user without profile (interests, budget, trip length), without
/// history, with neither (popularity alone), and without each history
/// destination: the differences are each signal's share of every score,
/// which the reason names. `columns` maps each model column to its
/// destination in the catalogue. Without `ablations` only the first three
/// rows are made: the caller of an affine model knows the model's answer on
/// the empty row (popularity alone) and each destination's share another
/// way.
pub fn rec_attribution_rows(
    u: &UserFeatures,
    columns: &[Option<usize>],
    space: InterestSpace,
    ablations: bool,
) -> (Vec<f32>, Vec<usize>) {
    let cols = columns.len();
    let profile = rec_profile_input(u, space);
    let width = cols + profile.len();
    // The model columns of the user's destinations: one pass over a mask of
    // them instead of a search of their list per column.
    let engaged = destination_mask(&u.engaged);
    let mut history: Vec<usize> = Vec::with_capacity(u.engaged.len());
    for (c, d) in columns.iter().enumerate() {
        if d.is_some_and(|d| engaged.get(d).is_some_and(|e| *e)) {
            history.push(c);
        }
    }
    let attributed = history.len().min(MAX_ATTRIBUTED_HISTORY);
    let n_rows = if ablations { 4 + attributed } else { 3 };
    // All rows start empty (popularity alone, row 3, stays so); the others
    // get their signals written in.
    let mut rows = vec![0f32; width * n_rows];
    for (r, row) in rows.chunks_exact_mut(width).enumerate() {
        let (with_history, with_profile) = match r {
            1 => (true, false),
            2 => (false, true),
            3 => (false, false),
            _ => (true, true),
        };
        if with_history {
            for &c in &history {
                row[c] = 1.0;
            }
        }
        if with_profile {
            row[cols..].copy_from_slice(&profile);
        }
        if r >= 4 {
            row[history[r - 4]] = 0.0;
        }
    }
    history.truncate(attributed);
    (rows, history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserFeatures {
        crate::testing::user("UTC")
    }

    #[test]
    fn attribution_rows_remove_one_signal_each() {
        let mut u = user();
        u.engaged = vec![2, 5, 9];
        // Columns 0..4 are catalogue destinations 9, 5, 2, none; 1 of them unknown.
        let columns = [Some(9), Some(5), None, Some(2)];
        let (rows, history) = rec_attribution_rows(&u, &columns, InterestSpace::Exact, true);
        let profile = rec_profile_input(&u, InterestSpace::Exact);
        let w = columns.len() + profile.len();
        assert_eq!(history, vec![0, 1, 3]);
        assert_eq!(rows.len(), w * (4 + 3));
        let row = |r: usize| &rows[r * w..(r + 1) * w];
        assert_eq!(&row(0)[..4], &[1.0, 1.0, 0.0, 1.0]);
        assert_eq!(&row(0)[4..], &profile[..]);
        assert_eq!(&row(1)[..4], &row(0)[..4]);
        assert!(row(1)[4..].iter().all(|x| *x == 0.0));
        assert!(row(2)[..4].iter().all(|x| *x == 0.0));
        assert_eq!(&row(2)[4..], &profile[..]);
        assert!(row(3).iter().all(|x| *x == 0.0));
        for (k, &c) in history.iter().enumerate() {
            let mut expected = row(0).to_vec();
            expected[c] = 0.0;
            assert_eq!(row(4 + k), &expected[..]);
        }
        let (three, same) = rec_attribution_rows(&u, &columns, InterestSpace::Exact, false);
        assert_eq!(same, history);
        assert_eq!(&three[..], &rows[..3 * w]);
    }

    #[test]
    fn attribution_rows_keep_every_destination_but_measure_the_first_thirty() {
        let mut u = user();
        u.engaged = (0..35).collect();
        let columns: Vec<Option<usize>> = (0..40).map(Some).collect();
        let space = InterestSpace::Exact;
        let (rows, history) = rec_attribution_rows(&u, &columns, space, true);
        let w = columns.len() + rec_profile_input(&u, space).len();
        assert_eq!(history, (0..MAX_ATTRIBUTED_HISTORY).collect::<Vec<_>>());
        assert_eq!(rows.len(), w * (4 + MAX_ATTRIBUTED_HISTORY));
        let row = |r: usize| &rows[r * w..(r + 1) * w];
        for r in [0, 1] {
            assert_eq!(row(r)[..40].iter().filter(|x| **x == 1.0).count(), 35);
        }
        for (k, &c) in history.iter().enumerate() {
            assert_eq!(row(4 + k)[c], 0.0);
            assert_eq!(row(4 + k)[..40].iter().filter(|x| **x == 1.0).count(), 34);
        }
    }
}
