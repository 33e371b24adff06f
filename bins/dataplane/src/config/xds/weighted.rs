//! `Service.weighted_waypoints` (Istio 1.31): converted and bounded when the service arrives
//! ([`convert`]), resolved into the service's table of waypoints at build time
//! ([`resolve`]). Semantics as Istio's ztunnel (`sample_weighted_waypoint`): an empty list
//! leaves the single `waypoint`; all weights 0 falls back to the single `waypoint`; an entry of
//! weight 0 gets no new connection but stays a waypoint the destination accepts.

use std::sync::Arc;

use mesh_xds::pb::workload as wl;

use super::super::state::Waypoint;
use super::super::weighted::{MAX_WEIGHTED_WAYPOINTS, Weighted};
use super::store::{GatewayRef, XService};

/// A service's table of weighted waypoints.
type Table = Arc<Weighted<Arc<Waypoint>>>;

/// The service's weighted waypoints, each checked like `waypoint`; more than
/// [`MAX_WEIGHTED_WAYPOINTS`] entries, or an entry without a destination, is rejected by name.
/// `gateway` converts a `GatewayAddress` as for `waypoint` (passed in by `convert`).
pub(super) fn convert(
    s: &wl::Service,
    gateway: impl Fn(&str, &wl::GatewayAddress) -> Result<GatewayRef, String>,
) -> Result<Vec<(GatewayRef, u32)>, String> {
    let n = s.weighted_waypoints.len();
    if n > MAX_WEIGHTED_WAYPOINTS {
        return Err(format!(
            "weighted_waypoints: {n} entries (at most {MAX_WEIGHTED_WAYPOINTS})"
        ));
    }
    s.weighted_waypoints
        .iter()
        .enumerate()
        .map(|(i, ww)| {
            let field = format!("weighted_waypoints[{i}].destination");
            let g = ww
                .destination
                .as_ref()
                .ok_or_else(|| format!("{field}: missing"))?;
            Ok((gateway(&field, g)?, ww.weight))
        })
        .collect()
}

/// The service's single waypoint and weighted table, resolved with `resolve` (which fails
/// closed for an unknown waypoint). The single waypoint is `waypoint`, else the first
/// weighted entry with a weight (so "has a waypoint" holds for the service). When every
/// weight is 0 and there is no `waypoint`, Istio would send direct; here the service fails
/// closed instead (`closed`): a control plane that names waypoints never has them skipped.
pub(super) fn resolve(
    x: &XService,
    mut resolve: impl FnMut(&GatewayRef) -> Arc<Waypoint>,
    closed: impl Fn(&GatewayRef) -> Arc<Waypoint>,
) -> (Option<Arc<Waypoint>>, Option<Table>) {
    let single = x.waypoint.as_ref().map(&mut resolve);
    let Some((first, _)) = x.weighted.first() else {
        return (single, None);
    };
    let entries: Vec<(Arc<Waypoint>, u32)> =
        x.weighted.iter().map(|(g, w)| (resolve(g), *w)).collect();
    let primary = entries
        .iter()
        .find(|(_, w)| *w > 0)
        .map(|(wp, _)| wp.clone());
    match Weighted::new(entries) {
        Ok(Some(t)) => (single.or(primary), Some(Arc::new(t))),
        Ok(None) => match single {
            Some(s) => (Some(s), None),
            None => {
                tracing::warn!(service = %x.key, "weighted_waypoints: every weight is 0 and no `waypoint`: traffic to the service is refused");
                (Some(closed(first)), None)
            }
        },
        // Bounded at conversion; fail closed all the same.
        Err(_) => (Some(closed(first)), None),
    }
}
