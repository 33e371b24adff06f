//! Locality from the two config sources: a `WorkloadEntry`'s `locality` string and the workload
//! API's `Workload.locality` / `Service.load_balancing` (which istiod also fills from a
//! Kubernetes Service's `trafficDistribution`: `PreferClose`/`PreferSameZone` become
//! `[NETWORK, REGION, ZONE, SUBZONE]` FAILOVER, `PreferSameNode` adds `NODE`).

use mesh_l7::balance::locality::{Locality, Mode, Placement, Scope};
use mesh_xds::pb::workload as wl;

/// A workload API locality (`None` when all parts are empty).
pub(crate) fn workload_locality(l: Option<&wl::Locality>) -> Option<Locality> {
    let l = l?;
    if l.region.is_empty() && l.zone.is_empty() && l.subzone.is_empty() {
        return None;
    }
    Some(Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

/// A workload API `load_balancing`, as ztunnel reads it; unsupported values are rejected by
/// name.
pub(crate) fn load_balancing(lb: Option<&wl::LoadBalancing>) -> Result<Option<Placement>, String> {
    use wl::load_balancing::{HealthPolicy, Mode as M, Scope as S};
    let Some(lb) = lb else { return Ok(None) };
    if lb.health_policy == HealthPolicy::AllowAll as i32 {
        return Err(
            "unsupported Istio field `load_balancing.health_policy`: ALLOW_ALL is not supported yet"
                .into(),
        );
    }
    let mode = match M::try_from(lb.mode) {
        // ztunnel: an unspecified mode fails over.
        Ok(M::UnspecifiedMode) | Ok(M::Failover) => Mode::Failover,
        Ok(M::Strict) => Mode::Strict,
        Ok(M::Passthrough) => {
            return Err(
                "unsupported Istio field `load_balancing.mode`: PASSTHROUGH is not supported yet"
                    .into(),
            );
        }
        Err(_) => return Err(format!("load_balancing.mode: unknown value {}", lb.mode)),
    };
    let mut scopes = Vec::new();
    for (i, s) in lb.routing_preference.iter().enumerate() {
        scopes.push(match S::try_from(*s) {
            Ok(S::Region) => Scope::Region,
            Ok(S::Zone) => Scope::Zone,
            Ok(S::Subzone) => Scope::Subzone,
            Ok(S::Node) => Scope::Node,
            Ok(S::Cluster) => Scope::Cluster,
            Ok(S::Network) => Scope::Network,
            Ok(S::UnspecifiedScope) | Err(_) => {
                return Err(format!(
                    "load_balancing.routing_preference[{i}]: unknown scope {s}"
                ));
            }
        });
    }
    if scopes.is_empty() {
        // No preference: nothing to rank by (a mode alone has no effect in ztunnel either).
        return Ok(None);
    }
    Ok(Some(Placement::Preference { scopes, mode }))
}

/// Istio's `networking.istio.io/traffic-distribution` annotation (on a `ServiceEntry`; istiod
/// reads it as Kubernetes' `trafficDistribution`).
pub(crate) const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";

/// Where errors about it point.
pub(crate) const TRAFFIC_DISTRIBUTION_FIELD: &str =
    "metadata.annotations[networking.istio.io/traffic-distribution]";

/// The routing preference of a service's traffic distribution, as istiod converts it:
/// `PreferClose` (and its newer name `PreferSameZone`) prefers the same network, region,
/// zone, subzone with failover; `PreferSameNode` also the same node.
pub(crate) fn traffic_distribution(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Placement>, String> {
    let Some(v) = annotations.get(TRAFFIC_DISTRIBUTION) else {
        return Ok(None);
    };
    let mut scopes = vec![Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone];
    if v.eq_ignore_ascii_case("PreferSameNode") {
        scopes.push(Scope::Node);
    } else if !(v.eq_ignore_ascii_case("PreferClose") || v.eq_ignore_ascii_case("PreferSameZone")) {
        return Err(format!(
            "{v:?}: expected PreferClose, PreferSameZone or PreferSameNode"
        ));
    }
    Ok(Some(Placement::Preference {
        scopes,
        mode: Mode::Failover,
    }))
}

/// A `WorkloadEntry.locality` (`region/zone/subzone`).
pub(crate) fn parse(s: &str) -> Result<Option<Locality>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    Locality::parse(s).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wl::load_balancing::{HealthPolicy, Mode as M, Scope as S};

    fn lb(scopes: &[S], mode: M) -> wl::LoadBalancing {
        wl::LoadBalancing {
            routing_preference: scopes.iter().map(|s| *s as i32).collect(),
            mode: mode as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        }
    }

    // istiod carries Kubernetes `trafficDistribution: PreferClose` to ztunnel as
    // routing_preference [NETWORK, REGION, ZONE, SUBZONE], mode FAILOVER (Istio
    // pilot/pkg/serviceregistry/kube/controller/ambient, `PreferClose`); ztunnel ranks by the
    // longest matching prefix.
    #[test]
    fn workload_api_load_balancing() {
        let close = lb(&[S::Network, S::Region, S::Zone, S::Subzone], M::Failover);
        assert_eq!(
            load_balancing(Some(&close)).unwrap(),
            Some(Placement::Preference {
                scopes: vec![Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone],
                mode: Mode::Failover
            })
        );
        let strict = lb(&[S::Node], M::Strict);
        assert!(matches!(
            load_balancing(Some(&strict)).unwrap(),
            Some(Placement::Preference {
                mode: Mode::Strict,
                ..
            })
        ));
        assert_eq!(load_balancing(None).unwrap(), None);
        let e = load_balancing(Some(&lb(&[S::Zone], M::Passthrough))).unwrap_err();
        assert!(e.contains("load_balancing.mode"), "{e}");
        let mut all = lb(&[S::Zone], M::Failover);
        all.health_policy = HealthPolicy::AllowAll as i32;
        assert!(
            load_balancing(Some(&all))
                .unwrap_err()
                .contains("health_policy")
        );
        let e = load_balancing(Some(&lb(&[S::UnspecifiedScope], M::Strict))).unwrap_err();
        assert!(e.contains("routing_preference[0]"), "{e}");
    }

    #[test]
    fn workload_api_locality() {
        assert_eq!(workload_locality(Some(&wl::Locality::default())), None);
        let l = wl::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: String::new(),
        };
        assert_eq!(workload_locality(Some(&l)).unwrap().zone, "z");
        assert_eq!(parse("").unwrap(), None);
        assert!(parse("a/b/c/d").is_err());
    }
}
