//! Whether a loaded model is affine in its input, and if so the effect of each
//! input column on its first output: `f(x) = f(0) + Σ_j x_j · effect_j`.
//!
//! The recommendation model the service trains is one linear graph, and its
//! reasons need each history destination's share of every score. For an
//! affine model that share is the destination's effect, read from a table
//! made once at load, instead of one more model row per destination per
//! request (which was most of that endpoint's inference); likewise its answer
//! on the empty row (popularity alone) is the table's base, not a row of
//! every call. A model that is not affine (a team's own network) gets no
//! table, and the service measures the shares with those rows as before.

use crate::{BackendError, LoadedModel};

/// The effects of every input column of an affine model on its first output.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// Width of the input.
    pub inputs: usize,
    /// Width of the first output.
    pub outputs: usize,
    /// `f(0)`: the first output on the all-zero row.
    pub base: Vec<f32>,
    /// Row-major `[outputs, inputs]`: entry `(o, j)` is `f(e_j)[o] − f(0)[o]`.
    /// By output, because a request reads the effects of a few inputs (its
    /// history destinations) on each output it answers: one short stretch
    /// of memory per answer rather than a cache line per input.
    pub by_output: Vec<f32>,
}

impl Effects {
    /// The effect of every input column on output `o`.
    pub fn on(&self, o: usize) -> &[f32] {
        &self.by_output[o * self.inputs..(o + 1) * self.inputs]
    }
}

/// Rows of the affinity check.
const CHECK_ROWS: usize = 16;

/// Largest difference, relative to the outputs' scale, between the model and
/// its affine reconstruction that still counts as affine: float rounding of
/// sums over a few hundred columns stays orders of magnitude below it, and
/// any real non-linearity (a ReLU, a sigmoid) lands far above it.
const TOLERANCE: f32 = 1e-4;

/// Largest input width probed: the probe's rows and the table both hold
/// about `inputs²` floats (600 MB here, a dense recommender of ~12,000
/// destinations). A wider model (the low-rank recommender of a large
/// catalogue) gets no table; its reasons are measured with model rows.
pub const MAX_PROBED_INPUTS: usize = 12_300;

/// Probe `model` (`inputs` columns wide): run the all-zero row and each unit
/// row, then check the affine reconstruction on rows of mixed inputs.
/// `Ok(None)`: the model is not affine, or wider than [`MAX_PROBED_INPUTS`].
pub fn probe(model: &dyn LoadedModel, inputs: usize) -> Result<Option<Effects>, BackendError> {
    if inputs > MAX_PROBED_INPUTS {
        return Ok(None);
    }
    let rows = inputs + 1;
    let mut x = vec![0f32; rows * inputs];
    for j in 0..inputs {
        x[(j + 1) * inputs + j] = 1.0;
    }
    let out = model.run(&x, rows)?;
    let Some(first) = out.first() else {
        return Ok(None);
    };
    let outputs = first.len() / rows;
    let base = &first[..outputs];
    let mut table = Vec::with_capacity(inputs * outputs);
    for j in 0..inputs {
        let unit = &first[(j + 1) * outputs..(j + 2) * outputs];
        table.extend(unit.iter().zip(base).map(|(u, b)| u - b));
    }

    // Mixed rows: some columns at 1, others at fractions, most at 0, as the
    // service's rows are (a handful of history destinations, a profile).
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut check = vec![0f32; CHECK_ROWS * inputs];
    for v in check.iter_mut() {
        let r = next();
        *v = match r % 8 {
            0 => 1.0,
            1 => (r >> 8) as f32 / (1u64 << 56) as f32,
            _ => 0.0,
        };
    }
    let got = model.run(&check, CHECK_ROWS)?;
    let Some(got) = got.first() else {
        return Ok(None);
    };
    let scale = got.iter().chain(first).fold(1f32, |m, v| m.max(v.abs()));
    for r in 0..CHECK_ROWS {
        let row = &check[r * inputs..(r + 1) * inputs];
        let mut predicted = base.to_vec();
        for (j, &xj) in row.iter().enumerate() {
            if xj != 0.0 {
                for (p, e) in predicted
                    .iter_mut()
                    .zip(&table[j * outputs..(j + 1) * outputs])
                {
                    *p += xj * e;
                }
            }
        }
        let actual = &got[r * outputs..(r + 1) * outputs];
        let off = predicted
            .iter()
            .zip(actual)
            .fold(0f32, |m, (p, a)| m.max((p - a).abs()));
        if !off.is_finite() || off > TOLERANCE * scale {
            return Ok(None);
        }
    }
    let by_output = (0..outputs)
        .flat_map(|o| (0..inputs).map(move |j| (o, j)))
        .map(|(o, j)| table[j * outputs + o])
        .collect();
    Ok(Some(Effects {
        inputs,
        outputs,
        base: base.to_vec(),
        by_output,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outputs;

    /// `y = W x + b`, optionally through a ReLU.
    #[derive(Debug)]
    struct Dense {
        w: Vec<f32>,
        b: Vec<f32>,
        relu: bool,
    }

    impl LoadedModel for Dense {
        fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
            let n_in = input.len() / rows;
            let n_out = self.b.len();
            let mut y = Vec::with_capacity(rows * n_out);
            for r in 0..rows {
                for o in 0..n_out {
                    let mut s = self.b[o];
                    for j in 0..n_in {
                        s += self.w[j * n_out + o] * input[r * n_in + j];
                    }
                    y.push(if self.relu { s.max(0.0) } else { s });
                }
            }
            Ok(vec![y])
        }
    }

    fn dense(relu: bool) -> Dense {
        let w = (0..12 * 5)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        Dense {
            w,
            b: vec![0.5, -1.0, 0.0, 2.0, -0.25],
            relu,
        }
    }

    #[test]
    fn an_affine_model_gives_its_weights() {
        let m = dense(false);
        let e = probe(&m, 12).unwrap().expect("affine");
        assert_eq!((e.inputs, e.outputs), (12, 5));
        for j in 0..12 {
            for o in 0..5 {
                let (got, want) = (e.on(o)[j], m.w[j * 5 + o]);
                assert!((got - want).abs() < 1e-5, "{got} vs {want}");
            }
        }
        assert_eq!(e.base, m.b);
    }

    #[test]
    fn a_non_linear_model_gives_none() {
        assert_eq!(probe(&dense(true), 12).unwrap(), None);
    }

    /// A model too wide for a table is not run at all (its probe rows
    /// alone would take `inputs²` floats).
    #[test]
    fn a_model_too_wide_for_a_table_is_not_probed() {
        #[derive(Debug)]
        struct Unrunnable;
        impl LoadedModel for Unrunnable {
            fn run(&self, _: &[f32], _: usize) -> Result<Outputs, BackendError> {
                panic!("probed a model wider than MAX_PROBED_INPUTS");
            }
        }
        assert_eq!(probe(&Unrunnable, MAX_PROBED_INPUTS + 1).unwrap(), None);
    }
}
