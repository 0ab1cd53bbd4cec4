//! `etcdbrctl`: etcd backup and restore.
//!
//! A thin binary: clap parses the flags (spelled as the Go etcdbrctl spells them), each
//! sub-command builds a checked config and calls the library crates, and errors become one line
//! on stderr and a documented exit code (see the README).

mod cmd;
mod flags;
mod malloc;
mod pflag;
mod validate;

use std::process::ExitCode;

fn main() -> ExitCode {
    malloc::tune();
    let (cli, ignored) = parse();
    let Some(command) = cli.command else {
        // The Go tool exits 0 without a sub-command; the usage is more useful than silence.
        use clap::CommandFactory;
        let _ = flags::Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    if let Err(msg) = validate::check(&command) {
        use clap::CommandFactory;
        flags::Cli::command().error(clap::error::ErrorKind::MissingRequiredArgument, msg).exit();
    }
    init_logging(&cli.log_level);
    if !ignored.is_empty() {
        tracing::warn!(flags = ?ignored, "--config-file replaces the Go tool's flags, as in the Go tool: these are ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cmd::EXIT_FAILURE);
        }
    };
    match runtime.block_on(cmd::run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cmd::render_error(&e));
            // The library's messages speak of values; the flags that set them are named here.
            if let Some(hint) = cmd::flag_hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}

/// Parses the command line; `server --config-file` parses again with the file's settings in
/// place of the Go tool's flags (see `cmd::config_file`). Returns the flags that were ignored.
fn parse() -> (flags::Cli, Vec<String>) {
    use clap::{CommandFactory, FromArgMatches};
    let matches = flags::Cli::command().get_matches();
    match cmd::config_file::server_argv(&matches) {
        Ok(None) => (flags::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()), Vec::new()),
        Ok(Some((argv, ignored))) => {
            let matches = flags::Cli::command().try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
            (flags::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()), ignored)
        }
        Err(e) => {
            eprintln!("error: {}", cmd::render_error(&e));
            std::process::exit(i32::from(cmd::EXIT_FAILURE));
        }
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over --log-level so a user can turn on one module's debug output.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
