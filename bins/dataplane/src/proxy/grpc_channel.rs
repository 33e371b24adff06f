//! The one way the proxy reaches a mesh endpoint over plain gRPC for its own calls (the
//! ext_authz and global rate limit services): a lazily connecting tonic channel whose TCP
//! connections carry the proxy's socket mark, so a sidecar's own capture rules let them out
//! as the proxy's traffic instead of redirecting them back into the proxy. Channels are kept
//! per target and reused by every stream ([`GrpcChannels`]), bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use mesh_l7::layer::tower::service_fn;
use mesh_xds::Channel;

/// At most this many channels are kept; past it the cache starts over, so a churn of
/// endpoints cannot grow it without bound.
const MAX_CHANNELS: usize = 256;

/// Where a channel goes and how it connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GrpcTarget {
    /// The endpoint dialled.
    pub(crate) addr: SocketAddr,
    /// The calls' `:authority` (Envoy's `envoy_grpc.authority`); `None`: the address.
    pub(crate) authority: Option<String>,
    /// The connect timeout.
    pub(crate) timeout: Duration,
    /// The socket mark of its connections (the proxy's own, `--socket-mark`).
    pub(crate) mark: Option<u32>,
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ChannelError {
    /// The cache's lock was poisoned by a panic elsewhere.
    #[error("gRPC channel cache poisoned")]
    Poisoned,
    /// The address or authority is not a valid URI.
    #[error("invalid gRPC target {target}: {reason}")]
    Invalid {
        /// The URI that was refused.
        target: String,
        /// Why.
        reason: String,
    },
}

/// The proxy's gRPC channels, by target.
#[derive(Default)]
pub(crate) struct GrpcChannels {
    channels: Mutex<HashMap<GrpcTarget, Channel>>,
}

impl GrpcChannels {
    /// The channel to `target`, made (lazily connecting, marked) on first use.
    pub(crate) fn channel(&self, target: GrpcTarget) -> Result<Channel, ChannelError> {
        // Never held across an await: only the lookup and insert.
        let mut map = self.channels.lock().map_err(|_| ChannelError::Poisoned)?;
        if let Some(c) = map.get(&target) {
            return Ok(c.clone());
        }
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        let channel = marked_channel(&target)?;
        map.insert(target, channel.clone());
        Ok(channel)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.channels.lock().map_or(0, |m| m.len())
    }
}

/// A lazily connecting channel to `t.addr` whose connections carry `t.mark`.
fn marked_channel(t: &GrpcTarget) -> Result<Channel, ChannelError> {
    let invalid = |target: String, e: &dyn std::fmt::Display| ChannelError::Invalid {
        target,
        reason: e.to_string(),
    };
    let uri = format!("http://{}", t.addr);
    let mut endpoint = Channel::from_shared(uri.clone()).map_err(|e| invalid(uri, &e))?;
    if let Some(a) = &t.authority {
        let origin = format!("http://{a}");
        let parsed: http::Uri = origin.parse().map_err(|e| invalid(origin, &e))?;
        endpoint = endpoint.origin(parsed);
    }
    let (addr, mark) = (t.addr, t.mark);
    let connect = service_fn(move |_: http::Uri| async move {
        let tcp = mesh_hbone::connect_tcp(addr, mark, None).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
    });
    Ok(endpoint
        .connect_timeout(t.timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_with_connector_lazy(connect))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn target(port: u16, mark: Option<u32>) -> GrpcTarget {
        GrpcTarget {
            addr: SocketAddr::from(([127, 217, 90, 1], port)),
            authority: None,
            timeout: Duration::from_secs(1),
            mark,
        }
    }

    // One channel per target, the mark part of it; a churn of endpoints stays bounded.
    #[tokio::test]
    async fn channels_are_reused_per_target_and_bounded() {
        let c = GrpcChannels::default();
        c.channel(target(1, Some(7))).unwrap();
        c.channel(target(1, Some(7))).unwrap();
        assert_eq!(c.len(), 1);
        c.channel(target(1, None)).unwrap();
        assert_eq!(c.len(), 2);
        for p in 0..1000 {
            c.channel(target(p, Some(7))).unwrap();
            assert!(c.len() <= MAX_CHANNELS);
        }
        let bad = GrpcTarget {
            authority: Some("not a host".into()),
            ..target(2, None)
        };
        assert!(matches!(c.channel(bad), Err(ChannelError::Invalid { .. })));
    }
}
