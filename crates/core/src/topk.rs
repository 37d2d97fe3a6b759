//! Top-k selection: the `k` best of a set of candidates by score, best
//! first, ties by index, without sorting every candidate. The server ranks a
//! recommendation's destinations with it, and the offline ranking protocol
//! ranks MovieLens items with it, so both pick alike.

/// Up to this many wanted, [`top_k_of`] keeps them in one pass.
const ONE_PASS_K: usize = 64;

/// The `k` best of `candidates`, best first (ties by index).
pub fn top_k_of(scores: &[f32], candidates: impl IntoIterator<Item = u32>, k: usize) -> Vec<u32> {
    let by = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if k <= ONE_PASS_K {
        // A page of answers (a recommendation's `limit`): the best so far
        // in order, where most candidates cost one comparison with the
        // last kept. Selecting from a collected list (the partitions of
        // `select_nth_unstable_by`) was 3.7 % of a recommendation's CPU
        // (issue 16). The order is total, so both give the same list.
        let mut top: Vec<u32> = Vec::with_capacity(k + 1);
        for c in candidates {
            if top.len() == k && top.last().is_none_or(|last| by(&c, last).is_ge()) {
                continue;
            }
            let at = top.partition_point(|t| by(t, &c).is_lt());
            top.insert(at, c);
            top.truncate(k);
        }
        return top;
    }
    let mut candidates: Vec<u32> = candidates.into_iter().collect();
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k, by);
        candidates.truncate(k);
    }
    candidates.sort_by(by);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Either way of picking gives what sorting every candidate (best
        /// score first, ties by index) and taking `k` gives, ties, NaN and
        /// infinities included.
        #[test]
        fn top_k_of_is_the_head_of_the_full_sort(
            scores in proptest::collection::vec(
                prop_oneof![(0u8..6).prop_map(f32::from), proptest::num::f32::ANY],
                0..200,
            ),
            keep in proptest::collection::vec(proptest::bool::ANY, 200),
            k in 0usize..90,
        ) {
            let candidates: Vec<u32> =
                (0..scores.len() as u32).filter(|&i| keep[i as usize]).collect();
            let mut sorted = candidates.clone();
            sorted.sort_by(|a, b| {
                scores[*b as usize].total_cmp(&scores[*a as usize]).then(a.cmp(b))
            });
            sorted.truncate(k);
            prop_assert_eq!(top_k_of(&scores, candidates, k), sorted);
        }
    }
}
