//! `meshctl proxy-config ADDR`: a running proxy's state, from its admin `/config_dump`, as
//! readable tables (or the raw JSON with `--json`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::out::say;

/// `proxy-config` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyConfigArgs {
    /// The proxy's admin address (`<node address>:15000` for a local-mode ztunnel).
    #[arg(value_name = "IP:PORT")]
    admin: SocketAddr,
    /// Print the raw `/config_dump` JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// GETs `path` from `addr` over HTTP/1.1; returns status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .context("request timed out")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub(crate) fn main(args: ProxyConfigArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::out::fail(e),
    };
    match rt.block_on(run(&args)) {
        Ok(text) => {
            say!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => crate::out::fail(format!("{e:#}")),
    }
}

async fn run(args: &ProxyConfigArgs) -> anyhow::Result<String> {
    let (status, body) = get(args.admin, "/config_dump").await?;
    if status != 200 {
        bail!("{}/config_dump answered {status}", args.admin);
    }
    let dump: Value = serde_json::from_slice(&body).context("config_dump is not JSON")?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&dump)?);
    }
    Ok(render(&dump))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title} ({})", rows.len());
    if rows.is_empty() {
        return;
    }
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            }
        }
        l
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(s).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

/// The tables `proxy-config` prints.
pub(crate) fn render(d: &Value) -> String {
    let mut out = String::new();
    summary(&mut out, d);
    let empty = Vec::new();
    let arr = |k: &str| d[k].as_array().unwrap_or(&empty).clone();
    let rows = |k: &str, row: fn(&Value) -> Vec<String>| arr(k).iter().map(row).collect();
    table(
        &mut out,
        "WORKLOADS",
        &[
            "NAMESPACE",
            "NAME",
            "ADDRESS",
            "NODE",
            "LOCAL",
            "MTLS",
            "IDENTITY",
            "POLICIES",
        ],
        rows("workloads", workload_row),
    );
    table(
        &mut out,
        "SERVICES",
        &[
            "NAMESPACE",
            "NAME",
            "HOST",
            "VIPS",
            "PORT",
            "PROTOCOL",
            "ENDPOINTS",
        ],
        rows("services", service_row),
    );
    table(
        &mut out,
        "AUTHORIZATION POLICIES",
        &["NAMESPACE", "NAME", "ACTION", "SCOPE", "RULES"],
        rows("authorizationPolicies", policy_row),
    );
    table(
        &mut out,
        "PEER AUTHENTICATION",
        &["NAMESPACE", "NAME", "SELECTOR", "MODE", "PORTS"],
        rows("peerAuthentications", peer_authentication_row),
    );
    table(
        &mut out,
        "CERTIFICATES",
        &["IDENTITY", "NOT BEFORE", "NOT AFTER", "EXPIRES IN"],
        rows("certificates", certificate_row),
    );
    table(
        &mut out,
        "LISTENERS",
        &["KIND", "ADDRESS", "SERVES"],
        rows("listeners", |l| {
            vec![s(&l["kind"]), s(&l["address"]), s(&l["serves"])]
        }),
    );
    out
}

/// The first lines: node, generation, trust domain, ... and config rejections, if any.
fn summary(out: &mut String, d: &Value) {
    let _ = writeln!(
        out,
        "node {}  generation {}  trust domain {}  root namespace {}  cluster {}",
        s(&d["node"]),
        s(&d["generation"]),
        s(&d["trustDomain"]),
        s(&d["rootNamespace"]),
        s(&d["clusterId"])
    );
    let rej = &d["configRejections"];
    if rej["total"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "config rejections: {} (last at {}):\n{}",
            s(&rej["total"]),
            s(&rej["last"]["at"]),
            s(&rej["last"]["error"])
        );
    }
}

/// A row of WORKLOADS.
fn workload_row(w: &Value) -> Vec<String> {
    let ports = w["mtls"]["ports"]
        .as_object()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let v: Vec<String> = p.iter().map(|(k, m)| format!("{k}={}", s(m))).collect();
            format!(" ({})", v.join(","))
        })
        .unwrap_or_default();
    vec![
        s(&w["namespace"]),
        s(&w["name"]),
        s(&w["address"]),
        s(&w["node"]),
        if w["local"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .into(),
        format!("{}{ports}", s(&w["mtls"]["mode"])),
        s(&w["identity"]),
        list(&w["authorizationPolicies"]),
    ]
}

/// A row of SERVICES.
fn service_row(x: &Value) -> Vec<String> {
    vec![
        s(&x["namespace"]),
        s(&x["name"]),
        list(&x["hosts"]),
        list(&x["vips"]),
        s(&x["port"]),
        s(&x["protocol"]),
        list(&x["endpoints"]),
    ]
}

/// A row of AUTHORIZATION POLICIES.
fn policy_row(p: &Value) -> Vec<String> {
    let scope = match &p["scope"] {
        Value::String(x) => x.clone(),
        Value::Object(o) => o
            .get("selector")
            .and_then(Value::as_object)
            .map(|l| {
                let v: Vec<String> = l.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
                format!("selector {}", v.join(","))
            })
            .unwrap_or_else(|| Value::Object(o.clone()).to_string()),
        v => s(v),
    };
    vec![
        s(&p["namespace"]),
        s(&p["name"]),
        s(&p["action"]),
        scope,
        p["rules"].as_array().map_or(0, Vec::len).to_string(),
    ]
}

/// A row of PEER AUTHENTICATION.
fn peer_authentication_row(p: &Value) -> Vec<String> {
    let kv = |v: &Value| {
        v.as_object().filter(|o| !o.is_empty()).map_or_else(
            || "-".to_owned(),
            |o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", s(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        )
    };
    vec![
        s(&p["namespace"]),
        s(&p["name"]),
        kv(&p["selector"]),
        s(&p["mode"]),
        kv(&p["ports"]),
    ]
}

/// A row of CERTIFICATES.
fn certificate_row(c: &Value) -> Vec<String> {
    let secs = c["expiresInSeconds"].as_u64().unwrap_or(0);
    vec![
        s(&c["identity"]),
        s(&c["notBefore"]),
        s(&c["notAfter"]),
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    ]
}
