//! Two "pods" for the capture topologies (root only): network namespaces joined by a veth
//! pair, created for one run and deleted when dropped, built with
//! [`mesh_dataplane::netns`]. The load generator runs on threads that entered pod A, the
//! servers on a runtime whose workers live in pod B.

use std::net::{IpAddr, Ipv4Addr};

use mesh_dataplane::capture::CaptureSpec;
use mesh_dataplane::netns::{self, Pod};

/// Pod A's address (the client workload).
pub(crate) const POD_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 2));
/// Pod B's address (the server workload).
pub(crate) const POD_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 3));
/// The service VIP in the pods' mesh.
pub(crate) const POD_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 100));

/// The two namespaces.
pub(crate) struct Pods {
    pub(crate) a: String,
    pub(crate) b: String,
    /// The pods themselves: dropping them deletes the namespaces and their link.
    pods: [Pod; 2],
}

impl Pods {
    /// Creates the namespaces and their link; needs root.
    pub(crate) fn create() -> anyhow::Result<Pods> {
        let id = std::process::id();
        let a = Pod::create(&format!("mbench-a-{id}"))?;
        let b = Pod::create(&format!("mbench-b-{id}"))?;
        netns::link(
            &a,
            "va",
            &[&format!("{POD_A}/24")],
            &b,
            "vb",
            &[&format!("{POD_B}/24")],
        )?;
        Ok(Pods {
            a: a.name().to_owned(),
            b: b.name().to_owned(),
            pods: [a, b],
        })
    }

    /// Installs the default capture rules (`meshctl capture install`) in both pods.
    pub(crate) fn capture(&self) -> anyhow::Result<()> {
        for pod in &self.pods {
            pod.capture(&CaptureSpec::default(), false)?;
        }
        Ok(())
    }

    /// A runtime whose worker threads live in pod B (the servers').
    pub(crate) fn runtime_b(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(self.pods[1].runtime(2)?)
    }
}

/// Runs `f` on a thread inside `ns` (threads it starts are inside too), or here if `None`.
pub(crate) fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    match ns {
        None => Ok(f()),
        Some(ns) => Ok(netns::run_in(ns, f)?),
    }
}
