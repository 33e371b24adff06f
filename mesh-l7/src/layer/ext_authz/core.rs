//! The sans-IO core of external authorization: a provider's answer (or why there is none)
//! in, what to do with the request out; and how an allowed answer's headers change the
//! upstream request.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::types::{CheckError, CheckResult, HeaderMode, Provider};

/// What to do with a request after one provider's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on, with these changes (none when the check failed open).
    Allow {
        /// Headers for the upstream request.
        upstream: Vec<(HeaderName, HeaderValue, HeaderMode)>,
        /// Headers removed from the upstream request.
        remove: Vec<HeaderName>,
        /// Headers added to the response.
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer the client with this response (flag `UAEX`).
    Refuse {
        /// Status.
        status: StatusCode,
        /// Headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body.
        body: Bytes,
    },
}

/// Decides on a provider's answer. Envoy's ext_authz: a denial without a (valid) status is
/// 403; a failed check lets the request through with `failure_mode_allow` (Istio's
/// `failOpen`), else answers `status_on_error` (Istio's `statusOnError`, default 403).
pub fn decide(provider: &Provider, answer: Result<CheckResult, CheckError>) -> Verdict {
    match answer {
        Ok(CheckResult::Allow {
            upstream,
            remove,
            downstream,
        }) => Verdict::Allow {
            upstream,
            remove,
            downstream,
        },
        Ok(CheckResult::Deny {
            status,
            headers,
            body,
        }) => Verdict::Refuse {
            status: status
                .filter(|s| !s.is_informational())
                .unwrap_or(StatusCode::FORBIDDEN),
            headers,
            body,
        },
        Err(_) if provider.fail_open => Verdict::Allow {
            upstream: Vec::new(),
            remove: Vec::new(),
            downstream: Vec::new(),
        },
        Err(_) => Verdict::Refuse {
            status: provider.status_on_error,
            headers: Vec::new(),
            body: Bytes::new(),
        },
    }
}

/// Applies an allowed answer's changes to the upstream request's headers: removals first,
/// then each header as its mode says. The default mode overwrites, so a value the client
/// sent under a name the authorizer sets never reaches the upstream. `host` and
/// pseudo-headers are never removed (Envoy refuses to as well).
pub fn apply_upstream(
    headers: &mut HeaderMap,
    set: &[(HeaderName, HeaderValue, HeaderMode)],
    remove: &[HeaderName],
) {
    for name in remove {
        if name != header::HOST {
            headers.remove(name);
        }
    }
    for (name, value, mode) in set {
        match mode {
            HeaderMode::Overwrite => {
                headers.insert(name.clone(), value.clone());
            }
            HeaderMode::Append => {
                headers.append(name.clone(), value.clone());
            }
            HeaderMode::AddIfAbsent => {
                if !headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            HeaderMode::OverwriteIfExists => {
                if headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }
}
