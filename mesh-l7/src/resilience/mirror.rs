//! Traffic mirroring (`VirtualService` `http[].mirror` + `mirrorPercentage`, or `mirrors`),
//! sans-IO: the spec, the compiled [`MirrorPolicy`] list of a route, which mirrors a request
//! is copied to for given random rolls, and the copy's authority (Envoy's `-shadow` suffix).
//! Istio's semantics: a mirror without a percentage gets every request; an explicit 0 none.

use serde::Deserialize;

use super::fault::{Fraction, PercentSpec};
use mesh_authz::istio::FieldError;

use crate::gateway::backend::BackendRef;
use crate::istio::destination::DestinationSpec;
use crate::route::dest::{Destination, HeaderRules};

/// `http[].mirrors[]` (Istio 1.22+).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// Where copies go.
    pub destination: DestinationSpec,
    /// Share of requests copied (none: all).
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
}

/// One compiled mirror of a route.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    /// Where copies go (its weight is unused).
    pub destination: Destination,
    /// Share of requests copied.
    pub share: Fraction,
}

/// The most mirrors a route may have (each is a copy of every request it takes).
pub const MAX_MIRRORS: usize = 8;

/// The mirrors of a route: `mirror` with `mirrorPercentage`, or `mirrors` (not both), at
/// `f` (`spec.http[i]`).
pub fn compile(
    mirror: Option<&DestinationSpec>,
    mirror_percentage: Option<PercentSpec>,
    mirrors: &[MirrorSpec],
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<MirrorPolicy> {
    let push = |errs: &mut Vec<FieldError>, field: String, reason: &str| {
        errs.push(FieldError {
            field,
            reason: reason.into(),
        })
    };
    if mirror.is_some() && !mirrors.is_empty() {
        // Istio validation: `mirror` and `mirrors` cannot both be set.
        push(
            errs,
            format!("{f}.mirrors"),
            "set mirror or mirrors, not both",
        );
        return Vec::new();
    }
    if mirror.is_none() && mirror_percentage.is_some() {
        push(
            errs,
            format!("{f}.mirrorPercentage"),
            "only with mirror (use mirrors[].percentage)",
        );
    }
    if mirrors.len() > MAX_MIRRORS {
        push(errs, format!("{f}.mirrors"), "at most 8 mirrors per route");
        return Vec::new();
    }
    let one = mirror.map(|d| {
        (
            d,
            mirror_percentage,
            format!("{f}.mirror"),
            format!("{f}.mirrorPercentage"),
        )
    });
    let many = mirrors.iter().enumerate().map(|(k, m)| {
        (
            &m.destination,
            m.percentage,
            format!("{f}.mirrors[{k}].destination"),
            format!("{f}.mirrors[{k}].percentage"),
        )
    });
    one.into_iter()
        .chain(many)
        .filter_map(|(d, p, df, pf)| policy(d, p, &df, &pf, errs))
        .collect()
}

fn policy(
    d: &DestinationSpec,
    p: Option<PercentSpec>,
    df: &str,
    pf: &str,
    errs: &mut Vec<FieldError>,
) -> Option<MirrorPolicy> {
    // Istio (networking/core/route mirrorPercent): no percentage mirrors 100%.
    let share = match p {
        None => Fraction::ALL,
        Some(p) => match Fraction::from_percent(p.value) {
            Some(s) => s,
            None => {
                errs.push(FieldError {
                    field: format!("{pf}.value"),
                    reason: "must be in 0..=100".into(),
                });
                return None;
            }
        },
    };
    let port = match d.port.as_ref().map(|p| p.number) {
        None => None,
        Some(n) => match u16::try_from(n).ok().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => {
                errs.push(FieldError {
                    field: format!("{df}.port.number"),
                    reason: format!("{n} is not a port"),
                });
                return None;
            }
        },
    };
    if d.host.is_empty() {
        errs.push(FieldError {
            field: format!("{df}.host"),
            reason: "required".into(),
        });
        return None;
    }
    Some(MirrorPolicy {
        destination: Destination {
            host: d.host.to_ascii_lowercase(),
            subset: d.subset.clone(),
            port,
            weight: 0,
            headers: HeaderRules::default(),
        },
        share,
    })
}

/// Gateway API `HTTPRoute` filter `RequestMirror` (`requestMirror`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirrorSpec {
    /// The Service copies go to.
    #[serde(rename = "backendRef")]
    pub backend_ref: BackendRef,
    /// Share of requests copied, in percent (none, nor `fraction`: all).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests copied as a fraction (instead of `percent`).
    #[serde(default)]
    pub fraction: Option<FractionSpec>,
}

/// Gateway API `Fraction`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionSpec {
    /// Numerator.
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// A `RequestMirror` filter at `ff` (`spec.rules[i].filters[j]`); `destination` resolves its
/// backend (reporting problems at the field path given).
pub fn request_mirror(
    spec: &RequestMirrorSpec,
    ff: &str,
    destination: impl FnOnce(&str, &mut Vec<FieldError>) -> Option<Destination>,
    errs: &mut Vec<FieldError>,
) -> Option<MirrorPolicy> {
    let bf = format!("{ff}.requestMirror.backendRef");
    if spec.backend_ref.weight.is_some() {
        errs.push(FieldError {
            field: format!("{bf}.weight"),
            reason: "not a field of a mirror's backendRef".into(),
        });
    }
    // GEP-3171: `percent` or `fraction` (not both); neither mirrors every request.
    let share = match (spec.percent, spec.fraction) {
        (Some(_), Some(_)) => {
            errs.push(FieldError {
                field: format!("{ff}.requestMirror"),
                reason: "set percent or fraction, not both".into(),
            });
            return None;
        }
        (Some(p), None) if p <= 100 => Fraction::from_percent(f64::from(p)),
        (
            None,
            Some(FractionSpec {
                numerator: n,
                denominator: d,
            }),
        ) => {
            let d = d.unwrap_or(100);
            (d > 0 && n <= d).then(|| {
                Fraction::from_millionths((u64::from(n) * 1_000_000 / u64::from(d)) as u32)
            })
        }
        (None, None) => Some(Fraction::ALL),
        (Some(_), None) => None,
    };
    let Some(share) = share else {
        errs.push(FieldError {
            field: format!("{ff}.requestMirror"),
            reason: "percent must be in 0..=100; fraction needs 0 < denominator and numerator <= denominator".into(),
        });
        return None;
    };
    let mut d = destination(&bf, errs)?;
    d.weight = 0;
    Some(MirrorPolicy {
        destination: d,
        share,
    })
}

/// Whether mirror `i` of `mirrors` takes a copy of a request with random `roll`.
pub fn takes(mirror: &MirrorPolicy, roll: u32) -> bool {
    mirror.share.hits(roll)
}

/// The authority of a mirrored copy, as Envoy's `shadowAppendedHost`: `-shadow` appended to
/// the host, before the port if any (`svc:8080` → `svc-shadow:8080`; `[::1]:80` →
/// `[::1]-shadow:80`).
pub fn shadow_authority(authority: &str) -> String {
    let split = match authority.rfind(':') {
        // A port only after the last `]` of an IPv6 literal, or in a name without `[`.
        Some(i)
            if !authority[i..].contains(']')
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            if authority.starts_with('[') || !authority[..i].contains(':') {
                Some(i)
            } else {
                None
            }
        }
        _ => None,
    };
    match split {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
