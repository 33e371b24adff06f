//! The endpoint-choice part of a `DestinationRule`'s `loadBalancer`, compiled: consistent
//! hashing, locality, warmup. Every field has its effect or is rejected by name.

use std::time::Duration;

use mesh_authz::istio::FieldError;

use super::hash::{DEFAULT_MAGLEV, DEFAULT_RING, HashPolicy, HashSource, MAX_TABLE, TableKind};
use super::kind::LoadBalancer;
use super::locality::{Distribute, Locality, MAX_GROUPS, Placement};
use super::spec::{ConsistentHashSpec, LocalityLbSettingSpec, WarmupSpec};
use super::warmup::Warmup;
use crate::istio::TrafficPolicySpec;

/// How endpoints are chosen beyond `simple`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Balancing {
    /// `consistentHash`.
    pub hash: Option<HashPolicy>,
    /// Locality rule (`localityLbSetting`, or Istio's default failover with outlier detection).
    pub locality: Option<Placement>,
    /// `warmup` / `warmupDurationSecs`.
    pub warmup: Option<Warmup>,
}

fn err(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
}

/// Compiles a traffic policy's endpoint choice; `None` when it sets no `loadBalancer` nor
/// `outlierDetection` (the caller inherits the host's). `simple` is the compiled
/// `loadBalancer.simple`, `explicit_simple` whether it was written.
pub(super) fn balancing(
    tp: &TrafficPolicySpec,
    field: &str,
    simple: LoadBalancer,
    explicit_simple: bool,
    errs: &mut Vec<FieldError>,
) -> Option<Balancing> {
    let outlier = tp.outlier_detection.is_some();
    let l = tp.load_balancer.as_ref();
    if l.is_none() && !outlier {
        return None;
    }
    let field = format!("{field}.loadBalancer");
    let hash = l.and_then(|l| l.consistent_hash.as_ref()).and_then(|h| {
        if explicit_simple {
            err(
                errs,
                format!("{field}.consistentHash"),
                "set with `simple`: Istio allows one of the two",
            );
        }
        consistent_hash(h, &format!("{field}.consistentHash"), errs)
    });
    let locality = locality(
        l.and_then(|l| l.locality_lb_setting.as_ref()),
        outlier,
        &format!("{field}.localityLbSetting"),
        errs,
    );
    let warmup = warmup(tp, &field, errs);
    if warmup.is_some() && (hash.is_some() || simple == LoadBalancer::Random) {
        // Istio: warmup "is only supported for ROUND_ROBIN and LEAST_REQUEST" (Envoy's slow
        // start exists for those two balancers only).
        err(
            errs,
            format!("{field}.warmup"),
            "only with ROUND_ROBIN or LEAST_REQUEST (Envoy slow start)",
        );
    }
    Some(Balancing {
        hash,
        locality,
        warmup,
    })
}

fn consistent_hash(
    h: &ConsistentHashSpec,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<HashPolicy> {
    let mut sources = Vec::new();
    if let Some(name) = &h.http_header_name {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => sources.push(HashSource::Header(n)),
            Err(_) => err(errs, format!("{field}.httpHeaderName"), "not a header name"),
        }
    }
    if let Some(c) = &h.http_cookie {
        if c.attributes.is_some() {
            err(
                errs,
                format!("{field}.httpCookie.attributes"),
                "not supported yet by this data plane",
            );
        }
        let ttl = c.ttl.as_deref().and_then(|t| {
            let d = crate::duration::parse(t).ok();
            if d.is_none() {
                err(errs, format!("{field}.httpCookie.ttl"), "not a duration");
            }
            // Envoy: a zero TTL makes a session cookie; we only generate with a lifetime.
            d.filter(|d| !d.is_zero())
        });
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            err(
                errs,
                format!("{field}.httpCookie.name"),
                "not a cookie name",
            );
        }
        if c.path.as_deref().is_some_and(|p| {
            !p.starts_with('/') || p.bytes().any(|b| b == b';' || b.is_ascii_control())
        }) {
            err(
                errs,
                format!("{field}.httpCookie.path"),
                "not a cookie path",
            );
        }
        sources.push(HashSource::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl,
        });
    }
    if h.use_source_ip == Some(true) {
        sources.push(HashSource::SourceIp);
    }
    if let Some(q) = &h.http_query_parameter_name {
        if q.is_empty() {
            err(errs, format!("{field}.httpQueryParameterName"), "empty");
        }
        sources.push(HashSource::Query(q.clone()));
    }
    if sources.len() != 1 {
        err(
            errs,
            field.to_owned(),
            "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        );
    }
    let table = table(h, field, errs)?;
    Some(HashPolicy {
        source: sources.into_iter().next()?,
        table,
    })
}

fn table(h: &ConsistentHashSpec, field: &str, errs: &mut Vec<FieldError>) -> Option<TableKind> {
    let ring = h.ring_hash.as_ref().map(|r| r.minimum_ring_size);
    let kind = match (ring, &h.maglev, h.minimum_ring_size) {
        (Some(_), Some(_), _) => {
            err(errs, field.to_owned(), "one of ringHash and maglev");
            return None;
        }
        (None, Some(m), legacy) => {
            if legacy.is_some() {
                err(
                    errs,
                    format!("{field}.minimumRingSize"),
                    "only with ringHash",
                );
            }
            let size = m.table_size.unwrap_or(DEFAULT_MAGLEV);
            // The bound first: primality by trial division is O(√size).
            if size > MAX_TABLE || !super::hash::is_prime(size) {
                err(
                    errs,
                    format!("{field}.maglev.tableSize"),
                    format!("{size}: a prime up to {MAX_TABLE}"),
                );
                return None;
            }
            TableKind::Maglev(size)
        }
        (Some(r), None, legacy) => TableKind::Ring(r.or(legacy).unwrap_or(DEFAULT_RING)),
        // Envoy and Istio: ring hash unless Maglev is asked for.
        (None, None, legacy) => TableKind::Ring(legacy.unwrap_or(DEFAULT_RING)),
    };
    if let TableKind::Ring(size) = kind
        && !(1..=MAX_TABLE).contains(&size)
    {
        err(
            errs,
            format!("{field}.ringHash.minimumRingSize"),
            format!("{size}: 1 to {MAX_TABLE}"),
        );
        return None;
    }
    Some(kind)
}

fn locality(
    l: Option<&LocalityLbSettingSpec>,
    outlier: bool,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Placement> {
    let default = LocalityLbSettingSpec::default();
    let l = l.unwrap_or(&default);
    if l.enabled == Some(false) {
        return None;
    }
    if !l.distribute.is_empty() {
        if !l.failover.is_empty() || !l.failover_priority.is_empty() {
            // Istio validation: distribute and failover are exclusive.
            err(errs, format!("{field}.failover"), "not with distribute");
        }
        return distribute(l, field, errs);
    }
    // Istio applies locality failover only with outlier detection ("Failover needs outlier
    // detection, otherwise Envoy will never drop down to a lower priority").
    if !outlier {
        if !l.failover.is_empty() || !l.failover_priority.is_empty() {
            err(
                errs,
                format!("{field}.failover"),
                "needs outlierDetection (Istio applies locality failover only with it)",
            );
        }
        return None;
    }
    if !l.failover_priority.is_empty() {
        if !l.failover.is_empty() {
            err(
                errs,
                format!("{field}.failover"),
                "not supported together with failoverPriority yet",
            );
        }
        for (i, k) in l.failover_priority.iter().enumerate() {
            if k.is_empty() || k.contains('=') {
                err(
                    errs,
                    format!("{field}.failoverPriority[{i}]"),
                    "a label key (`key=value` overrides are not supported)",
                );
            }
        }
        return Some(Placement::Labels(l.failover_priority.clone()));
    }
    for (i, f) in l.failover.iter().enumerate() {
        if f.from.is_empty() || f.to.is_empty() || f.from == f.to || f.from.contains('/') {
            err(
                errs,
                format!("{field}.failover[{i}]"),
                "from and to are two different regions",
            );
        }
    }
    Some(Placement::Failover {
        failover: l
            .failover
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect(),
    })
}

fn distribute(
    l: &LocalityLbSettingSpec,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Placement> {
    let mut rules = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let f = format!("{field}.distribute[{i}]");
        let mut check = |p: &str, at: String| {
            let parts: Vec<&str> = p.split('/').collect();
            let star_inside = parts.iter().rev().skip(1).any(|x| *x == "*");
            if p.is_empty() || star_inside || Locality::parse(&p.replace('*', "x")).is_err() {
                err(
                    errs,
                    at,
                    format!("{p:?}: expected region/zone/subzone, `*` last"),
                );
            }
        };
        check(&d.from, format!("{f}.from"));
        for p in d.to.keys() {
            check(p, format!("{f}.to"));
        }
        // Istio validation: the weights of a rule sum to 100.
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 || d.to.len() > MAX_GROUPS {
            err(
                errs,
                format!("{f}.to"),
                format!("weights sum to 100 over at most {MAX_GROUPS} localities"),
            );
        }
        rules.push(Distribute {
            from: d.from.clone(),
            to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        });
    }
    Some(Placement::Distribute(rules))
}

fn warmup(tp: &TrafficPolicySpec, field: &str, errs: &mut Vec<FieldError>) -> Option<Warmup> {
    let l = tp.load_balancer.as_ref()?;
    let dur = |s: &str, at: String, errs: &mut Vec<FieldError>| -> Option<Duration> {
        let d = crate::duration::parse(s).ok();
        if d.is_none_or(|d| d < Duration::from_millis(1)) {
            err(errs, at, "a duration of at least 1ms");
            return None;
        }
        d
    };
    match (&l.warmup_duration_secs, &l.warmup) {
        (Some(_), Some(_)) => {
            err(
                errs,
                format!("{field}.warmupDurationSecs"),
                "one of warmupDurationSecs and warmup",
            );
            None
        }
        (Some(s), None) => dur(s, format!("{field}.warmupDurationSecs"), errs).map(Warmup::new),
        (None, Some(w)) => warmup_spec(w, &format!("{field}.warmup"), errs, dur),
        (None, None) => None,
    }
}

fn warmup_spec(
    w: &WarmupSpec,
    field: &str,
    errs: &mut Vec<FieldError>,
    dur: impl Fn(&str, String, &mut Vec<FieldError>) -> Option<Duration>,
) -> Option<Warmup> {
    let d = dur(&w.duration, format!("{field}.duration"), errs)?;
    let minimum = w.minimum_percent.unwrap_or(10.0);
    if !(0.0..=100.0).contains(&minimum) {
        err(errs, format!("{field}.minimumPercent"), "0 to 100");
    }
    let aggression = w.aggression.unwrap_or(1.0);
    if !(aggression >= 1.0 && aggression.is_finite()) {
        // Istio: aggression must be at least 1.
        err(errs, format!("{field}.aggression"), "at least 1.0");
    }
    Some(Warmup {
        duration: d,
        minimum: (minimum / 100.0).clamp(0.0, 1.0),
        aggression: aggression.max(1.0),
    })
}
