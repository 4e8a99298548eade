//! The `prepull` binary: parses the command line, sets up logging and runs a subcommand.

use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::Parser;
use prepull::commands::{self, Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGTERM/SIGINT cancel `stop`: the agent finishes (or abandons, after a grace period) its
    // pass and exits 0; one-shot commands are interrupted (130).
    let stop = CancellationToken::new();
    let result = runtime.block_on(async {
        let signals = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signals.cancel();
        });
        match cli.command {
            Command::Agent(args) => commands::agent::run(*args, stop).await,
            other => {
                tokio::select! {
                    r = run(other) => r,
                    () = stop.cancelled() => {
                        eprintln!("interrupted");
                        Ok(ExitCode::from(130))
                    }
                }
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", prepull::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pull(args) => commands::pull::run(*args).await,
        Command::Unpin(args) => commands::unpin::run(args).await,
        Command::Agent(_) => unreachable!("the agent runs with the stop token"),
        Command::Verify(args) => commands::verify::run_verify(args).await,
        Command::Repair(args) => commands::verify::run_repair(*args).await,
        Command::Status(args) => commands::status::run(args).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    // Colour only for a person at a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
