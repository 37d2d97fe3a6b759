//! The domain layer's error type.

/// What can go wrong in domain code. Each variant names the offending input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoreError {
    /// A value outside its allowed set or range (the field and why).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl CoreError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
