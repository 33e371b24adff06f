//! The agent's socket: a Unix `SOCK_SEQPACKET` connection (one message per packet, no framing;
//! Istio's agent listens with Go's `unixpacket`), driven by tokio readiness. Descriptors come
//! as `SCM_RIGHTS` ancillary data and are owned ([`OwnedFd`]) the moment they are received,
//! before anything else is looked at, so none can leak.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg,
    sendmsg, socket,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::session::{MAX_FDS, MAX_MESSAGE};

/// One received packet.
pub(crate) struct Packet {
    /// Its length in the connection's buffer ([`Conn::data`]).
    pub(crate) len: usize,
    /// The kernel cut the message (or its control data) to fit our buffers.
    pub(crate) truncated: bool,
    /// The descriptors it carried, owned.
    pub(crate) fds: Vec<OwnedFd>,
}

/// A connection to the agent, with its receive buffers (allocated once per connection).
pub(crate) struct Conn {
    // tokio drives readiness; the socket is SEQPACKET (as Istio's ztunnel does it).
    stream: UnixStream,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
}

/// Checks that `path` can be a Unix socket address (not empty, fits `sun_path`).
pub(crate) fn check_path(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    }
    UnixAddr::new(path).map(|_| ()).map_err(io::Error::from)
}

/// Connects to the agent's socket.
pub(crate) async fn dial(path: &Path) -> io::Result<Conn> {
    let addr = UnixAddr::new(path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let pending = match connect(sock.as_raw_fd(), &addr) {
        Ok(()) => false,
        // A non-blocking Unix connect whose backlog is full completes later (connect(2)).
        Err(Errno::EAGAIN | Errno::EINPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(sock))?;
    if pending {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(Conn {
        stream,
        buf: vec![0; MAX_MESSAGE],
        cmsg: nix::cmsg_space!([RawFd; MAX_FDS]),
    })
}

impl Conn {
    /// The uid of the process on the other end (`SO_PEERCRED`, taken at connect time).
    pub(crate) fn peer_uid(&self) -> io::Result<u32> {
        Ok(self.stream.peer_cred()?.uid())
    }

    /// The bytes of the last packet received.
    pub(crate) fn data(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }

    /// Sends one message (one packet, no descriptors).
    pub(crate) async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let fd = self.stream.as_raw_fd();
        let iov = [IoSlice::new(bytes)];
        self.stream
            .async_io(Interest::WRITABLE, || {
                // MSG_NOSIGNAL: a closed peer is an error here, never a SIGPIPE.
                sendmsg::<()>(fd, &iov, &[], MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
            })
            .await
            .map(|_| ())
    }

    /// Receives one packet; `None` at end of stream (a zero-length read, as Istio's ztunnel
    /// takes it).
    pub(crate) async fn recv(&mut self) -> io::Result<Option<Packet>> {
        let fd = self.stream.as_raw_fd();
        loop {
            self.stream.readable().await?;
            let (buf, cmsg) = (&mut self.buf, &mut self.cmsg);
            match self
                .stream
                .try_io(Interest::READABLE, || recv_once(fd, buf, cmsg))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// One `recvmsg`: descriptors are wrapped as owned first, then the flags are read.
#[allow(unsafe_code)]
fn recv_once(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Option<Packet>> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    // `cmsgs()` refuses a truncated control buffer; ours has room for SCM_MAX_FD descriptors,
    // the most one message can carry, so SCM_RIGHTS data is never cut.
    let ctrunc = match msg.cmsgs() {
        Ok(cmsgs) => {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: the kernel installed `r` in our table for this message;
                        // nothing else refers to it, so it is ours to own and close.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
            false
        }
        Err(_) => true,
    };
    if msg.bytes == 0 {
        return Ok(None);
    }
    let truncated = ctrunc
        || msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok(Some(Packet {
        len: msg.bytes,
        truncated,
        fds,
    }))
}
