//! The crate's error type.

/// Telemetry errors. `Display` is what the admin endpoints answer with, so the texts are part
/// of the interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A log filter that does not parse (tracing `EnvFilter` syntax).
    #[error("{source}")]
    LogFilter {
        /// The filter given.
        filter: String,
        /// Why it does not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// Another subscriber was installed first: this process's log filter cannot be changed.
    #[error("logging is not controlled by this process")]
    LogNotControlled,
    /// The subscriber holding the filter is gone.
    #[error("{0}")]
    LogReload(#[from] tracing_subscriber::reload::Error),
}
