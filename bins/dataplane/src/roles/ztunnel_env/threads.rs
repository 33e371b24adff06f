//! Numbers Istio's ztunnel derives from several variables, as pure functions of the
//! environment: the worker-thread count (`ZTUNNEL_WORKER_THREADS`, the chart's CPU limit and
//! request) and the drain deadline (`CONNECTION_TERMINATION_DEADLINE`,
//! `TERMINATION_GRACE_PERIOD_SECONDS`). Istio: istio/ztunnel `src/config.rs`
//! (`parse_worker_threads`, `default_worker_threads`, `get_cpu_count`, `self_termination_deadline`).

use std::time::Duration;

use super::vars::{EnvError, IstioEnv};

/// Istio's default worker threads without a CPU limit or request.
const DEFAULT_WORKER_THREADS: usize = 2;
/// Istio's fraction of the node's cores used when no CPU limit is set.
const CPU_FRACTION: f64 = 0.25;
/// The most worker threads we start (Istio has no cap; a typo must not start a million).
pub const MAX_WORKER_THREADS: usize = 1024;

const WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
const CPU_LIMIT: &str = "ZTUNNEL_CPU_LIMIT";
const RESOURCE_CPU_LIMIT: &str = "ZTUNNEL_RESOURCE_CPU_LIMIT";
const RESOURCE_CPU_REQUEST: &str = "ZTUNNEL_RESOURCE_CPU_REQUEST";

/// The worker threads Istio's ztunnel would start in `env` on a host with `available`
/// logical cores; `None` when none of its variables is set (our `--worker-threads` default
/// stays).
pub fn worker_threads(env: &IstioEnv, available: usize) -> Result<Option<usize>, EnvError> {
    let vars = [
        WORKER_THREADS,
        CPU_LIMIT,
        RESOURCE_CPU_LIMIT,
        RESOURCE_CPU_REQUEST,
    ];
    if !vars.iter().any(|v| env.is_set(v)) {
        return Ok(None);
    }
    let limit = cpu_quantity(env, RESOURCE_CPU_LIMIT)?;
    let request = cpu_quantity(env, RESOURCE_CPU_REQUEST)?.unwrap_or(0);
    // get_cpu_count: the explicit limit, else the downward API's limits.cpu (the node's cores
    // when no limit is set), else the host's logical cores.
    let cpus = match (limit, env.get(CPU_LIMIT)?) {
        (Some(l), _) => l,
        (None, Some(v)) => v
            .parse::<usize>()
            .map_err(|e| EnvError::invalid(CPU_LIMIT, v, e.to_string()))?,
        (None, None) => available,
    }
    .max(1);
    let default = match limit {
        Some(l) => l.max(request),
        None => fraction(cpus, CPU_FRACTION)
            .max(request)
            .max(DEFAULT_WORKER_THREADS),
    };
    // A derived count is clamped (Istio has no cap); an explicit count above it is refused
    // by `explicit_threads`.
    let threads = match env.get(WORKER_THREADS)? {
        None => default,
        Some(v) => explicit_threads(v, cpus)?,
    }
    .clamp(1, MAX_WORKER_THREADS);
    Ok(Some(threads))
}

/// `ZTUNNEL_WORKER_THREADS`: a count, `0` (every core) or a percentage of the cores.
fn explicit_threads(v: &str, cpus: usize) -> Result<usize, EnvError> {
    if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|e| {
            EnvError::invalid(WORKER_THREADS, v, format!("invalid percentage: {e}"))
        })?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(EnvError::invalid(
                WORKER_THREADS,
                v,
                "percentage must be between 0 and 100",
            ));
        }
        return Ok(fraction(cpus, p / 100.0).max(1));
    }
    match v.parse::<usize>() {
        Ok(0) => Ok(cpus),
        Ok(n) if n > MAX_WORKER_THREADS => Err(EnvError::invalid(
            WORKER_THREADS,
            v,
            format!("at most {MAX_WORKER_THREADS}"),
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(EnvError::invalid(
            WORKER_THREADS,
            v,
            format!("invalid number: {e}"),
        )),
    }
}

/// `ceil(cpus × f)`.
fn fraction(cpus: usize, f: f64) -> usize {
    // cpus ≤ usize::MAX and f ≤ 1: the product fits; `as` saturates on overflow anyway.
    (cpus as f64 * f).ceil() as usize
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`) as whole CPUs, rounded up.
fn cpu_quantity(env: &IstioEnv, var: &str) -> Result<Option<usize>, EnvError> {
    let Some(raw) = env.get(var)? else {
        return Ok(None);
    };
    let cores = match raw.strip_suffix('m') {
        Some(m) => m.parse::<f64>().map(|m| m / 1000.0),
        None => raw.parse::<f64>(),
    }
    .map_err(|e| EnvError::invalid(var, raw, e.to_string()))?;
    if !cores.is_finite() || cores <= 0.0 || cores > MAX_WORKER_THREADS as f64 {
        return Err(EnvError::invalid(
            var,
            raw,
            format!("must be a positive CPU quantity of at most {MAX_WORKER_THREADS}"),
        ));
    }
    Ok(Some(cores.ceil() as usize))
}

/// How long connections may finish after SIGTERM: `CONNECTION_TERMINATION_DEADLINE`, else
/// a few seconds less than `TERMINATION_GRACE_PERIOD_SECONDS` (5 s less above 10 s, else 1 s
/// less; at least 1 s) so we close cleanly before Kubernetes' SIGKILL; `None` when neither is
/// set.
pub fn drain_deadline(env: &IstioEnv) -> Result<Option<Duration>, EnvError> {
    const DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
    const GRACE: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
    if let Some(v) = env.get(DEADLINE)? {
        return crate::duration::parse_duration(v)
            .map(Some)
            .map_err(|e| EnvError::invalid(DEADLINE, v, e));
    }
    let Some(v) = env.get(GRACE)? else {
        return Ok(None);
    };
    let secs: u64 = v
        .parse()
        .map_err(|e: std::num::ParseIntError| EnvError::invalid(GRACE, v, e.to_string()))?;
    let keep = if secs > 10 { 5 } else { 1 };
    let secs = secs.saturating_sub(keep).max(1);
    Ok(Some(Duration::from_secs(secs)))
}
