//! Whether a loaded model answers each row of a call on its own: the same
//! outputs, to the bit, whatever other rows share the call and in whatever
//! order. A float network run by tract or ONNX Runtime does; a dynamically
//! quantized one does not (its activations share one scale per call).
//!
//! The service runs the notification model only on the hours a plan weighs
//! (often a dozen of the week's 168) when the model is row-independent, so
//! the answer is the one all 168 rows would give; otherwise it runs all 168
//! as before. The check is made once, at load.

use crate::{BackendError, LoadedModel};

/// Probe `model` (`inputs` columns wide) with `rows` rows of varied inputs in
/// [0, 1): all at once, then single rows, a block from an odd offset and the
/// rows in reverse order. `Ok(false)` when any output differs in any bit.
pub fn independent(
    model: &dyn LoadedModel,
    inputs: usize,
    rows: usize,
) -> Result<bool, BackendError> {
    let rows = rows.max(2);
    // A deterministic spread of values, different in every row and column.
    let x: Vec<f32> = (0..rows * inputs)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1_000) as f32 / 1_000.0)
        .collect();
    let all = model.run(&x, rows)?;
    let bits = |o: &crate::Outputs, rows: usize, r: usize| -> Vec<Vec<u32>> {
        o.iter()
            .map(|v| {
                let w = v.len() / rows;
                v[r * w..(r + 1) * w].iter().map(|f| f.to_bits()).collect()
            })
            .collect()
    };
    let row_of = |r: usize| &x[r * inputs..(r + 1) * inputs];
    let same = |subset: &[usize]| -> Result<bool, BackendError> {
        let input: Vec<f32> = subset.iter().flat_map(|&r| row_of(r)).copied().collect();
        let out = model.run(&input, subset.len())?;
        Ok(subset
            .iter()
            .enumerate()
            .all(|(i, &r)| bits(&out, subset.len(), i) == bits(&all, rows, r)))
    };
    let block: Vec<usize> = (rows / 3..rows).take(13).collect();
    let reversed: Vec<usize> = (0..rows).rev().collect();
    for subset in [vec![0], vec![rows / 2], vec![rows - 1], block, reversed] {
        if !same(&subset)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outputs;

    /// Each row's sum, times `scale` of the whole call when `shared`: rows of
    /// one call then depend on each other, as under dynamic quantization.
    #[derive(Debug)]
    struct RowSum {
        shared: bool,
    }

    impl LoadedModel for RowSum {
        fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
            let w = input.len() / rows;
            let scale = if self.shared {
                input.iter().fold(0f32, |m, v| m.max(v.abs())) + 1.0
            } else {
                1.0
            };
            Ok(vec![input
                .chunks(w)
                .map(|r| r.iter().sum::<f32>() * scale)
                .collect()])
        }
    }

    #[test]
    fn rows_answered_on_their_own_are_independent() {
        assert!(independent(&RowSum { shared: false }, 10, 168).unwrap());
    }

    #[test]
    fn rows_that_share_a_scale_are_not() {
        assert!(!independent(&RowSum { shared: true }, 10, 168).unwrap());
    }
}
