//! The agent's socket: a Unix `SOCK_SEQPACKET` connection (one message per packet, no framing;
//! Istio's agent listens with Go's `unixpacket`), driven by tokio readiness. Descriptors come
//! as `SCM_RIGHTS` ancillary data and are owned ([`OwnedFd`]) the moment they are received,
//! before anything else is looked at, so none can leak.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
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

/// One `recvmsg`: every descriptor the kernel installed is wrapped as owned first (even when
/// the control data was cut, `MSG_CTRUNC`: the kernel then installs the descriptors that fit
/// and closes the rest), then the flags are read. Raw `recvmsg` rather than nix's: nix refuses
/// to walk a truncated control buffer, which would leave the installed descriptors unowned.
#[allow(unsafe_code)]
fn recv_once(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Option<Packet>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = &raw mut iov;
    mhdr.msg_iovlen = 1;
    mhdr.msg_control = cmsg.as_mut_ptr().cast();
    mhdr.msg_controllen = cmsg.len() as _;
    // SAFETY: `mhdr` points at `iov` (over `buf`) and `cmsg`, both live and exclusively
    // borrowed for the call; the kernel writes within their lengths.
    let n = unsafe { libc::recvmsg(fd, &raw mut mhdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let fds = take_fds(&mhdr, cmsg.len());
    let bytes = usize::try_from(n).unwrap_or(0);
    if bytes == 0 {
        return Ok(None);
    }
    let truncated = mhdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    Ok(Some(Packet {
        len: bytes,
        truncated,
        fds,
    }))
}

/// Owns every descriptor of every `SCM_RIGHTS` message in the control data `recvmsg` wrote,
/// walking the headers within `msg_controllen` (capped at `cap`, the buffer's size) and each
/// message's data within its `cmsg_len`: a cut last message yields the descriptors it holds.
#[allow(unsafe_code)]
fn take_fds(mhdr: &libc::msghdr, cap: usize) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    let base = mhdr.msg_control.cast::<u8>().cast_const();
    #[allow(clippy::useless_conversion)] // msg_controllen is usize on glibc, u32 on musl.
    let len = usize::try_from(mhdr.msg_controllen).unwrap_or(0).min(cap);
    let end = base.wrapping_add(len);
    // SAFETY: `mhdr` is the header `recvmsg` filled; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // `msg_controllen` (they return null past it).
    let mut c = unsafe { libc::CMSG_FIRSTHDR(mhdr) };
    // SAFETY: CMSG_LEN is arithmetic.
    let head = unsafe { libc::CMSG_LEN(0) } as usize;
    while !c.is_null() {
        // SAFETY: `c` is non-null and within the control buffer (above).
        let h = unsafe { std::ptr::read_unaligned(c) };
        let clen = h.cmsg_len as usize;
        if clen < head {
            break;
        }
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA is arithmetic on `c`.
            let data = unsafe { libc::CMSG_DATA(c) }.cast_const();
            let stop = c.cast::<u8>().cast_const().wrapping_add(clen);
            let stop = if stop > end { end } else { stop };
            let avail = (stop as usize).saturating_sub(data as usize);
            for i in 0..avail / std::mem::size_of::<libc::c_int>() {
                let at = data.wrapping_add(i * std::mem::size_of::<libc::c_int>());
                // SAFETY: `at..at+4` lies within the written control data (bounded above).
                let raw = unsafe { std::ptr::read_unaligned(at.cast::<libc::c_int>()) };
                if raw >= 0 {
                    // SAFETY: the kernel installed `raw` in our table for this message;
                    // nothing else refers to it, so it is ours to own and close.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `c` is a header of `mhdr`'s control buffer.
        c = unsafe { libc::CMSG_NXTHDR(mhdr, c) };
    }
    fds
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::fd::AsFd as _;

    use nix::sys::socket::{ControlMessage, socketpair};

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn send_fds(to: &OwnedFd, n: usize) {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let raws = vec![devnull.as_fd().as_raw_fd(); n];
        let cmsg = [ControlMessage::ScmRights(&raws)];
        let iov = [IoSlice::new(b"x")];
        sendmsg::<()>(to.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
    }

    /// An attacker (or a buggy agent) sends more descriptors than the control buffer holds:
    /// the kernel sets MSG_CTRUNC and installs those that fit. They must be owned (closed on
    /// drop), not leaked: nix's `cmsgs()` refuses a truncated buffer, so this walks it itself.
    #[test]
    fn descriptors_of_a_cut_control_buffer_are_owned() {
        let (a, b) = pair();
        send_fds(&a, 3);
        let mut buf = vec![0; 16];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let p = recv_once(b.as_raw_fd(), &mut buf, &mut cmsg)
            .unwrap()
            .unwrap();
        assert!(p.truncated);
        // CMSG_SPACE rounds up to the header's alignment: as many as fit after the header.
        #[allow(unsafe_code)]
        // SAFETY: CMSG_LEN is arithmetic.
        let head = unsafe { libc::CMSG_LEN(0) } as usize;
        let fit = (cmsg.len() - head) / std::mem::size_of::<libc::c_int>();
        assert!(fit < 3);
        assert_eq!(p.fds.len(), fit, "the descriptors that fit are owned");
        for fd in &p.fds {
            assert_ne!(fd.as_raw_fd(), b.as_raw_fd());
        }
    }

    /// The usual case: all descriptors, not truncated; an empty packet is the end.
    #[test]
    fn descriptors_that_fit_are_all_owned() {
        let (a, b) = pair();
        send_fds(&a, 2);
        let mut buf = vec![0; 16];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let p = recv_once(b.as_raw_fd(), &mut buf, &mut cmsg)
            .unwrap()
            .unwrap();
        assert!(!p.truncated);
        assert_eq!((p.len, p.fds.len()), (1, 2));
        drop(a);
        assert!(
            recv_once(b.as_raw_fd(), &mut buf, &mut cmsg)
                .unwrap()
                .is_none()
        );
    }
}
