//! Instruction-count mode: the proxies of a path under callgrind.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::args::BenchArgs;
use super::topology::{self, ProxyOpts, Topology};
use super::{load, pods};
use crate::out::say;

/// Instructions per request through a path, per proxy.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Instructions {
    pub(super) topology: &'static str,
    /// All proxies of the path.
    pub(super) total: f64,
    /// (proxy, instructions per request).
    pub(super) per_proxy: Vec<(String, f64)>,
}

/// Instructions per request through `topo`: callgrind totals of its proxies for 2N requests
/// minus those for N, over N.
pub(super) fn callgrind(
    dir: &Path,
    args: &BenchArgs,
    n: u64,
    topo: Topology,
) -> anyhow::Result<Instructions> {
    let mut totals: Vec<Vec<(String, u64)>> = Vec::new();
    for (i, count) in [n, 2 * n].into_iter().enumerate() {
        let out = args
            .callgrind_dir
            .clone()
            .unwrap_or_else(|| dir.to_owned())
            .join(format!("{}-{i}", topo.name()));
        std::fs::create_dir_all(&out)?;
        run_under_callgrind(dir, &out, args, count, topo)?;
        totals.push(read_totals(&out)?);
    }
    let mut per_proxy = Vec::new();
    for ((node, small), (_, big)) in totals[0].iter().zip(&totals[1]) {
        if big <= small {
            bail!("callgrind totals did not grow with the request count: {totals:?}");
        }
        per_proxy.push((node.clone(), (big - small) as f64 / n as f64));
    }
    Ok(Instructions {
        topology: topo.name(),
        total: per_proxy.iter().map(|(_, v)| v).sum(),
        per_proxy,
    })
}

/// Sets `topo` up with its proxies under callgrind (output files in `out`), sends `count`
/// sequential requests through it and stops the proxies.
fn run_under_callgrind(
    dir: &Path,
    out: &Path,
    args: &BenchArgs,
    count: u64,
    topo: Topology,
) -> anyhow::Result<()> {
    let opts = ProxyOpts {
        workers: args.workers,
        log: args.proxy_log.clone(),
        wrapper: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!(
                "--callgrind-out-file={}/callgrind.{{node}}.out",
                out.display()
            ),
        ],
        istio_ztunnel: args.istio_ztunnel.clone(),
    };
    say!("== callgrind: {count} requests through {}", topo.name());
    let mut path = topology::setup(topo, dir, &opts)?;
    // The capture topologies' client runs inside pod A.
    let (client, http) = (path.client, path.http);
    pods::run_in(path.client_netns.as_deref(), || {
        load::sequential(client, http, count, args.payload)
    })??;
    for p in &mut path.procs {
        p.stop();
    }
    Ok(())
}

/// The instruction totals of the callgrind files in `out`, by proxy, in file name order.
fn read_totals(out: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut per = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "out"))
        .collect();
    files.sort();
    for f in files {
        let node = f
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("callgrind."))
            .unwrap_or("?")
            .to_owned();
        let text = std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
        let v = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no totals in {}", f.display()))?;
        per.push((node, v));
    }
    Ok(per)
}
