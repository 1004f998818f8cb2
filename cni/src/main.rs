//! `static-macvlan`: the CNI plugin binary. A runtime runs it once per command with the `CNI_*`
//! environment and the network configuration on stdin; it prints the result (or an error result)
//! on stdout and logs to stderr, and optionally to `$STATIC_MACVLAN_LOG_FILE`.
//!
//! Network namespaces belong to threads, so everything runs on one thread: a current-thread
//! tokio runtime.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Instant;

use static_macvlan_cni::conf::{self, EnvMap};
use static_macvlan_cni::plugin;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::prelude::*;

/// Logs of our crates at `$STATIC_MACVLAN_LOG_LEVEL` (default info), of dependencies from warn
/// up; to stderr, and appended to `$STATIC_MACVLAN_LOG_FILE` when set.
/// `STATIC_MACVLAN_LOG_FORMAT=json` writes JSON lines instead of text.
fn init_logging(env: &EnvMap) {
    let level = env
        .get("STATIC_MACVLAN_LOG_LEVEL")
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let filter = Targets::new()
        .with_target("static_macvlan", level)
        .with_target("static_macvlan_cni", level)
        .with_target("static_macvlan_allocator", level)
        .with_default(LevelFilter::WARN.min(level));
    let file = env
        .get("STATIC_MACVLAN_LOG_FILE")
        .filter(|p| !p.is_empty())
        .and_then(
            |p| match OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("static-macvlan: cannot open log file {p}: {e}");
                    None
                }
            },
        );
    let json = env
        .get("STATIC_MACVLAN_LOG_FORMAT")
        .is_some_and(|f| f == "json");
    let writer = std::io::stderr.and(Mutex::new(LogFile(file)));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json().flatten_event(true)).init();
    } else {
        registry.with(fmt).init();
    }
}

/// The optional log file; writes go nowhere without one.
struct LogFile(Option<std::fs::File>);

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

fn main() {
    let start = Instant::now();
    let env = conf::process_env();
    init_logging(&env);

    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match (read, &runtime) {
        (Ok(_), Ok(rt)) => rt.block_on(plugin::run(&env, &stdin)),
        (Err(e), _) => plugin::failed(
            &env,
            &stdin,
            static_macvlan_cni::errors::Error::Io {
                op: "read network configuration from stdin".into(),
                source: e,
            },
        ),
        (_, Err(e)) => plugin::failed(
            &env,
            &stdin,
            static_macvlan_cni::errors::Error::Io {
                op: "start runtime".into(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            },
        ),
    };

    if let Some(json) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone: the runtime sees the exit code.
        let _ = serde_json::to_writer(&mut out, json);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }

    let verb = outcome.command.map(|c| c.as_str()).unwrap_or("?");
    let container = outcome.container.as_deref().unwrap_or("");
    let ifname = outcome.ifname.as_deref().unwrap_or("");
    let subnet = outcome.subnet.as_deref().unwrap_or("");
    let decision = outcome.decision.as_deref().unwrap_or("");
    // Rounded to 10 µs so that the line stays short.
    let duration_ms = (start.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
    match &outcome.error {
        None => tracing::info!(
            verb,
            container,
            ifname,
            subnet,
            decision,
            duration_ms,
            outcome = "ok"
        ),
        Some(e) => tracing::warn!(
            verb,
            container,
            ifname,
            subnet,
            decision,
            duration_ms,
            outcome = "error",
            code = e.code(),
            kind = e.kind(),
            error = %e
        ),
    }
    // Exit without tearing the runtime down: its connections and tasks need no goodbye, the
    // kernel closes the sockets, and the runtime is waiting on the exit (stdout is flushed,
    // stderr and the log file are unbuffered).
    std::process::exit(outcome.exit_code)
}
