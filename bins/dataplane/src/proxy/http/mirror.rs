//! The mirror layer's counters in the proxy's metrics: copies sent, dropped (over the
//! in-flight cap, or a body that could not be copied), abandoned at the timeout, in flight.

use std::sync::Arc;

use mesh_l7::layer::MirrorStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// A proxy's mirror counters, shared by its L7 streams' mirror layers.
#[derive(Debug, Clone, Default)]
pub(crate) struct MirrorMetrics(pub(crate) Arc<MirrorStats>);

impl MirrorMetrics {
    /// The counters, registered in `r` (the `mesh_` sub-registry).
    pub(crate) fn register(r: &mut prometheus_client::registry::Registry) -> MirrorMetrics {
        let m = MirrorMetrics::default();
        r.register_collector(Box::new(m.clone()));
        m
    }
}

impl Collector for MirrorMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counters = [
            (
                "mirror_sent",
                "Mirrored request copies sent (their responses dropped)",
                s.sent(),
            ),
            (
                "mirror_dropped_overflow",
                "Mirrored copies dropped because too many were in flight",
                s.dropped_overflow(),
            ),
            (
                "mirror_dropped_body",
                "Mirrored copies not made because the body was too large, of unknown length, or not kept",
                s.dropped_body(),
            ),
            (
                "mirror_timed_out",
                "Mirrored copies abandoned at their timeout",
                s.timed_out(),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(s.in_flight() as i64);
        g.encode(encoder.encode_descriptor(
            "mirror_in_flight",
            "Mirrored copies in flight",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}
