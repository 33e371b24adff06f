//! A fake Kubernetes API server for the Kubernetes L7 source, over plain HTTP/1.1 (hyper):
//! namespaced lists with a resourceVersion, watches
//! (`?watch=true&resourceVersion=N&allowWatchBookmarks=true`) streaming JSON lines (`ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK`), compaction ([`FakeKube::expire`]: a watch from an older
//! resourceVersion gets an `ERROR` event with code 410, or an HTTP 410, so the client relists),
//! errors ([`FakeKube::fail`]: every request a 500) and an outage ([`FakeKube::set_down`]:
//! connections refused… by closing them). Requests are recorded, so a test can assert what
//! the proxy asked for (namespaces, methods). Paths as the API server's:
//! `/apis/<group>/<version>/namespaces/<ns>/<plural>`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// One recorded request: method and path with query.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
}

/// A watch event of the server's log.
#[derive(Debug, Clone)]
struct Logged {
    rv: u64,
    /// `<plural>/<ns>`.
    at: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// `<plural>/<ns>` → name → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Logged>,
    fail: Option<u16>,
    down: bool,
    /// Answer a stale watch with HTTP 410 instead of an `ERROR` event.
    gone_as_http: bool,
    /// `<plural>/<ns>` → a list this many objects long, each `pad` bytes of label.
    huge_list: BTreeMap<String, (usize, usize)>,
    /// `<plural>/<ns>` whose watches stream objects without end.
    endless: Vec<String>,
    seen: Vec<Seen>,
}

/// The fake API server. Cheap to clone; stops with the runtime.
#[derive(Clone)]
pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Logged>,
    /// Ends every open watch (an outage, a 500 phase, compaction).
    cut: broadcast::Sender<()>,
}

impl FakeKube {
    /// Serves on `addr` (port 0: any).
    pub async fn start(addr: SocketAddr) -> FakeKube {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (events, _) = broadcast::channel(4096);
        let (cut, _) = broadcast::channel(16);
        let fake = FakeKube {
            addr: l.local_addr().unwrap(),
            state: Arc::default(),
            events,
            cut,
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                if f.lock().down {
                    drop(tcp);
                    continue;
                }
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Writes a kubeconfig pointing at this server over plain HTTP into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let p = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: proxy\n  user: {{token: proxy-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: proxy, namespace: default}}\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Creates or replaces `object` (its `metadata.namespace` and `name`) under `plural`.
    pub fn set(&self, plural: &str, object: Value) {
        let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let at = format!("{plural}/{ns}");
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let map = st.objects.entry(at.clone()).or_default();
        let kind = if map.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        map.insert(name, object.clone());
        self.log(&mut st, at, kind, object);
    }

    /// Puts `object` into the list and watches of namespace `listed_in`, whatever its own
    /// `metadata.namespace` says (a misbehaving or compromised API server, or a proxy in front
    /// of it).
    pub fn inject(&self, plural: &str, listed_in: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let at = format!("{plural}/{listed_in}");
        let mut st = self.lock();
        st.rv += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects
            .entry(at.clone())
            .or_default()
            .insert(name, object.clone());
        self.log(&mut st, at, "ADDED", object);
    }

    /// Deletes `namespace/name` under `plural`.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let at = format!("{plural}/{namespace}");
        let mut st = self.lock();
        let Some(mut object) = st.objects.get_mut(&at).and_then(|m| m.remove(name)) else {
            return;
        };
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.log(&mut st, at, "DELETED", object);
    }

    fn log(&self, st: &mut State, at: String, kind: &'static str, object: Value) {
        let e = Logged {
            rv: st.rv,
            at,
            kind,
            object,
        };
        st.log.push(e.clone());
        let _ = self.events.send(e);
    }

    /// Compacts history: every resourceVersion so far is too old to watch from, and the open
    /// watches get an `ERROR` 410 event (or, with `as_http`, end, and the next watch gets an
    /// HTTP 410).
    pub fn expire(&self, as_http: bool) {
        let mut st = self.lock();
        st.compacted = st.rv + 1;
        st.gone_as_http = as_http;
        st.rv += 1;
        drop(st);
        let _ = self.cut.send(());
    }

    /// Answers every request with `status` (e.g. 500), ending the open watches; `None` heals.
    pub fn fail(&self, status: Option<u16>) {
        self.lock().fail = status;
        let _ = self.cut.send(());
    }

    /// Closes every connection, new and open, while `down`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        let _ = self.cut.send(());
    }

    /// Lists of `<plural>/<ns>` become `count` objects with `pad` bytes of label each.
    pub fn huge_list(&self, plural: &str, ns: &str, count: usize, pad: usize) {
        self.lock()
            .huge_list
            .insert(format!("{plural}/{ns}"), (count, pad));
    }

    /// Watches of `<plural>/<ns>` stream new objects without end.
    pub fn endless_watch(&self, plural: &str, ns: &str) {
        self.lock().endless.push(format!("{plural}/{ns}"));
        let _ = self.cut.send(());
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<Stream> {
        let uri = req.uri().to_string();
        if std::env::var_os("FAKE_KUBE_DEBUG").is_some() {
            eprintln!("fake kube: {} {uri}", req.method());
        }
        let mut st = self.lock();
        st.seen.push(Seen {
            method: req.method().to_string(),
            uri: uri.clone(),
        });
        if st.down {
            let mut r = status(503, "down");
            r.headers_mut().insert(
                "connection",
                hyper::header::HeaderValue::from_static("close"),
            );
            return r;
        }
        if let Some(code) = st.fail {
            return status(code, "injected failure");
        }
        if req.method() != hyper::Method::GET {
            return status(405, "read only");
        }
        let path = req.uri().path().to_owned();
        let q: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // apis/<group>/<version>/namespaces/<ns>/<plural>
        let [_, group, version, "namespaces", ns, plural] = parts[..] else {
            return status(404, "not found");
        };
        let at = format!("{plural}/{ns}");
        let api = format!("{group}/{version}");
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(
                &mut st,
                at,
                &api,
                from,
                q.contains_key("allowWatchBookmarks"),
            );
        }
        let items: Vec<Value> = match st.huge_list.get(&at) {
            Some(&(count, pad)) => (0..count).map(|i| filler(ns, i, pad)).collect(),
            None => st
                .objects
                .get(&at)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
        };
        let list = json!({
            "apiVersion": api, "kind": "List",
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        let (tx, body) = Stream::channel();
        let _ = tx.try_send(Bytes::from(serde_json::to_vec(&list).unwrap()));
        ok(body)
    }

    fn watch(
        &self,
        st: &mut State,
        at: String,
        api: &str,
        from: u64,
        bookmarks: bool,
    ) -> hyper::Response<Stream> {
        let (tx, body) = Stream::channel();
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        if from < st.compacted {
            if st.gone_as_http {
                return status(410, "too old resource version");
            }
            let _ = tx.try_send(line(&gone));
            return ok(body);
        }
        let backlog: Vec<Logged> = st
            .log
            .iter()
            .filter(|e| e.rv > from && e.at == at)
            .cloned()
            .collect();
        let endless = st.endless.contains(&at);
        let mut events = self.events.subscribe();
        let mut cut = self.cut.subscribe();
        let api = api.to_owned();
        let rv = st.rv;
        let fake = self.clone();
        tokio::spawn(async move {
            for e in backlog {
                if tx.send(event(&e)).await.is_err() {
                    return;
                }
            }
            let mut n = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                if endless {
                    // As fast as the client reads: new objects, never a pause.
                    n += 1;
                    let ns = at.split('/').nth(1).unwrap_or("x");
                    let e = json!({"type": "ADDED", "object": filler(ns, n, 64)});
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let msg = tokio::select! {
                    // An outage or failure cuts before any later event goes out.
                    biased;
                    _ = cut.recv() => {
                        if std::env::var_os("FAKE_KUBE_DEBUG").is_some() {
                            eprintln!("fake kube: watch of {at} cut");
                        }
                        // Compaction tells open watches with an ERROR 410 event.
                        let expired = {
                            let st = fake.lock();
                            st.compacted > rv && !st.gone_as_http
                        };
                        if expired {
                            let _ = tx.send(line(&gone)).await;
                        }
                        return;
                    }
                    e = events.recv() => match e {
                        Ok(e) if e.at == at => {
                            let st = fake.lock();
                            if st.down || st.fail.is_some() {
                                return;
                            }
                            drop(st);
                            event(&e)
                        }
                        Ok(_) => continue,
                        Err(_) => return,
                    },
                    _ = tick.tick() => {
                        if !bookmarks {
                            continue;
                        }
                        let rv = fake.lock().rv;
                        line(&json!({"type": "BOOKMARK", "object": {
                            "apiVersion": api, "kind": "Bookmark",
                            "metadata": {"resourceVersion": rv.to_string()}}}))
                    }
                };
                if tx.send(msg).await.is_err() {
                    if std::env::var_os("FAKE_KUBE_DEBUG").is_some() {
                        eprintln!("fake kube: watch of {at} closed by the client");
                    }
                    return;
                }
            }
        });
        ok(body)
    }
}

/// A valid-looking VirtualService of namespace `ns`, number `i`, with `pad` bytes of label.
fn filler(ns: &str, i: usize, pad: usize) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": format!("flood-{i}"), "namespace": ns,
                     "resourceVersion": "1", "labels": {"pad": "x".repeat(pad)}},
        "spec": {"hosts": [format!("flood-{i}.{ns}.svc.cluster.local")],
                 "http": [{"route": [{"destination": {"host": "nowhere.invalid"}}]}]},
    })
}

fn event(e: &Logged) -> Bytes {
    line(&json!({"type": e.kind, "object": e.object}))
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap();
    b.push(b'\n');
    Bytes::from(b)
}

fn ok(body: Stream) -> hyper::Response<Stream> {
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn status(code: u16, message: &str) -> hyper::Response<Stream> {
    let (tx, body) = Stream::channel();
    let s = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": message, "code": code});
    let _ = tx.try_send(Bytes::from(serde_json::to_vec(&s).unwrap()));
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// A response body fed by a channel; ends when the sender is dropped.
pub struct Stream(mpsc::Receiver<Bytes>);

impl Stream {
    fn channel() -> (mpsc::Sender<Bytes>, Stream) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Stream(rx))
    }
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
