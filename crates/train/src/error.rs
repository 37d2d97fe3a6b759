//! The training layer's error type.

/// What can go wrong while training or evaluating. Each variant names the
/// offending input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    /// A value outside its allowed set or range (the field and why).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Training could not proceed (for example, too little data in a split).
    #[error("training failed: {0}")]
    Training(String),
    /// A model's parameters do not fit the features they are applied to.
    #[error("model mismatch: {0}")]
    ModelMismatch(String),
}

impl TrainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
