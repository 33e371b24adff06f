//! Readiness: the proxy is ready when every start-up task it registered (config loaded,
//! certificates fetched, listeners bound) has finished. Served as `/healthz/ready` with
//! Istio's answers: 200 `ready`, or 500 `not ready, pending: …`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;

use crate::http::{Response, Router};

/// Shared readiness state. Cloning shares it. A task registered twice (by two guards) stays
/// pending until both guards are dropped.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// Marks its task pending until dropped (or [`Pending::done`]).
#[derive(Debug)]
pub struct Pending {
    readiness: Readiness,
    task: String,
}

impl Pending {
    /// The task finished.
    pub fn done(self) {}
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.readiness.lock();
        if let Some(n) = pending.get_mut(&self.task) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(&self.task);
            }
        }
    }
}

impl Readiness {
    /// Ready (nothing pending).
    pub fn new() -> Readiness {
        Readiness::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `task` as pending until the returned guard is dropped.
    pub fn register(&self, task: &str) -> Pending {
        *self.lock().entry(task.to_owned()).or_default() += 1;
        Pending {
            readiness: self.clone(),
            task: task.to_owned(),
        }
    }

    /// The pending tasks, sorted; empty when ready.
    pub fn pending(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// `/healthz/ready`.
    pub fn router(&self) -> Router {
        let r = self.clone();
        Router::new().route("/healthz/ready", move |req| {
            if req.method != http::Method::GET {
                return Response::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            }
            let pending = r.pending();
            if pending.is_empty() {
                Response::text(StatusCode::OK, "ready\n")
            } else {
                Response::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("not ready, pending: {}\n", pending.join(", ")),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(r: &Router) -> Response {
        r.handle(&crate::http::Request {
            method: http::Method::GET,
            path: "/healthz/ready".into(),
            query: vec![],
            body: bytes::Bytes::new(),
            headers: http::HeaderMap::new(),
            peer: None,
            local: None,
        })
    }

    #[test]
    fn ready_when_tasks_finish() {
        let r = Readiness::new();
        let router = r.router();
        let a = r.register("config");
        let b = r.register("certificates");
        let resp = get(&router);
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            &resp.body[..],
            b"not ready, pending: certificates, config\n"
        );
        a.done();
        drop(b);
        let resp = get(&router);
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(&resp.body[..], b"ready\n");
    }

    #[test]
    fn a_task_registered_twice_waits_for_both_guards() {
        let r = Readiness::new();
        let early = r.register("first xDS state");
        let late = r.register("first xDS state");
        drop(early);
        assert_eq!(r.pending(), vec!["first xDS state".to_owned()]);
        late.done();
        assert!(r.pending().is_empty());
    }
}
