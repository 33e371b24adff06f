//! Shared by the ZDS pod tests (`zds_pods*.rs`): the mesh file, pod
//! descriptions, an agent that feeds `PodEvent`s directly, and connections made from inside a
//! pod's namespace.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use mesh_dataplane::netns::Switch;
use mesh_dataplane::zds::{PodEvent, PodInfo};
use mesh_tests::NetNs;
use mesh_tests::inproc::InprocMesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub fn config() -> String {
    let mut c = String::from(
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\nspec:\n  address: 127.221.0.1\n  workloads: [ns/a, ns/b]\n",
    );
    for (name, ip) in [("a", 2), ("b", 3)] {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{address: 10.221.0.{ip}, serviceAccount: {name}}}\n"
        ));
    }
    c
}

pub fn info(uid: &str, name: &str, sa: &str) -> PodInfo {
    PodInfo {
        uid: uid.to_owned(),
        name: name.to_owned(),
        namespace: "ns".to_owned(),
        service_account: sa.to_owned(),
        trust_domain: String::new(),
    }
}

pub fn netns_fd(ns: &NetNs) -> OwnedFd {
    std::fs::File::open(format!("/var/run/netns/{}", ns.name))
        .unwrap()
        .into()
}

/// The agent's side of the event channel: sends an event, returns the reply.
pub struct Agent(pub mpsc::Sender<PodEvent>);

impl Agent {
    pub fn ask(
        &self,
        ev: impl FnOnce(oneshot::Sender<Result<(), String>>) -> PodEvent,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.0.blocking_send(ev(tx)).unwrap();
        rx.blocking_recv().unwrap()
    }
    pub fn add(&self, info: PodInfo, netns: OwnedFd) -> Result<(), String> {
        self.ask(|reply| PodEvent::Add { info, netns, reply })
    }
    pub fn keep(&self, uid: &str) -> Result<(), String> {
        let uid = uid.to_owned();
        self.ask(|reply| PodEvent::Keep { uid, reply })
    }
    pub fn del(&self, uid: &str) -> Result<(), String> {
        let uid = uid.to_owned();
        self.ask(|reply| PodEvent::Del { uid, reply })
    }
    pub fn snapshot(&self) -> Result<(), String> {
        self.ask(|reply| PodEvent::SnapshotSent { reply })
    }
    pub fn connected(&self) {
        self.0.blocking_send(PodEvent::Connected).unwrap();
    }
}

/// Opens a connection from inside the pod of `rt` to `dst`.
pub fn dial(rt: &tokio::runtime::Runtime, dst: &str) -> std::io::Result<TcpStream> {
    let dst: SocketAddr = dst.parse().unwrap();
    rt.block_on(rt.spawn(async move {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(dst))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))?
    }))
    .unwrap()
}

/// Writes `msg` on `s` (a stream of `rt`) and reads the echo back.
pub fn echo(
    rt: &tokio::runtime::Runtime,
    mut s: TcpStream,
    msg: &'static [u8],
) -> (TcpStream, std::io::Result<Vec<u8>>) {
    rt.block_on(rt.spawn(async move {
        let r = async {
            s.write_all(msg).await?;
            let mut buf = vec![0; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("echo timed out"))??;
            Ok(buf)
        }
        .await;
        (s, r)
    }))
    .unwrap()
}

/// The in-pod listeners, as `address what`.
pub fn in_pod_listeners(mesh: &InprocMesh) -> Vec<String> {
    let mut v: Vec<String> = mesh
        .proxy("n1")
        .listening()
        .iter()
        .filter(|l| l.what.contains("(in-pod)"))
        .map(|l| format!("{} {}", l.addr, l.what))
        .collect();
    v.sort();
    v
}

/// A switch `switch` with the pods `names` attached at 10.221.`subnet`.2, .3… (/24), each set
/// up by `setup`, and an echo server on 0.0.0.0:8080 in each pod (on that pod's runtime,
/// returned in the same order). `None` when not root.
pub fn echo_pods(
    switch: &str,
    names: &[&str],
    subnet: u8,
    setup: impl Fn(&NetNs),
) -> Option<(Switch, Vec<NetNs>, Vec<tokio::runtime::Runtime>)> {
    let mut sw = mesh_tests::switch(switch)?;
    let pods: Vec<NetNs> = names.iter().map(|n| NetNs::create(n).unwrap()).collect();
    for (i, ns) in pods.iter().enumerate() {
        sw.attach(ns.pod(), &[&format!("10.221.{subnet}.{}/24", i + 2)])
            .unwrap();
        setup(ns);
    }
    let rts: Vec<tokio::runtime::Runtime> = pods.iter().map(NetNs::runtime).collect();
    for rt in &rts {
        rt.block_on(rt.spawn(mesh_tests::echo_server("0.0.0.0:8080".parse().unwrap())))
            .unwrap();
    }
    Some((sw, pods, rts))
}

/// Asserts that `live` (a connection made on `rt`, a pod's runtime) is closed or reset within
/// 5 s: a deleted pod's connection is cut after the drain timeout.
pub fn assert_cut(rt: &tokio::runtime::Runtime, live: TcpStream) {
    let cut = rt.block_on(rt.spawn(async move {
        let mut live = live;
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await
    }));
    match cut.unwrap() {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the deleted pod's connection was not cut: {other:?}"),
    }
}
