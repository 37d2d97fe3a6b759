//! INT8 dynamic quantization of an ONNX graph, the scheme of ONNX Runtime's
//! `quantize_dynamic`: every `MatMul` whose weights are a constant float matrix
//! becomes
//!
//! ```text
//! x ─ DynamicQuantizeLinear ─ x_q (uint8), x_scale, x_zero
//! MatMulInteger(x_q, W_q int8, x_zero, 0) ─ Cast(float) ─ Mul(x_scale · w_scale[col]) ─ y
//! ```
//!
//! with the weights stored as int8, symmetric, one scale per output column.
//! Activations are quantized per call over the whole input tensor, so a row's
//! result depends slightly on the other rows of its batch (as with ONNX
//! Runtime's quantizer); biases and the rest of the graph stay float.

use crate::BackendError;
use prost::Message;
use std::collections::HashMap;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT8: i32 = 3;

/// What quantization changed.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSummary {
    /// MatMuls turned into integer MatMuls.
    pub matmuls: usize,
    /// Float weights replaced by int8 ones.
    pub weights: usize,
}

fn invalid(reason: impl Into<String>) -> BackendError {
    BackendError::InvalidModel {
        model: "quantize".into(),
        reason: reason.into(),
    }
}

/// The values of a float initializer, from `float_data` or `raw_data`.
fn float_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: format!("{op}_{}", outputs[0]),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// Symmetric per-column int8 weights of a `[rows, cols]` matrix and their scales.
pub fn quantize_columns(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0f32; cols];
    for r in 0..rows {
        for c in 0..cols {
            scales[c] = scales[c].max(w[r * cols + c].abs());
        }
    }
    for s in &mut scales {
        // An all-zero column keeps scale 1 so nothing divides by zero.
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[i % cols]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Quantize an ONNX model's constant-weight MatMuls to INT8 (dynamic).
pub fn quantize_dynamic(onnx: &[u8]) -> Result<(Vec<u8>, QuantizeSummary), BackendError> {
    let mut model =
        pb::ModelProto::decode(onnx).map_err(|e| invalid(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| invalid("no graph"))?;
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    let mut nodes = Vec::with_capacity(graph.node.len() * 3);
    let mut new_inits = vec![];
    let mut quantized_inputs: HashMap<String, [String; 3]> = HashMap::new();
    let mut replaced: Vec<String> = vec![];
    let mut summary = QuantizeSummary {
        matmuls: 0,
        weights: 0,
    };
    for n in std::mem::take(&mut graph.node) {
        let weights = (n.op_type == "MatMul" && n.input.len() == 2)
            .then(|| inits.get(&n.input[1]))
            .flatten()
            .map(|i| &graph.initializer[*i])
            .filter(|t| t.dims.len() == 2)
            .and_then(|t| Some((t, float_values(t)?)));
        let Some((w, values)) = weights else {
            nodes.push(n);
            continue;
        };
        let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
        if values.len() != rows * cols {
            return Err(invalid(format!(
                "initializer {} has the wrong size",
                w.name
            )));
        }
        let (q, scales) = quantize_columns(&values, rows, cols);
        let out = &n.output[0];
        let wq = format!("{}_int8", w.name);
        let ws = format!("{}_scale", w.name);
        let wz = format!("{}_zero", w.name);
        new_inits.push(pb::TensorProto {
            name: wq.clone(),
            dims: w.dims.clone(),
            data_type: INT8,
            raw_data: q.iter().map(|v| *v as u8).collect(),
            ..Default::default()
        });
        new_inits.push(pb::TensorProto {
            name: ws.clone(),
            dims: vec![cols as i64],
            data_type: FLOAT,
            float_data: scales,
            ..Default::default()
        });
        new_inits.push(pb::TensorProto {
            name: wz.clone(),
            dims: vec![],
            data_type: INT8,
            raw_data: vec![0],
            ..Default::default()
        });
        if uses.get(&w.name) == Some(&1) {
            replaced.push(w.name.clone());
        }
        // One DynamicQuantizeLinear per distinct activation, shared by the heads.
        let x = &n.input[0];
        let [xq, xs, xz] = quantized_inputs
            .entry(x.clone())
            .or_insert_with(|| {
                let names = [
                    format!("{x}_q"),
                    format!("{x}_qscale"),
                    format!("{x}_qzero"),
                ];
                nodes.push(node(
                    "DynamicQuantizeLinear",
                    &[x],
                    &[&names[0], &names[1], &names[2]],
                    vec![],
                ));
                names
            })
            .clone();
        let acc = format!("{out}_int32");
        let accf = format!("{out}_acc");
        let scale = format!("{out}_scale");
        nodes.push(node(
            "MatMulInteger",
            &[&xq, &wq, &xz, &wz],
            &[&acc],
            vec![],
        ));
        nodes.push(node(
            "Cast",
            &[&acc],
            &[&accf],
            vec![pb::AttributeProto {
                name: "to".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: FLOAT as i64,
                ..Default::default()
            }],
        ));
        nodes.push(node("Mul", &[&xs, &ws], &[&scale], vec![]));
        nodes.push(node("Mul", &[&accf, &scale], &[out], vec![]));
        summary.matmuls += 1;
    }
    graph.node = nodes;
    graph.initializer.retain(|t| !replaced.contains(&t.name));
    summary.weights = replaced.len();
    graph.initializer.extend(new_inits);
    if summary.matmuls == 0 {
        return Err(invalid("no MatMul with constant float weights to quantize"));
    }
    model.producer_name = format!("{} + ml-service int8", model.producer_name);
    Ok((model.encode_to_vec(), summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect();
        let (q, s) = quantize_columns(&w, 4, 3);
        for (i, v) in w.iter().enumerate() {
            let back = q[i] as f32 * s[i % 3];
            assert!(
                (back - v).abs() <= s[i % 3] / 2.0 + 1e-6,
                "{v} came back as {back}"
            );
        }
        // The largest magnitude of each column maps to ±127.
        for c in 0..3 {
            let m = (0..4).map(|r| q[r * 3 + c].unsigned_abs()).max().unwrap();
            assert_eq!(m, 127);
        }
    }

    #[test]
    fn an_all_zero_column_does_not_divide_by_zero() {
        let (q, s) = quantize_columns(&[0.0, 1.0, 0.0, -2.0], 2, 2);
        assert_eq!(q[0], 0);
        assert_eq!(s[0], 1.0);
        assert!(s.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(quantize_dynamic(b"not a model").is_err());
    }
}
