//! `example-snapshot-once <etcd endpoint> <store dir> <prefix>`: one full snapshot of a live
//! etcd into a Local store.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, dir, prefix] = args.as_slice() else {
        eprintln!("usage: example-snapshot-once <etcd endpoint> <store dir> <prefix>");
        return ExitCode::from(2);
    };
    let store = match example_snapshot_once::local_store(dir) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match example_snapshot_once::snapshot_once(endpoint, store, prefix).await {
        Ok(full) => {
            println!(
                "stored {} (revision {}, {} bytes from etcd)",
                full.snapshot.key, full.snapshot.name.last_revision, full.stream_bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
