//! A destination host's outlier detection and connection pool compiled from its
//! `DestinationRule` (the spec side lives here, so the resilience modules do not depend on
//! the `istio` spec).

use mesh_authz::istio::FieldError;

use crate::istio::DestinationRuleSpec;
use crate::resilience::pool::HostPolicy;

impl HostPolicy {
    /// Compiles the host-level `outlierDetection` and `connectionPool` of `spec`; every
    /// problem is pushed to `errs`.
    pub fn compile(spec: &DestinationRuleSpec, errs: &mut Vec<FieldError>) -> Self {
        let mut out = HostPolicy::default();
        if let Some(tp) = &spec.traffic_policy {
            let f = "spec.trafficPolicy";
            out.outlier = tp
                .outlier_detection
                .as_ref()
                .map(|o| o.compile(&format!("{f}.outlierDetection"), errs));
            out.pool = tp
                .connection_pool
                .as_ref()
                .map(|c| c.compile(&format!("{f}.connectionPool"), errs));
        }
        for (i, s) in spec.subsets.iter().enumerate() {
            let Some(tp) = &s.traffic_policy else {
                continue;
            };
            let f = format!("spec.subsets[{i}].trafficPolicy");
            for (set, name) in [
                (tp.outlier_detection.is_some(), "outlierDetection"),
                (tp.connection_pool.is_some(), "connectionPool"),
            ] {
                if set {
                    errs.push(FieldError {
                        field: format!("{f}.{name}"),
                        reason: "not supported yet per subset: set it on the host's \
                                 trafficPolicy"
                            .into(),
                    });
                }
            }
        }
        out
    }
}
