//! One HBONE tunnel (an HTTP/2 CONNECT stream), and ([`copy`]) the byte pump between it and a
//! plain stream.
//!
//! How a tunnel ends (RFC 9113 §8.5, and Istio's ztunnel on the receiving side):
//! - END_STREAM is the clean end of one direction; every byte before it is delivered.
//! - RST_STREAM `NO_ERROR` or `CANCEL` from the peer ends the stream without error: bytes
//!   already received are delivered, then the plain side is half-closed as for END_STREAM;
//!   bytes the peer no longer wants are discarded (a server that answered in full may stop a
//!   request body, RFC 9113 §8.1).
//! - Any other reset, or the HTTP/2 connection failing, is an error: the caller resets the
//!   plain connection, so a cut tunnel never looks like a complete, shorter stream.
//! - Our own errors reset the stream with `CONNECT_ERROR`, never `CANCEL` (which Istio reads
//!   as a clean end), and so does dropping a tunnel that did not end cleanly. h2 discards
//!   queued data when a stream is reset, so a clean end never resets: it sends END_STREAM
//!   and lets h2 flush (a server-side stream dropped after END_STREAM is reset by h2 with
//!   `NO_ERROR` only after its queued data).

mod copy;
mod ready;
mod tunnel;

pub use copy::{ByteCounter, CopyStats, copy_bidirectional};
pub use ready::PlainRead;
pub use tunnel::H2Stream;
