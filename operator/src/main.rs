//! `static-macvlan-operator`: see `--help`. The work is in the library; this parses the command
//! line, sets up logging, runs the command on a Tokio runtime and maps the outcome to an exit
//! code.

use std::process::ExitCode;

use clap::Parser;
use static_macvlan_operator::cli::{self, Cli, Command};
use static_macvlan_operator::error::exit;
use static_macvlan_operator::settings::{LogFormat, Settings};

fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Resolves once SIGTERM (the kubelet stopping the pod) or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn controller(args: &static_macvlan_operator::settings::RunArgs) -> ExitCode {
    let settings = match Settings::load(args, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // kube's client logs every failed request at error level; the operator logs what it
        // means (with a retry) itself.
        .with_env_filter(filter("info,kube_client::client::builder=off"));
    match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let result = runtime.block_on(static_macvlan_operator::run::run(
        settings,
        shutdown_signal(),
    ));
    if let Err(e) = &result {
        tracing::error!(error = %e, "the operator stopped");
    }
    ExitCode::from(cli::exit_code(&result))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        return controller(args);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter("warn,kube_client=off"))
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
