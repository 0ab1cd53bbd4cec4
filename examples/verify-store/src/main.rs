//! `example-verify-store <store dir> <prefix>`: prints the chain of a Local store and verifies
//! it offline.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, prefix] = args.as_slice() else {
        eprintln!("usage: example-verify-store <store dir> <prefix>");
        return ExitCode::from(2);
    };
    let config = snapstore::StoreConfig::local(dir);
    let store = match snapstore::open(&config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let chain = match example_verify_store::chain(store.as_ref(), prefix).await {
        Ok(chain) => chain,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    println!("{}  {} bytes", chain.full.key, chain.full.size);
    for delta in &chain.deltas {
        println!("{}  {} bytes", delta.key, delta.size);
    }
    match example_verify_store::verify_store(store, prefix).await {
        Ok(report) => {
            let end = report.end().map(|c| c.hash).unwrap_or_default();
            println!("verified: revision {} restores, HashKV {end} (offline)", report.revision);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
