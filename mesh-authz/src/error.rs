//! The crate's errors: [`Error`] for values parsed outside a policy document (a `paths`
//! template, a path normalization mode, a JWKS) and [`FieldError`] for a problem at a field of
//! a policy-like spec. Layer 0: depends on nothing else in the crate.

/// A value this crate cannot use. `Display` is the reason shown to users (config errors and
/// logs), so the texts are part of the interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `paths` template with `{**}` before its last segment.
    #[error("{path:?}: `{{**}}` must be the last segment")]
    TemplateRestNotLast {
        /// The `paths` value.
        path: String,
    },
    /// A `paths` template segment mixing `{`/`*` with literal text.
    #[error("{path:?}: a template segment is `{{*}}`, `{{**}}` or literal")]
    TemplateSegment {
        /// The `paths` value.
        path: String,
    },
    /// An unknown `pathNormalization.normalization` mode.
    #[error("{mode:?}: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")]
    PathNormalization {
        /// The mode given.
        mode: String,
    },
    /// A JWKS document that is not JSON of the form `{"keys": [...]}`.
    #[error("not a JWKS: {source}")]
    JwksFormat {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A JWKS without a key usable for signature verification.
    #[error("no usable key in the JWKS ({skipped} skipped)")]
    JwksNoUsableKey {
        /// Keys skipped (unsupported type, `use: enc`, malformed).
        skipped: usize,
    },
}

/// A problem in a policy spec: the field path (from `spec`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path such as `spec.rules[0].from[1].source.ipBlocks[2]`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}
