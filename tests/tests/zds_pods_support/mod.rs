//! Shared by the ZDS pod tests (`zds_pods.rs`, `zds_pods_e2e.rs`): the mesh file, pod
//! descriptions, an agent that feeds `PodEvent`s directly, and connections made from inside a
//! pod's namespace.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

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
