//! `example-restore-latest <bucket> <prefix> <data dir> [<S3 endpoint>]`: restores the latest
//! backup from S3 into a new data dir for a one-member etcd named `default` with peer URL
//! `http://127.0.0.1:2380`. Credentials as the Go etcdbrctl reads them
//! (`AWS_APPLICATION_CREDENTIALS`).

use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bucket, prefix, data_dir, endpoint) = match args.as_slice() {
        [b, p, d] => (b, p, d, None),
        [b, p, d, e] => (b, p, d, Some(e.as_str())),
        _ => {
            eprintln!("usage: example-restore-latest <bucket> <prefix> <data dir> [<S3 endpoint>]");
            return ExitCode::from(2);
        }
    };
    let store = match example_restore_latest::s3_store(bucket, endpoint) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = Arc::new(example_restore_latest::PrintProgress::default());
    match example_restore_latest::restore_latest(
        store,
        prefix,
        data_dir.into(),
        "default",
        "http://127.0.0.1:2380",
        progress,
    )
    .await
    {
        Ok(report) => {
            println!(
                "restored revision {} from {} and {} deltas into {}",
                report.stats.revision,
                report.full,
                report.deltas.len(),
                data_dir
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
