//! Export trained networks as ONNX graphs: one `features` input, one output per
//! head, each head a chain of MatMul → Add → activation (opset 13). Dense graphs
//! like these run in microseconds in tract and in ONNX Runtime alike.

use crate::nn::{Activation, Mlp};
use crate::train::ModelArtifact;
use ml_backend::meta::{Evaluation, META_FORMAT};
use ml_backend::{BackendError, InferenceBackend, ModelMeta};
use prost::Message;
use tract_onnx::pb;

const FLOAT: i32 = 1;

fn value_info(name: &str, width: usize) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(Dim::DimParam("N".into())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(Dim::DimValue(width as i64)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor(name: String, dims: Vec<i64>, data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims,
        data_type: FLOAT,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: Vec<String>, output: String) -> pb::NodeProto {
    pb::NodeProto {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

fn add_head(g: &mut pb::GraphProto, head: &str, net: &Mlp) {
    let mut x = "features".to_string();
    let n = net.layers.len();
    for (i, l) in net.layers.iter().enumerate() {
        let p = format!("{head}_l{i}");
        g.initializer.push(tensor(
            format!("{p}_w"),
            vec![l.input as i64, l.output as i64],
            &l.weights,
        ));
        g.initializer
            .push(tensor(format!("{p}_b"), vec![l.output as i64], &l.bias));
        g.node
            .push(node("MatMul", vec![x, format!("{p}_w")], format!("{p}_mm")));
        let last = i + 1 == n;
        let add_out = if last && l.activation == Activation::Identity {
            head.to_string()
        } else {
            format!("{p}_z")
        };
        g.node.push(node(
            "Add",
            vec![format!("{p}_mm"), format!("{p}_b")],
            add_out.clone(),
        ));
        x = match l.activation {
            Activation::Identity => add_out,
            act => {
                let out = if last {
                    head.to_string()
                } else {
                    format!("{p}_a")
                };
                let op = if act == Activation::Relu {
                    "Relu"
                } else {
                    "Sigmoid"
                };
                g.node.push(node(op, vec![add_out], out.clone()));
                out
            }
        };
    }
    g.output.push(value_info(head, net.outputs()));
}

/// The ONNX bytes of a trained model.
pub fn to_onnx(a: &ModelArtifact) -> Vec<u8> {
    let inputs = a.heads[0].inputs();
    let mut g = pb::GraphProto {
        name: a.kind.as_str().into(),
        input: vec![value_info("features", inputs)],
        ..Default::default()
    };
    for ((name, _), net) in a.kind.outputs().iter().zip(&a.heads) {
        add_head(&mut g, name, net);
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "ml-service".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(g),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Largest difference allowed between the trainer's and the served model's outputs.
pub const PARITY_TOLERANCE: f32 = 1e-4;

/// `model.json` for a freshly trained artifact.
pub fn meta_of(a: &ModelArtifact, version: u64) -> ModelMeta {
    ModelMeta {
        format: META_FORMAT,
        model: a.kind,
        version,
        created_at: chrono::Utc::now(),
        producer: format!("ml-service {} trainer", env!("CARGO_PKG_VERSION")),
        signature: ModelMeta::signature_for(a.kind, &a.feature_names),
        features: a.feature_names.clone(),
        evaluation: Some(Evaluation {
            metrics: a.metrics.clone(),
            baseline: a.baseline_name.clone(),
            baseline_metrics: a.baseline.clone(),
            train_rows: a.train_rows,
            holdout_rows: a.holdout_rows,
        }),
        training_window: Some(a.window.clone()),
        params: a.params.clone(),
        quantization: None,
    }
}

/// Check that an exported graph, loaded by `backend`, computes what the trainer
/// computes on the artifact's reference rows.
pub fn check_parity(
    art: &ModelArtifact,
    onnx: &[u8],
    meta: &ModelMeta,
    backend: &dyn InferenceBackend,
) -> Result<(), BackendError> {
    let model = backend.load(onnx, meta)?;
    let rows = art.reference_inputs.len();
    let out = model.run(&art.reference_inputs.concat(), rows)?;
    for (r, x) in art.reference_inputs.iter().enumerate() {
        for (h, expected) in art.predict(x).iter().enumerate() {
            let w = expected.len();
            for (g, e) in out[h][r * w..(r + 1) * w].iter().zip(expected) {
                if (g - e).abs() > PARITY_TOLERANCE {
                    return Err(BackendError::InvalidModel {
                        model: art.kind.to_string(),
                        reason: format!(
                            "served output {g} differs from the trainer's {e} (row {r}, output {h})"
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
