//! Low-rank EASE: the recommender's item-item model for catalogues too large
//! for the dense fit of [`crate::ease`] (its Gram matrix and inverse grow as
//! the square of the catalogue: 11 GB at 20,000 destinations).
//!
//! The user-weighted Gram matrix `G = XᵀWX` is approximated by its leading
//! eigenpairs plus its exact diagonal, `G ≈ V·S·Vᵀ + R` with `R` the diagonal
//! the rank-`k` part misses, found by randomised subspace iteration (Halko,
//! Martinsson and Tropp 2011) from sparse products with `X` only, so `G` is
//! never formed. With EASE's and EDLAE's diagonal regulariser folded into
//! `Λ = λ·I + p/(1−p)·diag(G) + R`, Woodbury gives the inverse in factors:
//! `P = (Λ + VSVᵀ)⁻¹ = Λ⁻¹ − L·(Λ⁻¹V)ᵀ` with `L = Λ⁻¹·V·(S⁻¹ + VᵀΛ⁻¹V)⁻¹`,
//! and EASE's `B_ij = −P_ij / P_jj` (`i ≠ j`) is `L·Rᵀ` with
//! `R_j = (Λ⁻¹V)_j / P_jj`: two `items × k` matrices, so memory and serving
//! cost grow linearly in the catalogue. A user's scores are `(x·L)·Rᵀ`.
//! Unlike the dense fit, `B`'s diagonal is not zero; it only touches places
//! the user already engaged with, and what validation measures is this
//! served product, self-term included.
//!
//! Measured on MovieLens-1M through the product path
//! (`docs/recommender-issue-34.md`): rank 256 keeps 98 % of the dense
//! model's NDCG@10; the dense fit stays the choice wherever it fits
//! (`REC_DENSE_MAX`).

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Extra directions of the random subspace beyond the rank kept: they
/// absorb the error of the eigenvectors at the rank's edge.
const OVERSAMPLE: usize = 16;
/// Subspace (power) iterations: each multiplies by `G` once more, which
/// separates the leading eigenvectors from the tail.
const POWER_ITERATIONS: usize = 3;

/// The leading eigenpairs of one user-weighted Gram matrix and its diagonal:
/// what every fit with that user weighting shares.
pub struct Eigen {
    items: usize,
    /// `items × k` eigenvectors.
    v: Mat<f64>,
    /// Their eigenvalues, largest first.
    s: Vec<f64>,
    /// `G`'s exact diagonal.
    diag: Vec<f64>,
    /// The part of the diagonal the rank-`k` approximation misses (≥ 0).
    resid: Vec<f64>,
    /// Each item's number of users.
    counts: Vec<f64>,
}

/// One low-rank fit: `B = left · rightᵀ`.
pub struct LowRankFit {
    items: usize,
    rank: usize,
    /// `items × k` row-major: `L = Λ⁻¹·V·(S⁻¹ + VᵀΛ⁻¹V)⁻¹`.
    left: Vec<f32>,
    /// `k × items` row-major: `Rᵀ`, row `c` holding `(Λ⁻¹V)_ic / P_ii`.
    right: Vec<f32>,
    counts: Vec<f64>,
}

fn user_weight(len: usize, user_norm: f64) -> f64 {
    if user_norm == 0.0 || len == 0 {
        1.0
    } else {
        (len as f64).powf(-user_norm)
    }
}

/// `G·Q` for `G = XᵀWX` and `Q` (`items × l`, row-major), row-major: for each
/// user, the sum of their items' rows, weighted, added back to those rows.
/// Two passes over the interactions, `O(nnz · l)`.
fn gram_times(users: &[Vec<u32>], weights: &[f64], q: &[f64], items: usize, l: usize) -> Vec<f64> {
    let mut out = vec![0.0; items * l];
    let mut z = vec![0.0; l];
    for (u, w) in users.iter().zip(weights) {
        if u.is_empty() {
            continue;
        }
        z.fill(0.0);
        for &j in u {
            for (a, b) in z.iter_mut().zip(&q[j as usize * l..][..l]) {
                *a += b;
            }
        }
        for &j in u {
            for (a, b) in out[j as usize * l..][..l].iter_mut().zip(&z) {
                *a += w * b;
            }
        }
    }
    out
}

/// An orthonormal basis (thin QR's `Q`) of the columns of a row-major
/// `items × l` matrix, as a faer matrix.
fn orthonormal(y: &[f64], items: usize, l: usize) -> Mat<f64> {
    Mat::from_fn(items, l, |i, c| y[i * l + c])
        .qr()
        .compute_thin_Q()
}

fn row_major(m: &Mat<f64>) -> Vec<f64> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut out = Vec::with_capacity(r * c);
    for i in 0..r {
        out.extend((0..c).map(|j| m[(i, j)]));
    }
    out
}

impl Eigen {
    /// The rank-`rank` eigenpairs of the Gram matrix of `users` (each
    /// user's row weighted by `|u|^−user_norm`, as in DAN), from a random
    /// start drawn from `seed`.
    pub fn new(items: usize, users: &[Vec<u32>], user_norm: f64, rank: usize, seed: u64) -> Self {
        let rank = rank.min(items).max(1);
        let l = (rank + OVERSAMPLE).min(items);
        let weights: Vec<f64> = users
            .iter()
            .map(|u| user_weight(u.len(), user_norm))
            .collect();
        let mut diag = vec![0.0; items];
        let mut counts = vec![0.0; items];
        for (u, w) in users.iter().zip(&weights) {
            for &j in u {
                diag[j as usize] += w;
                counts[j as usize] += 1.0;
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let omega: Vec<f64> = (0..items * l)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let mut y = gram_times(users, &weights, &omega, items, l);
        drop(omega);
        for _ in 0..POWER_ITERATIONS {
            let q = row_major(&orthonormal(&y, items, l));
            y = gram_times(users, &weights, &q, items, l);
        }
        // Rayleigh–Ritz on the final basis: the eigenpairs of QᵀGQ.
        let q = orthonormal(&y, items, l);
        let gq = gram_times(users, &weights, &row_major(&q), items, l);
        let gq = Mat::from_fn(items, l, |i, c| gq[i * l + c]);
        let small = q.transpose() * &gq;
        let small = Mat::from_fn(l, l, |a, b| 0.5 * (small[(a, b)] + small[(b, a)]));
        let evd = small
            .self_adjoint_eigen(Side::Lower)
            .expect("a symmetric matrix has an eigendecomposition");
        // Ascending order: the leading ones are last.
        let order: Vec<usize> = (0..l).rev().take(rank).collect();
        let s: Vec<f64> = order
            .iter()
            .map(|&c| evd.S().column_vector()[c].max(0.0))
            .collect();
        let u = evd.U();
        let small_v = Mat::from_fn(l, rank, |a, c| u[(a, order[c])]);
        let v = &q * &small_v;
        let resid = (0..items)
            .map(|j| {
                let kept: f64 = (0..rank).map(|c| v[(j, c)] * v[(j, c)] * s[c]).sum();
                (diag[j] - kept).max(0.0)
            })
            .collect();
        Self {
            items,
            v,
            s,
            diag,
            resid,
            counts,
        }
    }

    /// The fit for EASE's `λ` (relative to the mean item degree, as in
    /// [`crate::ease::EaseParams`]) and EDLAE's dropout emphasis `p`.
    pub fn fit(&self, lambda: f64, dropout: f64) -> LowRankFit {
        let (n, k) = (self.items, self.s.len());
        let mean_count = self.counts.iter().sum::<f64>() / n.max(1) as f64;
        let mean_diag = self.diag.iter().sum::<f64>() / n.max(1) as f64;
        let scale = if mean_count > 0.0 {
            mean_diag / mean_count
        } else {
            1.0
        };
        let emphasis = dropout / (1.0 - dropout);
        let inv: Vec<f64> = (0..n)
            .map(|j| 1.0 / (lambda * scale + emphasis * self.diag[j] + self.resid[j]))
            .collect();
        let lv = Mat::from_fn(n, k, |j, c| inv[j] * self.v[(j, c)]);
        let mut a = self.v.transpose() * &lv;
        for c in 0..k {
            // A direction with no variance has an infinite S⁻¹: it drops out.
            a[(c, c)] += 1.0 / self.s[c].max(1e-12);
        }
        let core = a
            .llt(Side::Lower)
            .expect("S⁻¹ + VᵀΛ⁻¹V is positive definite")
            .inverse();
        let left = &lv * &core;
        let mut right = vec![0f32; k * n];
        let mut left_rm = vec![0f32; n * k];
        for j in 0..n {
            let p_jj = inv[j] - (0..k).map(|c| left[(j, c)] * lv[(j, c)]).sum::<f64>();
            for c in 0..k {
                left_rm[j * k + c] = left[(j, c)] as f32;
                right[c * n + j] = (lv[(j, c)] / p_jj) as f32;
            }
        }
        LowRankFit {
            items: n,
            rank: k,
            left: left_rm,
            right,
            counts: self.counts.clone(),
        }
    }
}

impl LowRankFit {
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `L` and `Rᵀ` (row-major, the layout of two ONNX MatMul right
    /// operands) with DAN's item normalisation `α`: `B_ji` scaled by
    /// `c_j^(1−α) / c_i^(1−α)`, which factors into `L`'s rows and `Rᵀ`'s
    /// columns.
    pub fn factors(&self, item_norm: f64) -> (Vec<f32>, Vec<f32>) {
        let (n, k) = (self.items, self.rank);
        let (mut left, mut right) = (self.left.clone(), self.right.clone());
        if item_norm != 1.0 {
            for j in 0..n {
                let c = self.counts[j];
                if c > 0.0 {
                    let up = c.powf(1.0 - item_norm) as f32;
                    for w in &mut left[j * k..(j + 1) * k] {
                        *w *= up;
                    }
                    for r in 0..k {
                        right[r * n + j] /= up;
                    }
                }
            }
        }
        (left, right)
    }

    /// Scores of every user (each a history of item indices) under the
    /// factors, row-major `users × items`.
    pub fn scores_of<'u>(
        left: &[f32],
        right: &[f32],
        items: usize,
        users: impl Iterator<Item = &'u [u32]>,
    ) -> Vec<f32> {
        let k = left.len() / items.max(1);
        let mut out = Vec::new();
        let mut z = vec![0f32; k];
        for h in users {
            z.fill(0.0);
            for &j in h {
                for (a, b) in z.iter_mut().zip(&left[j as usize * k..][..k]) {
                    *a += b;
                }
            }
            let start = out.len();
            out.resize(start + items, 0.0);
            let s = &mut out[start..];
            for (c, zc) in z.iter().enumerate() {
                for (o, r) in s.iter_mut().zip(&right[c * items..][..items]) {
                    *o += zc * r;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ease;

    /// Histories with a few co-occurring groups and a popular item.
    fn histories(users: usize, items: usize, seed: u64) -> Vec<Vec<u32>> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..users)
            .map(|_| {
                let group = rng.gen_range(0..items / 8);
                let mut h: Vec<u32> = (0..8)
                    .filter(|_| rng.gen_bool(0.6))
                    .map(|i| (group * 8 + i) as u32)
                    .collect();
                if rng.gen_bool(0.5) {
                    h.push(rng.gen_range(0..items) as u32);
                }
                h.sort_unstable();
                h.dedup();
                h
            })
            .collect()
    }

    /// At full rank the factors are EASE itself: every off-diagonal weight
    /// equals the dense fit's (the residual diagonal is zero then).
    #[test]
    fn at_full_rank_the_factors_are_the_dense_fit() {
        let (n, users) = (24, histories(400, 24, 1));
        for (lambda, dropout, user_norm, item_norm) in [(5.0, 0.0, 0.0, 1.0), (20.0, 0.3, 0.5, 0.8)]
        {
            let dense = ease::fit_with(
                n,
                &users,
                &ease::EaseParams {
                    lambda,
                    dropout,
                    user_norm,
                    item_norm,
                },
            );
            let (l, r) = Eigen::new(n, &users, user_norm, n, 7)
                .fit(lambda, dropout)
                .factors(item_norm);
            for j in 0..n {
                for i in (0..n).filter(|i| *i != j) {
                    let lr: f32 = (0..n).map(|c| l[j * n + c] * r[c * n + i]).sum();
                    let d = dense[j * n + i];
                    assert!(
                        (lr - d).abs() < 1e-4 + 1e-3 * d.abs(),
                        "({j},{i}): {lr} vs {d}"
                    );
                }
            }
        }
    }

    /// At a rank well below the catalogue, the items that go together still
    /// recommend each other: a user with part of a group gets the rest of
    /// it ahead of every other item.
    #[test]
    fn a_low_rank_fit_keeps_the_groups() {
        let (n, users) = (400, histories(6000, 400, 2));
        let fit = Eigen::new(n, &users, 0.0, 64, 3).fit(10.0, 0.2);
        let (l, r) = fit.factors(1.0);
        let history: &[u32] = &[80, 81, 82];
        let s = LowRankFit::scores_of(&l, &r, n, std::iter::once(history));
        let mut order: Vec<usize> = (0..n).filter(|i| !history.contains(&(*i as u32))).collect();
        order.sort_by(|a, b| s[*b].total_cmp(&s[*a]));
        let top: Vec<usize> = order[..5].to_vec();
        assert!(top.iter().all(|i| (83..88).contains(i)), "{top:?}");
    }

    /// The same seed gives the same fit; the scores do not depend on the
    /// order the users come in beyond float rounding.
    #[test]
    fn the_fit_is_deterministic() {
        let (n, users) = (120, histories(800, 120, 4));
        let a = Eigen::new(n, &users, 0.25, 16, 9)
            .fit(30.0, 0.1)
            .factors(0.9);
        let b = Eigen::new(n, &users, 0.25, 16, 9)
            .fit(30.0, 0.1)
            .factors(0.9);
        assert_eq!(a, b);
    }
}
