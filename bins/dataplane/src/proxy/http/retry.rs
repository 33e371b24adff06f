//! What the retry layer asks of a stream — the mesh's default retry policy, and the retry
//! budget of a request's destination with its proxy-wide counters — and why an upstream
//! request failed, typed for `retryOn` and the response flags.

use std::sync::Arc;

use mesh_l7::layer::{RetrySource, Target, UpstreamFailure};
use mesh_l7::resilience::budget::{BudgetCounters, RetryBudgetPolicy};
use mesh_l7::resilience::retry::RetryPolicy;

use mesh_l7::resilience::pool::{Overflow, Permit};

use super::Stream;
use super::sources::Sources;

/// The request body cap for replay: bodies up to 64 KiB are kept as they stream so they can
/// be retried (and mirrored); bigger ones are sent once.
pub(super) const REPLAY_CAP: usize = mesh_l7::layer::DEFAULT_REPLAY_CAP;

impl RetrySource for Sources {
    fn default_policy(&self) -> Option<Arc<RetryPolicy>> {
        self.0.ctx.state.load().default_retry.clone()
    }

    fn budget(&self, target: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)> {
        let s = &self.0;
        let state = s.ctx.state.load();
        if state.retry_budgets.is_empty() {
            return None;
        }
        let (host, subset) = destination(s, target)?;
        let policy = crate::config::retry::budget_of(&state.retry_budgets, host, subset)?;
        Some((policy, s.ctx.retry_budgets.get(&lower(host), subset)))
    }

    fn admit_retry(&self, target: &Target) -> Result<Option<Permit>, Overflow> {
        match destination(&self.0, target) {
            Some((host, _)) => self.0.ctx.health.admit_retry(&lower(host)),
            None => Ok(None),
        }
    }
}

/// `host` in lower case (host names are case-insensitive; the indexes hold lower case),
/// copied only when it has upper case.
fn lower(host: &str) -> std::borrow::Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

/// The destination host and subset a request goes to (`None`: unrouted, to the local app).
fn destination<'a>(s: &'a Stream, target: &'a Target) -> Option<(&'a str, Option<&'a str>)> {
    match target {
        Target::Picked(p) => {
            let d = p.destination()?;
            Some((d.host.as_str(), d.subset.as_deref()))
        }
        Target::Addressed => Some((s.service.as_ref()?.service.hosts.first()?.as_str(), None)),
        Target::Direct => None,
    }
}

/// Why a request failed on its upstream connection: the HTTP/2 stream refused
/// (`REFUSED_STREAM`, safe to retry anywhere) or reset (`UR`), else the connection ended
/// before the response (`UC`: an HTTP/1.1 close or TCP reset, an HTTP/2 GOAWAY), as Envoy
/// names its reset reasons.
pub(super) fn failure_of(e: &hyper::Error) -> UpstreamFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return UpstreamFailure::RefusedStream;
            }
            if h2.is_reset() {
                return UpstreamFailure::Reset;
            }
            if h2.is_go_away() {
                return UpstreamFailure::ConnectionTermination;
            }
        }
        source = err.source();
    }
    UpstreamFailure::ConnectionTermination
}
