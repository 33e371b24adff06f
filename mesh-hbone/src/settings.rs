//! HTTP/2 limits of HBONE connections, shared by the server and the pool's client.
//!
//! Every per-connection cost a peer can cause is capped here: header bytes (decoded and
//! encoded), streams, resets, frames that carry nothing, buffered bytes per stream, flow-control
//! windows, and time (keepalive PINGs, idle connections, stalled streams). The defaults follow
//! Istio's ztunnel where it has one (4 MiB stream / 16 MiB connection windows, 100 streams) and
//! Envoy's HTTP/2 flood protections otherwise.

use std::time::Duration;

use crate::{Error, SettingsError};

/// HTTP/2 settings and abuse limits shared by client and server.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Most concurrent tunnels the server allows per connection (Istio: 100).
    pub max_concurrent_streams: u32,
    /// Initial flow-control window of a tunnel. Large so one tunnel can fill a fast link.
    pub stream_window: u32,
    /// Initial flow-control window of a connection: the most received bytes one peer can make
    /// us hold (when the applications behind its tunnels do not read).
    pub connection_window: u32,
    /// Largest HTTP/2 frame we accept.
    pub max_frame_size: u32,
    /// Largest header list a peer may send, counted as RFC 9113 does (decoded name and value
    /// bytes plus 32 per field). A larger request is answered 431; one over 4 × this, or an
    /// encoded header block (HEADERS plus CONTINUATION payloads) over this, closes the
    /// connection. An HBONE CONNECT needs a few hundred bytes.
    pub max_header_list_size: u32,
    /// Most bytes queued for sending per stream before its writer waits (h2 default ~400 KB).
    pub max_send_buffer_size: usize,
    /// Most streams the peer may reset before we accepted them; more closes the connection.
    pub max_pending_accept_reset_streams: usize,
    /// Most streams we may have to reset for the peer's protocol errors over a connection's
    /// life; more closes the connection (GOAWAY `ENHANCE_YOUR_CALM`).
    pub max_local_error_reset_streams: usize,
    /// Most consecutive frames that carry nothing (empty DATA, HEADERS or CONTINUATION,
    /// PRIORITY, unknown types); more closes the connection. A DATA or HEADERS frame with a
    /// payload starts the count again.
    pub max_empty_frames: u32,
    /// Rapid reset (CVE-2023-44487): a peer that resets this many streams within a second of
    /// opening them, and more than half of all the streams it opened, is disconnected.
    pub max_premature_resets: u32,
    /// A PING is sent this often on every connection.
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed (also one that stopped
    /// reading: its PING cannot even be written).
    pub keepalive_timeout: Duration,
    /// A server connection without tunnels for this long is closed (GOAWAY); a tunnel whose
    /// peer keeps its receive window at zero for this long is reset.
    pub idle_timeout: Duration,
}

/// Default of [`H2Settings::max_header_list_size`]: 16 KiB.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: 100,
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            // Four of the byte pump's largest chunks (256 KiB), so the pump keeps reading while
            // h2 writes (128 KiB, two chunks, left one side idle: 25% less single-stream
            // throughput, BENCHMARKS.md). Istio: 4 MiB (client), 400 KiB (server). Worst case
            // per connection, a peer that stops reading its socket: max_concurrent_streams ×
            // 1 MiB queued until the keepalive PING goes unanswered (interval + timeout, 40 s)
            // and closes the connection (keepalive.rs).
            max_send_buffer_size: 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 100,
            max_empty_frames: 100,
            max_premature_resets: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl H2Settings {
    /// Checks that the values are usable: [`Error::InvalidSettings`] names the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::InvalidSettings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        let window_ok = |w: u32| (65_535..=MAX_WINDOW).contains(&w);
        if !window_ok(self.stream_window) {
            return Err(SettingsError::StreamWindow(self.stream_window));
        }
        if !window_ok(self.connection_window) {
            return Err(SettingsError::ConnectionWindow(self.connection_window));
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err(SettingsError::MaxFrameSize(self.max_frame_size));
        }
        if self.max_header_list_size < 1024 {
            return Err(SettingsError::MaxHeaderListSize(self.max_header_list_size));
        }
        if self.max_send_buffer_size == 0 || self.max_send_buffer_size > u32::MAX as usize {
            return Err(SettingsError::MaxSendBufferSize(self.max_send_buffer_size));
        }
        for (name, d) in [
            ("keepalive interval", self.keepalive_interval),
            ("keepalive timeout", self.keepalive_timeout),
            ("idle timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(SettingsError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

impl H2Settings {
    /// h2's server builder with these limits.
    pub(crate) fn server_builder(&self) -> Result<h2::server::Builder, Error> {
        self.validate()?;
        let mut b = h2::server::Builder::new();
        b.max_concurrent_streams(self.max_concurrent_streams)
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        Ok(b)
    }

    /// h2's client builder with these limits; server push is refused.
    pub(crate) fn client_builder(&self) -> Result<h2::client::Builder, Error> {
        self.validate()?;
        let mut b = h2::client::Builder::new();
        b.enable_push(false)
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        H2Settings::default().validate().unwrap();
        let bad = H2Settings {
            max_frame_size: 1,
            ..H2Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max frame size")
        );
        let bad = H2Settings {
            stream_window: 1 << 31,
            ..H2Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("stream window")
        );
        let bad = H2Settings {
            idle_timeout: Duration::ZERO,
            ..H2Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("idle timeout")
        );
    }

    #[test]
    fn settings_errors_are_typed_with_the_former_texts() {
        let cases = [
            (
                H2Settings {
                    connection_window: 1,
                    ..H2Settings::default()
                },
                SettingsError::ConnectionWindow(1),
                "connection window 1 is outside 65535..=2147483647",
            ),
            (
                H2Settings {
                    max_header_list_size: 10,
                    ..H2Settings::default()
                },
                SettingsError::MaxHeaderListSize(10),
                "max header list size 10 is below 1024",
            ),
            (
                H2Settings {
                    max_send_buffer_size: 0,
                    ..H2Settings::default()
                },
                SettingsError::MaxSendBufferSize(0),
                "max send buffer size 0 is outside 1..=4294967295",
            ),
            (
                H2Settings {
                    keepalive_timeout: Duration::ZERO,
                    ..H2Settings::default()
                },
                SettingsError::ZeroDuration("keepalive timeout"),
                "keepalive timeout must be positive",
            ),
        ];
        for (settings, want, text) in cases {
            match settings.validate() {
                Err(Error::InvalidSettings(got)) => {
                    assert_eq!(got, want);
                    assert_eq!(
                        Error::InvalidSettings(got).to_string(),
                        format!("invalid HTTP/2 settings: {text}")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
