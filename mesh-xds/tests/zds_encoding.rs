//! Wire compatibility with Istio's ZDS protocol (the istio-cni agent ↔ ztunnel messages): each
//! message and field encoded on its own and compared with bytes written out by hand from
//! Istio's field numbers (istio/istio `pkg/zdsapi/zds.proto`, istio/ztunnel
//! `proto/zds.proto`), then decoded back.
//!
//! Reading the bytes: a tag is `field_number << 3 | wire_type` (0 varint, 2 length-delimited),
//! e.g. `WorkloadRequest.keep = 5` → `0x2a`; a string `"x"` is `0x01 0x78`; an empty message
//! field is `tag 0x00`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_update)]

use mesh_xds::pb::zds;
use prost::Message;
use zds::workload_request::Payload as Req;
use zds::workload_response::Payload as Resp;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(what: &str, msg: M, want: &[u8]) {
    let got = msg.encode_to_vec();
    assert_eq!(
        got, want,
        "{what}: encoded {got:02x?}, Istio's field numbers give {want:02x?}"
    );
    assert_eq!(M::decode(want).unwrap(), msg, "{what}: decoding");
}

fn x() -> String {
    "x".into()
}

#[test]
fn hello_is_version_1() {
    // istio/ztunnel `src/inpod/protocol.rs` `send_hello`: `ZdsHello { version: V1 }`.
    check(
        "ZdsHello.version",
        zds::ZdsHello {
            version: zds::Version::V1 as i32,
        },
        &[0x08, 0x01],
    );
    // NOT_USED = 0 is proto3's default: nothing on the wire.
    check("ZdsHello{}", zds::ZdsHello::default(), &[]);
}

#[test]
fn workload_info_fields() {
    let info = |f: fn(&mut zds::WorkloadInfo)| {
        let mut i = zds::WorkloadInfo::default();
        f(&mut i);
        i
    };
    check(
        "WorkloadInfo.name",
        info(|i| i.name = x()),
        &[0x0a, 0x01, 0x78],
    );
    check(
        "WorkloadInfo.namespace",
        info(|i| i.namespace = x()),
        &[0x12, 0x01, 0x78],
    );
    check(
        "WorkloadInfo.service_account",
        info(|i| i.service_account = x()),
        &[0x1a, 0x01, 0x78],
    );
    // Field 4 (`trust_domain`) is reserved in Istio's proto: an old agent's value is skipped,
    // as Istio's ztunnel skips it.
    assert_eq!(
        zds::WorkloadInfo::decode(&[0x22, 0x01, 0x78][..]).unwrap(),
        zds::WorkloadInfo::default()
    );
}

#[test]
fn request_payload_fields() {
    check(
        "AddWorkload.uid",
        zds::AddWorkload {
            uid: x(),
            ..Default::default()
        },
        &[0x0a, 0x01, 0x78],
    );
    check(
        "AddWorkload.workload_info",
        zds::AddWorkload {
            workload_info: Some(zds::WorkloadInfo::default()),
            ..Default::default()
        },
        &[0x12, 0x00],
    );
    check(
        "KeepWorkload.uid",
        zds::KeepWorkload { uid: x() },
        &[0x0a, 0x01, 0x78],
    );
    // DelWorkload's uid is field 2 (field 1 was never used): Istio's numbering.
    check(
        "DelWorkload.uid",
        zds::DelWorkload { uid: x() },
        &[0x12, 0x01, 0x78],
    );
    check("SnapshotSent{}", zds::SnapshotSent {}, &[]);
    check("Ack.error", zds::Ack { error: x() }, &[0x0a, 0x01, 0x78]);
}

#[test]
fn request_oneof_arms() {
    let req = |p| zds::WorkloadRequest { payload: Some(p) };
    check(
        "WorkloadRequest.add",
        req(Req::Add(zds::AddWorkload::default())),
        &[0x0a, 0x00],
    );
    check(
        "WorkloadRequest.del",
        req(Req::Del(zds::DelWorkload::default())),
        &[0x12, 0x00],
    );
    check(
        "WorkloadRequest.snapshot_sent",
        req(Req::SnapshotSent(zds::SnapshotSent {})),
        &[0x1a, 0x00],
    );
    check(
        "WorkloadRequest.keep",
        req(Req::Keep(zds::KeepWorkload::default())),
        &[0x2a, 0x00],
    );
    // An empty request (no payload) is what an unknown future arm decodes to.
    check("WorkloadRequest{}", zds::WorkloadRequest::default(), &[]);
    assert_eq!(
        zds::WorkloadRequest::decode(&[0x32, 0x00][..]).unwrap(),
        zds::WorkloadRequest::default(),
        "an unknown arm (field 6) is skipped, leaving no payload"
    );
}

#[test]
fn response_ack() {
    let resp = |e: &str| zds::WorkloadResponse {
        payload: Some(Resp::Ack(zds::Ack { error: e.into() })),
    };
    // Success: an Ack with an empty error, still present on the wire (`0x0a 0x00`).
    check("WorkloadResponse.ack ok", resp(""), &[0x0a, 0x00]);
    check(
        "WorkloadResponse.ack error",
        resp("x"),
        &[0x0a, 0x03, 0x0a, 0x01, 0x78],
    );
}

#[test]
fn a_whole_add_as_the_agent_sends_it() {
    // istio/istio `cni/pkg/nodeagent/ztunnelserver_linux.go` `PodAdded`: uid plus
    // WorkloadInfo{name, namespace, service_account} from the pod.
    let msg = zds::WorkloadRequest {
        payload: Some(Req::Add(zds::AddWorkload {
            uid: "u1".into(),
            workload_info: Some(zds::WorkloadInfo {
                name: "p".into(),
                namespace: "n".into(),
                service_account: "s".into(),
            }),
        })),
    };
    #[rustfmt::skip]
    let want = [
        0x0a, 0x0f,                   // WorkloadRequest.add, 15 bytes
        0x0a, 0x02, b'u', b'1',       //   AddWorkload.uid
        0x12, 0x09,                   //   AddWorkload.workload_info, 9 bytes
        0x0a, 0x01, b'p',             //     name
        0x12, 0x01, b'n',             //     namespace
        0x1a, 0x01, b's',             //     service_account
    ];
    check("WorkloadRequest{add}", msg, &want);
}
