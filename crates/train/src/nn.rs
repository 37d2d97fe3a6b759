//! Dense networks and their training: the model family every trainer here uses.
//!
//! A network is a chain of dense layers (`y = act(x·W + b)`); the last layer has a
//! sigmoid, so outputs are probabilities. Training minimises (weighted) log-loss
//! with Adam on mini-batches. Inputs are standardised during training and the
//! standardisation is folded into the first layer afterwards, so the exported
//! graph is plain MatMul/Add/activation with nothing else to apply at serving.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A layer's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Identity,
    Relu,
    Sigmoid,
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// One dense layer. `weights` is `input × output`, row-major (`w[i * output + j]`),
/// the layout of an ONNX MatMul's right operand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    pub input: usize,
    pub output: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub activation: Activation,
}

impl Dense {
    fn forward_into(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&self.bias);
        for (i, xi) in x.iter().enumerate() {
            if *xi == 0.0 {
                continue;
            }
            let row = &self.weights[i * self.output..(i + 1) * self.output];
            for (o, w) in out.iter_mut().zip(row) {
                *o += xi * w;
            }
        }
        for o in out.iter_mut() {
            *o = self.activation.apply(*o);
        }
    }
}

/// A feed-forward network: hidden layers with ReLU, a sigmoid output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    pub layers: Vec<Dense>,
}

impl Mlp {
    /// A network of the given layer sizes (`[inputs, hidden…, outputs]`), with
    /// He-initialised weights.
    pub fn new(sizes: &[usize], seed: u64) -> Self {
        assert!(sizes.len() >= 2, "a network needs inputs and outputs");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = sizes.len() - 1;
        let layers = (0..n)
            .map(|l| {
                let (i, o) = (sizes[l], sizes[l + 1]);
                let scale = (2.0 / i as f32).sqrt();
                Dense {
                    input: i,
                    output: o,
                    weights: (0..i * o)
                        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale * 0.5)
                        .collect(),
                    bias: vec![0.0; o],
                    activation: if l + 1 == n {
                        Activation::Sigmoid
                    } else {
                        Activation::Relu
                    },
                }
            })
            .collect();
        Self { layers }
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].input
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map(|l| l.output).unwrap_or(0)
    }

    /// Outputs for one input row.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut a = x.to_vec();
        let mut b = Vec::new();
        for l in &self.layers {
            l.forward_into(&a, &mut b);
            std::mem::swap(&mut a, &mut b);
        }
        a
    }

    /// The first output for each row of a row-major matrix with `inputs()` columns.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        x.chunks_exact(self.inputs())
            .map(|r| self.forward(r)[0])
            .collect()
    }

    /// Fold an input standardisation `(x − mean) / std` into the first layer, so
    /// the network takes raw features.
    fn fold_standardisation(&mut self, mean: &[f32], std: &[f32]) {
        let l = &mut self.layers[0];
        for i in 0..l.input {
            for j in 0..l.output {
                let w = l.weights[i * l.output + j] / std[i];
                l.weights[i * l.output + j] = w;
                l.bias[j] -= mean[i] * w;
            }
        }
    }
}

/// Hyper-parameters of [`train_binary`].
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub l2: f32,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: vec![16],
            epochs: 12,
            batch_size: 256,
            learning_rate: 0.01,
            l2: 1e-5,
            seed: 1,
        }
    }
}

/// Column means and standard deviations (std floored so constant columns pass).
pub fn column_stats(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = (x.len() / cols).max(1) as f64;
    let mut mean = vec![0f64; cols];
    let mut sq = vec![0f64; cols];
    for r in x.chunks_exact(cols) {
        for (j, v) in r.iter().enumerate() {
            mean[j] += *v as f64;
            sq[j] += (*v as f64) * (*v as f64);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / rows) as f32).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / rows - (*m as f64) * (*m as f64)).max(0.0).sqrt() as f32).max(MIN_STD))
        .collect();
    (mean, std)
}

/// Train a network with one sigmoid output on binary (or soft) labels `y` by
/// minimising weighted log-loss. `x` is row-major with `cols` columns.
pub fn train_binary(x: &[f32], cols: usize, y: &[f32], cfg: &TrainConfig) -> Mlp {
    let rows = y.len();
    assert_eq!(
        x.len(),
        rows * cols,
        "x and y disagree on the number of rows"
    );
    let (mean, std) = column_stats(x, cols);
    let xs: Vec<f32> = x
        .chunks_exact(cols)
        .flat_map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| (v - mean[j]) / std[j])
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sizes = vec![cols];
    sizes.extend(&cfg.hidden);
    sizes.push(1);
    let mut net = Mlp::new(&sizes, cfg.seed);
    // The output bias starts at the base rate's logit, so early steps learn
    // structure rather than the mean.
    let base = (y.iter().sum::<f32>() / rows.max(1) as f32).clamp(1e-4, 1.0 - 1e-4);
    if let Some(last) = net.layers.last_mut() {
        last.bias[0] = (base / (1.0 - base)).ln();
    }
    let mut adam = Adam::new(&net, cfg.learning_rate);
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut grads = zero_grads(&net);
    let mut acts: Vec<Vec<f32>> = Vec::new();
    let mut deltas: Vec<Vec<f32>> = Vec::new();
    for _epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size.max(1)) {
            for g in grads.iter_mut() {
                g.0.iter_mut().for_each(|v| *v = 0.0);
                g.1.iter_mut().for_each(|v| *v = 0.0);
            }
            for &r in batch {
                let xr = &xs[r * cols..(r + 1) * cols];
                backprop(&net, xr, y[r], &mut grads, &mut acts, &mut deltas);
            }
            let scale = 1.0 / batch.len() as f32;
            adam.step(&mut net, &grads, scale, cfg.l2);
        }
    }
    // A column that never varied in training taught the network nothing: make
    // sure serving-time values there cannot move the output.
    let first = &mut net.layers[0];
    for (i, s) in std.iter().enumerate() {
        if *s <= MIN_STD {
            first.weights[i * first.output..(i + 1) * first.output].fill(0.0);
        }
    }
    net.fold_standardisation(&mean, &std);
    net
}

/// Standard deviations are floored here; a column at the floor was constant.
const MIN_STD: f32 = 1e-3;

type Grads = Vec<(Vec<f32>, Vec<f32>)>;

fn zero_grads(net: &Mlp) -> Grads {
    net.layers
        .iter()
        .map(|l| (vec![0.0; l.weights.len()], vec![0.0; l.bias.len()]))
        .collect()
}

/// Accumulate the log-loss gradient of one example into `grads`.
fn backprop(
    net: &Mlp,
    x: &[f32],
    y: f32,
    grads: &mut Grads,
    acts: &mut Vec<Vec<f32>>,
    deltas: &mut Vec<Vec<f32>>,
) {
    let n = net.layers.len();
    acts.resize(n + 1, Vec::new());
    deltas.resize(n, Vec::new());
    acts[0].clear();
    acts[0].extend_from_slice(x);
    for (l, layer) in net.layers.iter().enumerate() {
        let (before, after) = acts.split_at_mut(l + 1);
        layer.forward_into(&before[l], &mut after[0]);
    }
    // Sigmoid output with log-loss: dL/dz = p − y.
    deltas[n - 1].clear();
    deltas[n - 1].push(acts[n][0] - y);
    for l in (0..n).rev() {
        let layer = &net.layers[l];
        let (gw, gb) = &mut grads[l];
        let input = &acts[l];
        let delta = std::mem::take(&mut deltas[l]);
        for (j, d) in delta.iter().enumerate() {
            gb[j] += d;
        }
        for (i, xi) in input.iter().enumerate() {
            if *xi == 0.0 {
                continue;
            }
            let row = &mut gw[i * layer.output..(i + 1) * layer.output];
            for (g, d) in row.iter_mut().zip(&delta) {
                *g += xi * d;
            }
        }
        if l > 0 {
            let prev = &net.layers[l - 1];
            let mut pd = vec![0f32; layer.input];
            for (i, p) in pd.iter_mut().enumerate() {
                let row = &layer.weights[i * layer.output..(i + 1) * layer.output];
                let s: f32 = row.iter().zip(&delta).map(|(w, d)| w * d).sum();
                let a = input[i];
                *p = match prev.activation {
                    Activation::Relu => {
                        if a > 0.0 {
                            s
                        } else {
                            0.0
                        }
                    }
                    Activation::Sigmoid => s * a * (1.0 - a),
                    Activation::Identity => s,
                };
            }
            deltas[l - 1] = pd;
        }
        deltas[l] = delta;
    }
}

struct Adam {
    lr: f32,
    t: i32,
    m: Grads,
    v: Grads,
}

impl Adam {
    fn new(net: &Mlp, lr: f32) -> Self {
        Self {
            lr,
            t: 0,
            m: zero_grads(net),
            v: zero_grads(net),
        }
    }

    fn step(&mut self, net: &mut Mlp, grads: &Grads, scale: f32, l2: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        for (l, layer) in net.layers.iter_mut().enumerate() {
            let upd = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32| {
                for k in 0..p.len() {
                    let gk = g[k] * scale + decay * p[k];
                    m[k] = B1 * m[k] + (1.0 - B1) * gk;
                    v[k] = B2 * v[k] + (1.0 - B2) * gk * gk;
                    p[k] -= self.lr * (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8);
                }
            };
            upd(
                &mut layer.weights,
                &grads[l].0,
                &mut self.m[l].0,
                &mut self.v[l].0,
                l2,
            );
            upd(
                &mut layer.bias,
                &grads[l].1,
                &mut self.m[l].1,
                &mut self.v[l].1,
                0.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_xor_with_a_hidden_layer() {
        // XOR is not linearly separable: only a working hidden layer and backprop fit it.
        let x = [0., 0., 0., 1., 1., 0., 1., 1.].repeat(64);
        let y = [0., 1., 1., 0.].repeat(64);
        let cfg = TrainConfig {
            hidden: vec![8],
            epochs: 300,
            batch_size: 16,
            learning_rate: 0.03,
            ..Default::default()
        };
        let net = train_binary(&x, 2, &y, &cfg);
        let p = net.predict(&[0., 0., 0., 1., 1., 0., 1., 1.]);
        assert!(
            p[0] < 0.2 && p[3] < 0.2 && p[1] > 0.8 && p[2] > 0.8,
            "{p:?}"
        );
    }

    #[test]
    fn folded_standardisation_matches_standardised_inputs() {
        let mut net = Mlp::new(&[3, 4, 1], 3);
        let plain = net.clone();
        let (mean, std) = (vec![1.0, -2.0, 5.0], vec![2.0, 0.5, 10.0]);
        net.fold_standardisation(&mean, &std);
        let x = [3.0, 1.0, -5.0];
        let xs: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[i]) / std[i])
            .collect();
        assert!((net.forward(&x)[0] - plain.forward(&xs)[0]).abs() < 1e-5);
    }
}
