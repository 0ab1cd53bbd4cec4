//! The standing fault run in its short form (`scripts/chaos.sh --short`, about two minutes of
//! faults): real etcd under writes, `etcdbrctl server` snapshotting to SeaweedFS, SIGKILL and
//! SIGSTOP of each of them, a full temp disk and restores in the middle; it fails on any revision
//! lost, any restore that differs from etcd, and any object left half-written. Its table is
//! printed (run with `--nocapture` to see it).

use std::process::Command;

#[test]
fn the_short_fault_run_loses_no_revision_and_leaves_no_half_written_object() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chaos.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--short", "--bin", env!("CARGO_BIN_EXE_etcdbrctl")])
        .output()
        .expect("run scripts/chaos.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the fault run failed ({}):\n{stdout}\n{stderr}", out.status);
    // The table is there and says what the script checked.
    for line in
        ["| revisions lost                               | 0 ", "| objects left half-written                    | 0 |"]
    {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
}
