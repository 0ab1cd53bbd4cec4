//! What the `etcdbrctl` tests share: the binary cargo built, run without the store and
//! credential variables of the environment the tests run in (each test sets what it means), and
//! the restore from a Local store that many of them start with.
#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::process::{Command, Output};

/// The reference's variables that name a store or its credentials, and ours for the encryption
/// key: none of them may reach a command from the shell that runs the tests.
const AMBIENT: [&str; 6] = [
    "STORAGE_CONTAINER",
    "SOURCE_STORAGE_CONTAINER",
    "AWS_APPLICATION_CREDENTIALS",
    "AWS_APPLICATION_CREDENTIALS_JSON",
    "AZURE_APPLICATION_CREDENTIALS",
    "ETCDBR_ENCRYPTION_KEY_FILE",
];

/// `etcdbrctl` with no arguments yet and none of [`AMBIENT`] in its environment.
pub fn etcdbrctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    for var in AMBIENT {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `etcdbrctl args` to its end.
pub fn run(args: &[&str]) -> Output {
    etcdbrctl().args(args).output().expect("run etcdbrctl")
}

/// `etcdbrctl restore` of the Local store `container` into `data_dir`; the caller adds the
/// rest of the flags.
pub fn restore_local(container: &Path, data_dir: &Path) -> Command {
    let mut cmd = etcdbrctl();
    cmd.args(["restore", "--storage-provider", "Local", "--store-container"])
        .arg(container)
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

/// Output bytes as text, for messages and `contains` checks.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
