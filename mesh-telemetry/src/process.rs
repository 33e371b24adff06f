//! Standard Prometheus process metrics (`process_*`), read from `/proc/self` on each scrape.
//! On systems without `/proc` the collector reports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports `/proc` times in USER_HZ, fixed at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// Collects `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`
/// and `process_start_time_seconds`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on file descriptors.
    pub max_fds: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it is not available.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is parenthesised and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); field n is f[n - 3].
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let utime = num(14)?;
        let stime = num(15)?;
        let threads = num(20)?;
        let start_ticks = num(22)?;
        let vsize = num(23)?;
        // VmRSS is in kB whatever the page size.
        let rss_kb = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
            });
        let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        });
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
            })
            .unwrap_or(0);
        Some(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
            resident_bytes: rss_kb.unwrap_or(0) * 1024,
            virtual_bytes: vsize,
            open_fds,
            max_fds,
            threads,
            start_time_seconds: btime
                .map_or(0.0, |b| b as f64 + start_ticks as f64 / TICKS_PER_SECOND),
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                s.threads as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = ProcessStats::read().unwrap();
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.threads >= 1);
        assert!(s.open_fds >= 3);
        assert!(s.start_time_seconds > 1.6e9, "{s:?}");
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
