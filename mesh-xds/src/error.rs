//! The crate's error type: why a Delta ADS stream could not be opened or ended badly.
//!
//! The client never gives up on these (it reconnects with backoff); they reach the caller
//! through [`Status::last_error`](crate::Status::last_error) and the logs.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the Delta ADS client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bearer token file could not be read.
    #[error("token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bearer token cannot be sent as an HTTP header value.
    #[error("token file {}: not a header value", path.display())]
    BadToken {
        /// The file.
        path: PathBuf,
    },
    /// The control plane did not answer a new stream in time (it may have accepted the
    /// connection and gone silent).
    #[error("{address}: no answer within {timeout:?}")]
    NoAnswer {
        /// The control plane.
        address: String,
        /// The limit ([`Config::connect_timeout`](crate::Config::connect_timeout)).
        timeout: Duration,
    },
    /// The `DeltaAggregatedResources` call failed (connect, refusal, or the stream broke
    /// before any response).
    #[error("{address}: DeltaAggregatedResources: {source}")]
    Stream {
        /// The control plane.
        address: String,
        /// The gRPC status (boxed: it is large).
        source: Box<tonic::Status>,
    },
    /// The stream of requests to the control plane closed before the subscriptions were
    /// sent.
    #[error("{address}: request stream closed")]
    RequestsClosed {
        /// The control plane.
        address: String,
    },
}

impl Error {
    /// Whether the control plane was reached and refused or broke the stream (as opposed to
    /// never answering or a local problem with the token).
    pub fn is_from_control_plane(&self) -> bool {
        matches!(self, Error::Stream { .. })
    }
}
