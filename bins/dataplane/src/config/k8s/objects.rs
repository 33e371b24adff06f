//! [`KubeObjects`]: the Kubernetes objects seen so far, each checked alone on arrival, and the
//! [`Resources`] they make.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::super::errors::{ConfigIssue, Validator};
use super::super::l7file::check_alone;
use super::super::parse::{Mode, Raw, Resources};
use super::kinds::{KubeKind, KubeLimits, WatchKey};

/// An object's key: kind, namespace, name.
type ObjKey = (KubeKind, String, String);

/// The top-level fields of a Kubernetes object: `spec` is read, `status` (written by istiod
/// and controllers) is not config, the rest is the object's identity.
const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// What applying one object did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The object is new or changed: the resources changed.
    Changed,
    /// The same object as held (a resync, a status-only update): nothing changed.
    Unchanged,
    /// The object was rejected, each problem named; the last good version of it (if any)
    /// stays. `fresh` is false when the same object was already rejected for the same
    /// reasons (a relist), so callers count it once.
    Rejected {
        /// The problems found.
        issues: Vec<ConfigIssue>,
        /// Whether this rejection is new.
        fresh: bool,
    },
}

/// The objects held, the rejected ones, and the buffers of the relists under way.
#[derive(Debug, Default)]
pub struct KubeObjects {
    limits: KubeLimits,
    /// Accepted objects as L7-file documents (`apiVersion`, `kind`, `metadata`, `spec`).
    objects: BTreeMap<ObjKey, serde_json::Value>,
    /// Objects whose latest version was rejected, with the reasons (to count each once).
    rejected: HashMap<ObjKey, Vec<ConfigIssue>>,
    /// Per watch relisting: the objects listed so far (`None`: rejected).
    listing: HashMap<WatchKey, BTreeMap<ObjKey, Option<serde_json::Value>>>,
}

impl KubeObjects {
    /// An empty set capped by `limits`.
    pub fn new(limits: KubeLimits) -> KubeObjects {
        KubeObjects {
            limits,
            ..KubeObjects::default()
        }
    }

    /// Number of objects held (accepted).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Number of objects whose latest version is rejected.
    pub fn rejected(&self) -> usize {
        self.rejected.len()
    }

    /// A relist of `watch` starts: its objects stay until [`init_done`](Self::init_done).
    pub fn init(&mut self, watch: &WatchKey) {
        self.listing.insert(watch.clone(), BTreeMap::new());
    }

    /// An object listed during a relist of `watch`.
    pub fn init_apply(&mut self, watch: &WatchKey, obj: &serde_json::Value) -> Applied {
        let relisted = self
            .listing
            .get(watch)
            .is_some_and(|l| l.contains_key(&key_of(watch, obj)));
        let held = self.objects.len() - self.held_by(watch);
        let over = !relisted && held + self.buffered() >= self.limits.max_objects;
        let (key, doc, applied) = match self.check(watch, obj, over) {
            (key, Ok(doc)) => {
                self.rejected.remove(&key);
                (key, Some(doc), Applied::Changed)
            }
            (key, Err(issues)) => (key.clone(), None, self.reject(key, issues)),
        };
        // Past the cap nothing more is buffered, not even the names of rejected objects.
        if !over {
            self.listing
                .entry(watch.clone())
                .or_default()
                .insert(key, doc);
        }
        applied
    }

    /// The relist of `watch` is complete: its listed objects replace those it held, except
    /// that an object rejected in this list keeps its last good version. Returns whether
    /// anything changed.
    pub fn init_done(&mut self, watch: &WatchKey) -> bool {
        let listed = self.listing.remove(watch).unwrap_or_default();
        let mut next = BTreeMap::new();
        for (key, doc) in &listed {
            let good = doc.as_ref().or_else(|| self.objects.get(key));
            if let Some(d) = good {
                next.insert(key.clone(), d.clone());
            }
        }
        // Rejections of objects gone from the list are forgotten.
        self.rejected.retain(|k, _| {
            !(k.0 == watch.kind && k.1 == watch.namespace) || listed.contains_key(k)
        });
        let mut changed = false;
        let old: Vec<ObjKey> = self.keys_of(watch).collect();
        for k in old {
            if !next.contains_key(&k) {
                self.objects.remove(&k);
                changed = true;
            }
        }
        for (k, d) in next {
            if self.objects.get(&k) != Some(&d) {
                self.objects.insert(k, d);
                changed = true;
            }
        }
        changed
    }

    /// An object added or modified in `watch`.
    pub fn apply(&mut self, watch: &WatchKey, obj: &serde_json::Value) -> Applied {
        let held = self.objects.contains_key(&key_of(watch, obj));
        let over = !held && self.objects.len() + self.buffered() >= self.limits.max_objects;
        match self.check(watch, obj, over) {
            (key, Ok(doc)) => {
                self.rejected.remove(&key);
                if self.objects.get(&key) == Some(&doc) {
                    return Applied::Unchanged;
                }
                self.objects.insert(key, doc);
                Applied::Changed
            }
            (key, Err(issues)) => self.reject(key, issues),
        }
    }

    /// An object deleted in `watch`. Returns whether one was held.
    pub fn delete(&mut self, watch: &WatchKey, obj: &serde_json::Value) -> bool {
        let key = key_of(watch, obj);
        self.rejected.remove(&key);
        self.objects.remove(&key).is_some()
    }

    /// Forgets every object of `watch` (its namespace no longer concerns the proxy). Returns
    /// whether one was held.
    pub fn forget(&mut self, watch: &WatchKey) -> bool {
        self.listing.remove(watch);
        self.rejected
            .retain(|k, _| !(k.0 == watch.kind && k.1 == watch.namespace));
        let old: Vec<ObjKey> = self.keys_of(watch).collect();
        for k in &old {
            self.objects.remove(k);
        }
        !old.is_empty()
    }

    /// The resources of every object held, for the assembler. Each was checked alone on
    /// arrival, so this reports nothing new; what it does report (nothing, unless a check
    /// changed) is returned with the resources.
    pub fn resources(&self) -> (Arc<Resources>, Vec<ConfigIssue>) {
        let mut v = Validator::default();
        let mut raw = Raw::default();
        for ((kind, ns, name), doc) in &self.objects {
            raw.add_at(&mut v, &location(kind, ns, name), doc.clone(), Mode::L7Only);
        }
        (Arc::new(raw.res), v.issues)
    }

    /// Objects listed by the relists under way (they count against the cap).
    fn buffered(&self) -> usize {
        self.listing.values().map(BTreeMap::len).sum()
    }

    fn held_by(&self, watch: &WatchKey) -> usize {
        self.keys_of(watch).count()
    }

    fn keys_of<'a>(&'a self, watch: &'a WatchKey) -> impl Iterator<Item = ObjKey> + 'a {
        let start = (watch.kind, watch.namespace.clone(), String::new());
        self.objects
            .range(start..)
            .map(|(k, _)| k)
            .take_while(move |k| k.0 == watch.kind && k.1 == watch.namespace)
            .cloned()
    }

    fn reject(&mut self, key: ObjKey, issues: Vec<ConfigIssue>) -> Applied {
        let fresh = self.rejected.get(&key) != Some(&issues);
        // Remembered to count each once, within the object cap: a flood of new names past
        // it is counted every time rather than held.
        if self.rejected.len() < self.limits.max_objects || self.rejected.contains_key(&key) {
            self.rejected.insert(key, issues.clone());
        }
        Applied::Rejected { issues, fresh }
    }

    /// Checks `obj` from `watch` alone: where it comes from, its size, its fields (as the L7
    /// file checks a document). `over` when the object cap is reached.
    fn check(
        &self,
        watch: &WatchKey,
        obj: &serde_json::Value,
        over: bool,
    ) -> (ObjKey, Result<serde_json::Value, Vec<ConfigIssue>>) {
        let key = key_of(watch, obj);
        let name = key.2.clone();
        let mut v = Validator::default();
        let at = location(&watch.kind, &watch.namespace, &name);
        let doc = self.document(&mut v, &at, watch, obj, over);
        if let Some(doc) = &doc {
            let mut raw = Raw::default();
            raw.add_at(&mut v, &at, doc.clone(), Mode::L7Only);
            check_alone(&mut v, &raw.res);
        }
        match doc {
            Some(doc) if v.issues.is_empty() => (key, Ok(doc)),
            _ => (key, Err(v.issues)),
        }
    }

    /// The L7-file document of `obj`, or `None` with the reasons reported: it must be of the
    /// watched kind and namespace (a namespaced watch returning another namespace's object is
    /// refused: no cross-namespace injection), within the size cap, with no unknown
    /// top-level field.
    fn document(
        &self,
        v: &mut Validator,
        at: &str,
        watch: &WatchKey,
        obj: &serde_json::Value,
        over: bool,
    ) -> Option<serde_json::Value> {
        if over {
            let n = self.limits.max_objects;
            v.err(
                at,
                "",
                format!("more than {n} objects (--kube-max-objects); the object is not applied"),
            );
            return None;
        }
        let size = serde_json::to_vec(obj).map_or(usize::MAX, |b| b.len());
        if size > self.limits.max_object_bytes {
            let max = self.limits.max_object_bytes;
            v.err(
                at,
                "",
                format!("{size} bytes is larger than {max} (--kube-max-object-bytes)"),
            );
            return None;
        }
        let fields = obj.as_object()?;
        for k in fields.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
            v.err(
                at,
                k.as_str(),
                "not a field of a Kubernetes object of this kind",
            );
        }
        let kind = watch.kind;
        if str_at(obj, &["kind"]).is_some_and(|k| k != kind.kind) {
            v.err(at, "kind", format!("expected {}", kind.kind));
        }
        let ns = str_at(obj, &["metadata", "namespace"]).unwrap_or_default();
        if ns != watch.namespace {
            let want = &watch.namespace;
            v.err(
                at,
                "metadata.namespace",
                format!("{ns:?} in a watch of namespace {want:?}: refused"),
            );
        }
        if !v.issues.is_empty() {
            return None;
        }
        let meta = fields.get("metadata");
        let pick = |k: &str| meta.and_then(|m| m.get(k)).cloned();
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), pick("name")?);
        metadata.insert("namespace".into(), watch.namespace.clone().into());
        for k in ["labels", "annotations"] {
            if let Some(x) = pick(k).filter(|x| !x.is_null()) {
                metadata.insert(k.into(), x);
            }
        }
        let mut doc = serde_json::Map::new();
        doc.insert("apiVersion".into(), kind.api_version().into());
        doc.insert("kind".into(), kind.kind.into());
        doc.insert("metadata".into(), metadata.into());
        let spec = fields
            .get("spec")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        doc.insert("spec".into(), spec);
        Some(doc.into())
    }
}

/// The key `obj` is held under in `watch`: its name in the watched namespace.
fn key_of(watch: &WatchKey, obj: &serde_json::Value) -> ObjKey {
    let name = str_at(obj, &["metadata", "name"]).unwrap_or("?");
    (watch.kind, watch.namespace.clone(), name.to_owned())
}

/// Where a Kubernetes object is reported: `Kind namespace/name`.
fn location(kind: &KubeKind, ns: &str, name: &str) -> String {
    format!("{} {ns}/{name}", kind.kind)
}

fn str_at<'a>(doc: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = doc;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}
