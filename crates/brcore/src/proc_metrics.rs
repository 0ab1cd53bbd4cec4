//! The process metrics every Prometheus client exports (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …) and the Go tool's network byte counters
//! (`etcdbr_network_transmitted_bytes`, `etcdbr_network_received_bytes`), read from `/proc`
//! each time `/metrics` is scraped.
//!
//! The names, types and help texts are the standard ones (Prometheus' "process metrics"
//! convention, as client_golang's process collector exports them); the network counters are
//! the Go tool's: the bytes of every interface in the process's network namespace
//! (`/proc/<pid>/net/dev`), which in a pod is the pod's traffic. Where `/proc` cannot be read
//! (not Linux), nothing is exported rather than a wrong value.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// Collects the process and network metrics on every scrape.
pub(crate) struct ProcessCollector {
    descs: Vec<Desc>,
    cpu_seconds: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_memory: Gauge,
    resident_memory: Gauge,
    start_time: Gauge,
    threads: Gauge,
    net_transmitted: Counter,
    net_received: Counter,
    /// Serializes scrapes: counters are set by reset + increment.
    lock: Mutex<()>,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        // Constant names and help texts: construction cannot fail.
        let counter = |name: &str, help: &str| Counter::with_opts(Opts::new(name, help)).expect("valid counter");
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).expect("valid gauge");
        let c = ProcessCollector {
            descs: Vec::new(),
            cpu_seconds: counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors."),
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
            resident_memory: gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
            start_time: gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
            threads: gauge("process_threads", "Number of OS threads in the process."),
            net_transmitted: counter("etcdbr_network_transmitted_bytes", "Number of bytes transmitted over network."),
            net_received: counter("etcdbr_network_received_bytes", "Number of bytes received over network."),
            lock: Mutex::new(()),
        };
        let descs = c.metrics().iter().flat_map(|m| m.desc().into_iter().cloned()).collect();
        ProcessCollector { descs, ..c }
    }

    fn metrics(&self) -> [&dyn Collector; 9] {
        [
            &self.cpu_seconds,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.start_time,
            &self.threads,
            &self.net_transmitted,
            &self.net_received,
        ]
    }
}

fn set_counter(c: &Counter, value: f64) {
    c.reset();
    c.inc_by(value.max(0.0));
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if let Some(s) = read_stat() {
            set_counter(&self.cpu_seconds, s.cpu_seconds);
            self.virtual_memory.set(s.virtual_bytes as f64);
            self.resident_memory.set(s.resident_bytes as f64);
            self.start_time.set(s.start_time_seconds);
            self.threads.set(s.threads as f64);
            for m in [&self.virtual_memory, &self.resident_memory, &self.start_time, &self.threads] {
                out.extend(m.collect());
            }
            out.extend(self.cpu_seconds.collect());
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
            out.extend(self.open_fds.collect());
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l)) {
            self.max_fds.set(max as f64);
            out.extend(self.max_fds.collect());
        }
        if let Some((rx, tx)) = std::fs::read_to_string("/proc/self/net/dev").ok().and_then(|d| network_bytes(&d)) {
            set_counter(&self.net_received, rx as f64);
            set_counter(&self.net_transmitted, tx as f64);
            out.extend(self.net_received.collect());
            out.extend(self.net_transmitted.collect());
        }
        out
    }
}

/// What `/proc/self/stat` (with the boot time and clock ticks) says about the process.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: u64,
    start_time_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

fn read_stat() -> Option<Stat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    parse_stat(&stat, btime, rustix::param::clock_ticks_per_second(), rustix::param::page_size() as u64)
}

/// Parses `/proc/<pid>/stat` (proc(5)): the fields after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str, boot_time: u64, ticks_per_second: u64, page_size: u64) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1; `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = ticks_per_second.max(1) as f64;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Received and transmitted bytes summed over every interface of `/proc/<pid>/net/dev`, as the
/// Go tool sums them (its first and ninth numbers after the interface name).
fn network_bytes(dev: &str) -> Option<(u64, u64)> {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in dev.lines() {
        let Some((_, numbers)) = line.split_once(':') else { continue };
        let v: Vec<&str> = numbers.split_whitespace().collect();
        rx = rx.saturating_add(v.first()?.parse().ok()?);
        tx = tx.saturating_add(v.get(8)?.parse().ok()?);
    }
    Some((rx, tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (etcd br) (x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 7 0 \
                    123400 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                threads: 7,
                start_time_seconds: 1_700_000_000.0 + 1234.0,
                virtual_bytes: 104_857_600,
                resident_bytes: 2560 * 4096,
            }
        );
        assert_eq!(parse_stat("garbage", 0, 100, 4096), None);
    }

    #[test]
    fn limits_and_network_counters_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(max_open_files(limits), Some(1_048_576));
        let dev = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
                   eth0: 5000      50    0    0    0     0          0         0     7000      70    0    0    0     0       0          0\n";
        assert_eq!(network_bytes(dev), Some((6000, 8000)));
    }

    #[test]
    fn the_collector_reports_this_process() {
        let c = ProcessCollector::new();
        let families = c.collect();
        let value = |name: &str| {
            let f = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            let m = &f.get_metric()[0];
            // The kind it is not reads 0.
            m.get_counter().get_value() + m.get_gauge().get_value()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_start_time_seconds") > 1.6e9);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("etcdbr_network_received_bytes") >= 0.0);
        assert_eq!(c.desc().len(), 9);
    }
}
