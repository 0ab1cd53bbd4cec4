//! Prometheus metrics with the reference's `etcdbr_*` names and labels: [`Metrics`].
//!
//! Dashboards and alerts written for the Go etcdbrctl keep working: the names, label names and
//! label values (`kind` = `Full` | `Incr` | `Chunk`, `succeeded` = `true` | `false`) are the
//! reference's, and every label combination is created at zero up front as the reference does,
//! so a series exists before its first event. The metrics live in their own [`Registry`],
//! which the HTTP server exposes at `/metrics` ([`Metrics::encode_text`]), beside the standard
//! `process_*` metrics and the Go tool's `etcdbr_network_{transmitted,received}_bytes`, read
//! from `/proc` at each scrape. (The Go tool's `go_*` runtime metrics have no equivalent.)

use std::sync::OnceLock;

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder,
};

/// `kind` label value of full snapshots.
pub const KIND_FULL: &str = "Full";
/// `kind` label value of delta snapshots.
pub const KIND_DELTA: &str = "Incr";
/// `kind` label value of upload chunks.
pub const KIND_CHUNK: &str = "Chunk";
const KINDS: [&str; 3] = [KIND_FULL, KIND_DELTA, KIND_CHUNK];
const SUCCEEDED: [&str; 2] = ["false", "true"];

/// The `succeeded` label value for an outcome.
pub fn succeeded(ok: bool) -> &'static str {
    if ok { "true" } else { "false" }
}

/// Every metric etcdbr exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `etcdbr_snapshot_duration_seconds{kind,succeeded}`: time to take and save a snapshot.
    pub snapshot_duration_seconds: HistogramVec,
    /// `etcdbr_snapshot_gc_total{kind,succeeded}`: objects garbage-collected.
    pub snapshot_gc_total: CounterVec,
    /// `etcdbr_snapshot_latest_revision{kind}`: last revision of the newest snapshot.
    pub snapshot_latest_revision: GaugeVec,
    /// `etcdbr_snapshot_latest_timestamp{kind}`: unix time of the newest snapshot.
    pub snapshot_latest_timestamp: GaugeVec,
    /// `etcdbr_snapshot_required{kind}`: 1 while etcd holds revisions no snapshot has.
    pub snapshot_required: GaugeVec,
    /// `etcdbr_validation_duration_seconds{succeeded}`: time to validate a data dir.
    pub validation_duration_seconds: HistogramVec,
    /// `etcdbr_restoration_duration_seconds{restore,succeeded}`: time to restore a data dir.
    pub restoration_duration_seconds: HistogramVec,
    /// `etcdbr_defragmentation_duration_seconds{endpoint,succeeded}`: time to defragment.
    pub defragmentation_duration_seconds: HistogramVec,
    /// `etcdbr_snapstore_latest_deltas_total`: deltas since the newest full snapshot.
    pub snapstore_latest_deltas_total: Gauge,
    /// `etcdbr_snapstore_latest_deltas_revisions_total`: revisions in those deltas.
    pub snapstore_latest_deltas_revisions_total: Gauge,
    /// `etcdbr_snapshotter_failure{error}`: snapshotter operations that failed, by error class.
    pub snapshotter_failure: CounterVec,
    /// `etcdbr_cluster_size`: members of the etcd cluster.
    pub cluster_size: Gauge,
    /// `etcdbr_is_learner`: 1 while the local member is a learner.
    pub is_learner: Gauge,
    /// `etcdbr_is_learner_count_total{succeeded}`: learner checks.
    pub is_learner_count_total: CounterVec,
    /// `etcdbr_add_learner_duration_seconds{succeeded}`.
    pub add_learner_duration_seconds: HistogramVec,
    /// `etcdbr_member_remove_duration_seconds{succeeded}`.
    pub member_remove_duration_seconds: HistogramVec,
    /// `etcdbr_member_promote_duration_seconds{succeeded}`.
    pub member_promote_duration_seconds: HistogramVec,
    /// `etcdbr_verification_last_success_timestamp_seconds`: unix time of the last scheduled
    /// verification that succeeded (etcdbr's own; 0 before the first).
    pub verification_last_success_timestamp_seconds: Gauge,
    /// `etcdbr_verification_last_revision`: the revision the last successful verification
    /// reached.
    pub verification_last_revision: Gauge,
    /// `etcdbr_verification_failures_total`: scheduled verifications that failed (a backup
    /// that differs from etcd, a damaged object, a gap, a store or etcd that did not answer).
    pub verification_failures_total: Counter,
    /// `etcdbr_defragmentation_skipped_total`: defragmentation rounds of a multi-member cluster
    /// skipped because a member was down or not yet a voter (etcdbr's own; the reference
    /// retries every minute instead).
    pub defragmentation_skipped_total: Counter,
}

/// The process-wide metrics, created on first use (as the reference registers at init).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn opts(subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("etcdbr").subsystem(subsystem)
}

fn hopts(subsystem: &str, name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).namespace("etcdbr").subsystem(subsystem)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics in a fresh registry (tests use their own; the process uses
    /// [`metrics`]).
    pub fn new() -> Metrics {
        // The constructors only fail on invalid names or label names, which are constants here.
        let counter = |o: Opts, labels: &[&str]| CounterVec::new(o, labels).expect("valid counter definition");
        let gauge = |o: Opts, labels: &[&str]| GaugeVec::new(o, labels).expect("valid gauge definition");
        let plain_gauge = |o: Opts| Gauge::with_opts(o).expect("valid gauge definition");
        let histogram =
            |o: HistogramOpts, labels: &[&str]| HistogramVec::new(o, labels).expect("valid histogram definition");
        let m = Metrics {
            registry: Registry::new(),
            snapshot_duration_seconds: histogram(
                hopts("snapshot", "duration_seconds", "Total latency distribution of saving snapshot to object store."),
                &["kind", "succeeded"],
            ),
            snapshot_gc_total: counter(
                opts("snapshot", "gc_total", "Total number of garbage collected snapshots."),
                &["kind", "succeeded"],
            ),
            snapshot_latest_revision: gauge(
                opts("snapshot", "latest_revision", "Revision number of latest snapshot taken."),
                &["kind"],
            ),
            snapshot_latest_timestamp: gauge(
                opts("snapshot", "latest_timestamp", "Timestamp of latest snapshot taken."),
                &["kind"],
            ),
            snapshot_required: gauge(
                opts("snapshot", "required", "Indicates whether a snapshot is required to be taken."),
                &["kind"],
            ),
            validation_duration_seconds: histogram(
                hopts("", "validation_duration_seconds", "Total latency distribution of validating data directory."),
                &["succeeded"],
            ),
            restoration_duration_seconds: histogram(
                hopts("", "restoration_duration_seconds", "Total latency distribution of restoring from snapshot."),
                &["restore", "succeeded"],
            ),
            defragmentation_duration_seconds: histogram(
                hopts("", "defragmentation_duration_seconds", "Total latency distribution of defragmentation of etcd."),
                &["endpoint", "succeeded"],
            ),
            snapstore_latest_deltas_total: plain_gauge(opts(
                "snapstore",
                "latest_deltas_total",
                "Total number of delta snapshots taken since the latest full snapshot.",
            )),
            snapstore_latest_deltas_revisions_total: plain_gauge(opts(
                "snapstore",
                "latest_deltas_revisions_total",
                "Total number of revisions stored in delta snapshots taken since the latest full snapshot.",
            )),
            snapshotter_failure: counter(
                opts("snapshotter", "failure", "Total number of snapshotter errors."),
                &["error"],
            ),
            cluster_size: plain_gauge(opts("", "cluster_size", "Size of the etcd cluster.")),
            is_learner: plain_gauge(opts("", "is_learner", "Whether the etcd member is a learner.")),
            is_learner_count_total: counter(
                opts("", "is_learner_count_total", "Total number of learner checks."),
                &["succeeded"],
            ),
            add_learner_duration_seconds: histogram(
                hopts("", "add_learner_duration_seconds", "Total latency distribution of adding a learner."),
                &["succeeded"],
            ),
            member_remove_duration_seconds: histogram(
                hopts("", "member_remove_duration_seconds", "Total latency distribution of removing a member."),
                &["succeeded"],
            ),
            member_promote_duration_seconds: histogram(
                hopts("", "member_promote_duration_seconds", "Total latency distribution of promoting a learner."),
                &["succeeded"],
            ),
            verification_last_success_timestamp_seconds: plain_gauge(opts(
                "verification",
                "last_success_timestamp_seconds",
                "Unix time of the last scheduled backup verification that succeeded.",
            )),
            verification_last_revision: plain_gauge(opts(
                "verification",
                "last_revision",
                "Revision reached by the last successful backup verification.",
            )),
            verification_failures_total: Counter::with_opts(opts(
                "verification",
                "failures_total",
                "Total number of scheduled backup verifications that failed.",
            ))
            .expect("valid counter definition"),
            defragmentation_skipped_total: Counter::with_opts(opts(
                "",
                "defragmentation_skipped_total",
                "Total number of defragmentation rounds skipped because a member was not healthy.",
            ))
            .expect("valid counter definition"),
        };
        m.initialise();
        m
    }

    fn initialise(&self) {
        for kind in KINDS {
            for ok in SUCCEEDED {
                self.snapshot_duration_seconds.with_label_values(&[kind, ok]);
                self.snapshot_gc_total.with_label_values(&[kind, ok]);
            }
            self.snapshot_latest_revision.with_label_values(&[kind]);
            self.snapshot_latest_timestamp.with_label_values(&[kind]);
            self.snapshot_required.with_label_values(&[kind]);
        }
        for ok in SUCCEEDED {
            self.validation_duration_seconds.with_label_values(&[ok]);
            self.is_learner_count_total.with_label_values(&[ok]);
            self.add_learner_duration_seconds.with_label_values(&[ok]);
            self.member_remove_duration_seconds.with_label_values(&[ok]);
            self.member_promote_duration_seconds.with_label_values(&[ok]);
            for restore in ["single_node", "single_member"] {
                self.restoration_duration_seconds.with_label_values(&[restore, ok]);
            }
        }
        self.snapshotter_failure.with_label_values(&[""]);
        let collectors: [Box<dyn prometheus::core::Collector>; 21] = [
            Box::new(self.snapshot_duration_seconds.clone()),
            Box::new(self.snapshot_gc_total.clone()),
            Box::new(self.snapshot_latest_revision.clone()),
            Box::new(self.snapshot_latest_timestamp.clone()),
            Box::new(self.snapshot_required.clone()),
            Box::new(self.validation_duration_seconds.clone()),
            Box::new(self.restoration_duration_seconds.clone()),
            Box::new(self.defragmentation_duration_seconds.clone()),
            Box::new(self.snapstore_latest_deltas_total.clone()),
            Box::new(self.snapstore_latest_deltas_revisions_total.clone()),
            Box::new(self.snapshotter_failure.clone()),
            Box::new(self.cluster_size.clone()),
            Box::new(self.is_learner.clone()),
            Box::new(self.is_learner_count_total.clone()),
            Box::new(self.add_learner_duration_seconds.clone()),
            Box::new(self.member_remove_duration_seconds.clone()),
            Box::new(self.member_promote_duration_seconds.clone()),
            Box::new(self.verification_last_success_timestamp_seconds.clone()),
            Box::new(self.verification_last_revision.clone()),
            Box::new(self.verification_failures_total.clone()),
            Box::new(self.defragmentation_skipped_total.clone()),
        ];
        for c in collectors {
            // Names are distinct constants, so registering in a fresh registry cannot clash.
            self.registry.register(c).expect("distinct metric names");
        }
        self.registry.register(Box::new(crate::proc_metrics::ProcessCollector::new())).expect("distinct metric names");
    }

    /// The registry holding these metrics (to add process collectors or gather).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in Prometheus' text exposition format: the body of `/metrics`.
    pub fn encode_text(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families that violate the format, which the
        // definitions above cannot produce; an empty body is the safe answer then.
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Records one snapshot attempt: its duration, and on success its revision and time.
    pub fn observe_snapshot(&self, kind: &str, ok: bool, seconds: f64, last_revision: u64, created_on: i64) {
        self.snapshot_duration_seconds.with_label_values(&[kind, succeeded(ok)]).observe(seconds);
        if ok {
            self.snapshot_latest_revision.with_label_values(&[kind]).set(last_revision as f64);
            self.snapshot_latest_timestamp.with_label_values(&[kind]).set(created_on as f64);
        }
    }

    /// Records one scheduled verification: on success its time and revision, else a failure.
    pub fn observe_verification(&self, ok: bool, finished_at: i64, revision: i64) {
        if ok {
            self.verification_last_success_timestamp_seconds.set(finished_at as f64);
            self.verification_last_revision.set(revision as f64);
        } else {
            self.verification_failures_total.inc();
        }
    }

    /// Counts a failed snapshotter operation under an error class (`etcd`, `store`, `corrupt`…).
    pub fn failure(&self, error: &str) {
        self.snapshotter_failure.with_label_values(&[error]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_reference_names_with_every_label_combination_at_zero() {
        let m = Metrics::new();
        let text = m.encode_text();
        for line in [
            "etcdbr_snapshot_gc_total{kind=\"Full\",succeeded=\"true\"} 0",
            "etcdbr_snapshot_gc_total{kind=\"Chunk\",succeeded=\"false\"} 0",
            "etcdbr_snapshot_latest_revision{kind=\"Incr\"} 0",
            "etcdbr_snapshot_required{kind=\"Full\"} 0",
            "etcdbr_snapshot_duration_seconds_count{kind=\"Incr\",succeeded=\"false\"} 0",
            "etcdbr_snapstore_latest_deltas_total 0",
            "etcdbr_snapstore_latest_deltas_revisions_total 0",
            "etcdbr_snapshotter_failure{error=\"\"} 0",
            "etcdbr_restoration_duration_seconds_count{restore=\"single_node\",succeeded=\"true\"} 0",
            "etcdbr_validation_duration_seconds_count{succeeded=\"true\"} 0",
            "etcdbr_verification_last_success_timestamp_seconds 0",
            "etcdbr_verification_last_revision 0",
            "etcdbr_verification_failures_total 0",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_start_time_seconds gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_max_fds gauge",
            "# TYPE process_virtual_memory_bytes gauge",
            "# TYPE process_threads gauge",
            "# TYPE etcdbr_network_transmitted_bytes counter",
            "# TYPE etcdbr_network_received_bytes counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_snapshot_sets_revision_and_time_only_when_it_succeeded() {
        let m = Metrics::new();
        m.observe_snapshot(KIND_FULL, true, 1.5, 166, 1_795_607_409);
        m.observe_snapshot(KIND_FULL, false, 0.5, 999, 1);
        let text = m.encode_text();
        assert!(text.contains("etcdbr_snapshot_latest_revision{kind=\"Full\"} 166"), "{text}");
        assert!(text.contains("etcdbr_snapshot_latest_timestamp{kind=\"Full\"} 1795607409"), "{text}");
        assert!(text.contains("etcdbr_snapshot_duration_seconds_count{kind=\"Full\",succeeded=\"false\"} 1"));
        m.observe_verification(true, 1_795_607_500, 166);
        m.observe_verification(false, 1_795_607_600, 0);
        let text = m.encode_text();
        assert!(text.contains("etcdbr_verification_last_success_timestamp_seconds 1795607500"), "{text}");
        assert!(text.contains("etcdbr_verification_last_revision 166"), "{text}");
        assert!(text.contains("etcdbr_verification_failures_total 1"), "{text}");
        m.failure("etcd");
        assert!(m.encode_text().contains("etcdbr_snapshotter_failure{error=\"etcd\"} 1"));
    }
}
