//! `static-macvlan-operator`: see `--help`. The work is in the library; this parses the command
//! line, runs it on a Tokio runtime and maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use static_macvlan_operator::cli::{self, Cli};
use static_macvlan_operator::error::exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let result = runtime.block_on(cli::run(cli, &mut std::io::stdout().lock()));
    if let Err(e) = &result {
        eprintln!("error: {e}");
    }
    ExitCode::from(cli::exit_code(&result))
}
