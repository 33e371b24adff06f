//! A fake istio-cni node agent speaking ZDS, for tests: the server side of Istio's protocol
//! as istio/istio `cni/pkg/nodeagent/ztunnelserver.go` runs it, written independently of the
//! ztunnel side under test (only the generated `mesh_xds::pb::zds` messages are shared).
//!
//! It listens on a Unix `SOCK_SEQPACKET` socket (a stale socket file is removed, the parent
//! directory created, the file made 0600); a ztunnel connects and sends `ZdsHello`; then the
//! agent sends one `WorkloadRequest` per packet (an `add` with the pod's network namespace as
//! one `SCM_RIGHTS` descriptor) and reads one `WorkloadResponse` (the `Ack`) per request,
//! within 5 s as Istio's agent does. A new ztunnel connection replaces the previous one (Istio
//! sends adds to the latest connection).
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use mesh_tests::fake_cni::{FakeCni, Pod};
//! let dir = tempfile::tempdir()?;
//! let mut agent = FakeCni::bind(&dir.path().join("ztunnel.sock"))?;
//! // … start the ztunnel with `--zds-socket <that path>` …
//! agent.accept().await?;
//! let netns = std::fs::File::open("/proc/self/ns/net")?;
//! assert_eq!(agent.add(&Pod::new("uid-1", "ns", "name", "sa"), &netns).await?, Ok(()));
//! assert_eq!(agent.snapshot_sent().await?, Ok(()));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_xds::pb::zds;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, bind, listen,
    recvmsg, sendmsg, socket,
};
use prost::Message;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use zds::workload_request::Payload;

/// Istio's agent waits this long for the hello and for each ack (`readWriteDeadline`).
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What the ztunnel answered: `Ok(())` for an empty `Ack.error`, else the error text.
pub type Ack = Result<(), String>;

/// A pod as the agent describes it (`AddWorkload.uid` + `WorkloadInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl Pod {
    pub fn new(uid: &str, namespace: &str, name: &str, service_account: &str) -> Pod {
        Pod {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
            service_account: service_account.into(),
        }
    }

    fn add_request(&self) -> zds::WorkloadRequest {
        zds::WorkloadRequest {
            payload: Some(Payload::Add(zds::AddWorkload {
                uid: self.uid.clone(),
                workload_info: Some(zds::WorkloadInfo {
                    name: self.name.clone(),
                    namespace: self.namespace.clone(),
                    service_account: self.service_account.clone(),
                }),
            })),
        }
    }
}

/// The fake agent: its listening socket, the current ztunnel connection, and the pods it has
/// handed over (re-sent by [`FakeCni::resync`], as Istio's agent re-sends its cache).
pub struct FakeCni {
    path: PathBuf,
    listener: UnixListener,
    conn: Option<UnixStream>,
    pods: BTreeMap<String, (Pod, OwnedFd)>,
}

impl FakeCni {
    /// Listens at `path` as Istio's agent does: removes a stale socket file, creates the
    /// parent directory, binds `SOCK_SEQPACKET`, and makes the socket file 0600.
    pub fn bind(path: &Path) -> io::Result<FakeCni> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listen(&sock, Backlog::new(16)?)?;
        let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(sock))?;
        Ok(FakeCni {
            path: path.to_owned(),
            listener,
            conn: None,
            pods: BTreeMap::new(),
        })
    }

    /// The socket path (give it to the ztunnel).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (up to `within`) for a ztunnel to connect and reads its hello; returns the
    /// hello's `version` (1 = `V1`). The new connection replaces the previous one.
    pub async fn accept_within(&mut self, within: Duration) -> anyhow::Result<i32> {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .context("no ztunnel connected")??;
        self.conn = Some(stream);
        let (bytes, nfds) = self.recv().await?;
        if nfds != 0 {
            bail!("the ztunnel's hello carried {nfds} descriptors");
        }
        let hello = zds::ZdsHello::decode(&bytes[..]).context("hello is not a ZdsHello")?;
        Ok(hello.version)
    }

    /// [`FakeCni::accept_within`] 10 s.
    pub async fn accept(&mut self) -> anyhow::Result<i32> {
        self.accept_within(Duration::from_secs(10)).await
    }

    /// Hands a pod over with its network namespace (any descriptor: `/proc/self/ns/net`, a
    /// `/run/netns/<name>` file, or something that is not a namespace at all) and returns the
    /// ack. The pod is remembered for [`FakeCni::resync`].
    pub async fn add(&mut self, pod: &Pod, netns: &impl AsFd) -> anyhow::Result<Ack> {
        let keep = netns.as_fd().try_clone_to_owned()?;
        self.pods.insert(pod.uid.clone(), (pod.clone(), keep));
        let bytes = pod.add_request().encode_to_vec();
        self.request(&bytes, &[netns.as_fd()]).await
    }

    /// [`FakeCni::add`] with the namespace file at `path` (e.g. `/proc/self/ns/net`).
    pub async fn add_path(&mut self, pod: &Pod, path: &Path) -> anyhow::Result<Ack> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        self.add(pod, &f).await
    }

    /// `KeepWorkload` (only meaningful before `snapshot_sent`).
    pub async fn keep(&mut self, uid: &str) -> anyhow::Result<Ack> {
        let keep = zds::KeepWorkload { uid: uid.into() };
        self.send_request(Payload::Keep(keep)).await
    }

    /// `DelWorkload`; the pod is forgotten.
    pub async fn del(&mut self, uid: &str) -> anyhow::Result<Ack> {
        self.pods.remove(uid);
        let del = zds::DelWorkload { uid: uid.into() };
        self.send_request(Payload::Del(del)).await
    }

    /// `SnapshotSent`.
    pub async fn snapshot_sent(&mut self) -> anyhow::Result<Ack> {
        self.send_request(Payload::SnapshotSent(zds::SnapshotSent {}))
            .await
    }

    /// What Istio's agent does on every new connection (`sendSnapshot`): each pod it has, as
    /// an `add` with its namespace, then `snapshot_sent`. Returns each pod's ack, then the
    /// snapshot's.
    pub async fn resync(&mut self) -> anyhow::Result<(Vec<(String, Ack)>, Ack)> {
        let mut acks = Vec::new();
        let pods: Vec<(Pod, OwnedFd)> = self
            .pods
            .values()
            .map(|(p, fd)| Ok((p.clone(), fd.try_clone()?)))
            .collect::<io::Result<_>>()?;
        for (pod, fd) in pods {
            let bytes = pod.add_request().encode_to_vec();
            acks.push((pod.uid.clone(), self.request(&bytes, &[fd.as_fd()]).await?));
        }
        Ok((acks, self.snapshot_sent().await?))
    }

    /// Forgets a pod without telling the ztunnel (it was deleted while no ztunnel was
    /// connected): the next [`FakeCni::resync`] leaves it out.
    pub fn forget(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// Sends any bytes with any descriptors (an attacker's or a broken agent's message) and
    /// returns the ack.
    pub async fn send_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> anyhow::Result<Ack> {
        self.request(bytes, fds).await
    }

    /// Closes the connection to the ztunnel (the listener stays: the ztunnel reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Istio's keepalive (`CheckAlive`): a short read that must time out, since the ztunnel
    /// speaks only when spoken to. True when nothing (no data, no EOF) came within `within`.
    pub async fn quiet_for(&mut self, within: Duration) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        let fd = conn.as_raw_fd();
        let mut buf = [0u8; 1];
        let peek = async {
            loop {
                conn.readable().await?;
                match conn.try_io(Interest::READABLE, || {
                    nix::sys::socket::recv(fd, &mut buf, MsgFlags::MSG_PEEK)
                        .map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        tokio::time::timeout(within, peek).await.is_err()
    }

    /// Whether the ztunnel closed the connection (EOF) within `within`.
    pub async fn closed_by_peer(&mut self, within: Duration) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return true;
        };
        let mut buf = [0u8; 1];
        let fd = conn.as_raw_fd();
        let read = async {
            loop {
                conn.readable().await?;
                match conn.try_io(Interest::READABLE, || {
                    nix::sys::socket::recv(fd, &mut buf, MsgFlags::empty()).map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        matches!(
            tokio::time::timeout(within, read).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn send_request(&mut self, p: Payload) -> anyhow::Result<Ack> {
        let bytes = zds::WorkloadRequest { payload: Some(p) }.encode_to_vec();
        self.request(&bytes, &[]).await
    }

    /// One request and its ack, as Istio's `SendMsgAndWaitForAck`.
    async fn request(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> anyhow::Result<Ack> {
        let conn = self.conn.as_ref().context("no ztunnel connected")?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let fd = conn.as_raw_fd();
        let iov = [IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        tokio::time::timeout(
            DEADLINE,
            conn.async_io(Interest::WRITABLE, || {
                sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }),
        )
        .await
        .context("send timed out")??;
        let (reply, nfds) = self.recv().await?;
        if nfds != 0 {
            bail!("the ztunnel's ack carried {nfds} descriptors");
        }
        let resp = zds::WorkloadResponse::decode(&reply[..]).context("not a WorkloadResponse")?;
        match resp.payload {
            Some(zds::workload_response::Payload::Ack(a)) if a.error.is_empty() => Ok(Ok(())),
            Some(zds::workload_response::Payload::Ack(a)) => Ok(Err(a.error)),
            None => bail!("WorkloadResponse without an ack"),
        }
    }

    /// One packet from the ztunnel within [`DEADLINE`]: its bytes and how many descriptors
    /// came with it (closed). EOF and truncation are errors, as in Istio's `readProto`.
    async fn recv(&mut self) -> anyhow::Result<(Vec<u8>, usize)> {
        let conn = self.conn.as_ref().context("no ztunnel connected")?;
        let fd = conn.as_raw_fd();
        let mut buf = [0u8; 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let read = async {
            loop {
                conn.readable().await?;
                let got = conn.try_io(Interest::READABLE, || {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let m =
                        recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
                    let nfds = m.cmsgs().map(|c| c.count()).unwrap_or(usize::MAX);
                    Ok((m.bytes, m.flags, nfds))
                });
                match got {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        let (n, flags, nfds) = tokio::time::timeout(DEADLINE, read)
            .await
            .context("no answer from the ztunnel within 5 s")??;
        if n == 0 {
            bail!("the ztunnel closed the connection");
        }
        if flags.contains(MsgFlags::MSG_TRUNC) {
            bail!("truncated message from the ztunnel");
        }
        Ok((buf[..n].to_vec(), nfds))
    }
}
