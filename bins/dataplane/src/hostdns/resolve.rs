//! The I/O side: a hostname's A and AAAA records asked of the proxy's upstream resolvers
//! (the DNS proxy's [`Forwarder`]: `/etc/resolv.conf`'s name servers, a fresh socket, random
//! port and ID per query, answers matched on ID and question), the answer checked and cached
//! by the sans-IO core.
//!
//! The hostname is taken as fully qualified (a trailing dot is added): no search list, as
//! the ztunnel's own `resolv.conf` search list names the ztunnel's namespace, not the
//! workload's. Concurrent lookups of one host share one query; lookups in flight are bounded,
//! past the bound a connection fails at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::cache::{Cache, Limits, Outcome, Own, Refused};
use crate::dns::{Forwarder, UpstreamSockets};

/// Resolves hostname workloads' hostnames, with the cache and the safety check.
pub struct Resolver {
    forwarder: Arc<Forwarder>,
    sockets: Arc<dyn UpstreamSockets>,
    own: Own,
    cache: Mutex<Cache>,
    in_flight: Semaphore,
    /// The lookups in flight, by host (at most [`MAX_IN_FLIGHT`]): later askers wait on them.
    pending: Mutex<HashMap<Box<str>, watch::Receiver<Option<Outcome>>>>,
}

/// Removes a lookup from `pending` when it ends, finished or abandoned.
struct Unpend<'a> {
    pending: &'a Mutex<HashMap<Box<str>, watch::Receiver<Option<Outcome>>>>,
    host: &'a str,
}

impl Drop for Unpend<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.host);
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("own", &self.own).finish()
    }
}

/// Lookups in flight at most (each holds two sockets).
pub const MAX_IN_FLIGHT: usize = 64;

impl Resolver {
    /// Asks `forwarder`'s upstreams through `sockets`; refuses answers into `own`.
    pub fn new(
        forwarder: Arc<Forwarder>,
        sockets: Arc<dyn UpstreamSockets>,
        own: Own,
        limits: Limits,
    ) -> Self {
        Resolver {
            forwarder,
            sockets,
            own,
            cache: Mutex::new(Cache::new(limits)),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host` (cached while their TTL lasts), checked; or why there are none.
    /// Concurrent lookups of one host share one query (the first asks, the others wait for
    /// its outcome).
    pub async fn lookup(&self, host: &str) -> Outcome {
        if let Some(hit) = self.cached(host) {
            return hit;
        }
        let failed = |reason: &str| Refused::Lookup {
            host: host.to_owned(),
            reason: reason.to_owned(),
        };
        let joined = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match pending.get(host) {
                Some(rx) => Ok(rx.clone()),
                None => {
                    let Ok(permit) = self.in_flight.try_acquire() else {
                        return Err(failed("too many lookups in flight"));
                    };
                    let (tx, rx) = watch::channel(None);
                    pending.insert(host.into(), rx);
                    Err((tx, permit))
                }
            }
        };
        match joined {
            Ok(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_else(|| Err(failed("no outcome"))),
                Err(_) => Err(failed("the shared lookup was abandoned")),
            },
            Err((tx, _permit)) => {
                let _gone = Unpend {
                    pending: &self.pending,
                    host,
                };
                let answer = self.ask(host).await;
                let now = Instant::now();
                let outcome = self
                    .cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(host, answer, &self.own, now);
                let _ = tx.send(Some(outcome.clone()));
                outcome
            }
        }
    }

    fn cached(&self, host: &str) -> Option<Outcome> {
        let now = Instant::now();
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host, now)
    }

    /// Both families' records; the smallest TTL among them.
    async fn ask(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), Refused> {
        let failed = |reason: String| Refused::Lookup {
            host: host.to_owned(),
            reason,
        };
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let name = Name::from_ascii(&fqdn).map_err(|e| failed(format!("bad name: {e}")))?;
        let (a, aaaa) = tokio::join!(
            self.one(&name, RecordType::A),
            self.one(&name, RecordType::AAAA)
        );
        let (a, aaaa) = match (a, aaaa) {
            (Err(e), Err(_)) => return Err(failed(e)),
            (a, aaaa) => (a.unwrap_or_default(), aaaa.unwrap_or_default()),
        };
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for (ip, t) in a.into_iter().chain(aaaa) {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
            ttl = ttl.min(t);
        }
        Ok((addrs, Duration::from_secs(u64::from(ttl))))
    }

    /// One question's address records, with their TTLs.
    async fn one(&self, name: &Name, ty: RecordType) -> Result<Vec<(IpAddr, u32)>, String> {
        let mut q = Message::new(0, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name.clone(), ty));
        let answer = self
            .forwarder
            .forward(&q, false, self.sockets.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        match answer.metadata.response_code {
            ResponseCode::NoError => {}
            code => return Err(format!("{ty}: {code:?} ({code})")),
        }
        Ok(answer
            .answers
            .iter()
            .filter(|r| r.record_type() == ty)
            .filter_map(|r| r.data.ip_addr().map(|ip| (ip, r.ttl)))
            .collect())
    }
}
