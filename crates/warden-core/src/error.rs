//! Errors of the core: only configuration and spec validation can fail here; everything else is
//! a total function of its inputs.

use std::borrow::Cow;

/// A setting or spec field that can never work. `field` names it the way the user wrote it
/// (dotted path), so the message can point at the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `phi.threshold`.
    pub field: Cow<'static, str>,
    /// What is wrong with it, and where useful what would be right.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix.` put before the field name.
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        ConfigError {
            field: format!("{prefix}.{}", self.field).into(),
            reason: self.reason,
        }
    }
}

/// Check that `value` lies in `lo..=hi`.
pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
) -> Result<(), ConfigError> {
    if !(value.is_finite() && value >= lo && value <= hi) {
        return Err(ConfigError::new(
            field,
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(())
}
