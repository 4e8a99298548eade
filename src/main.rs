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
    // pass and exits 0; one-shot commands are interrupted (130). A second signal exits at once.
    let stop = CancellationToken::new();
    let result = runtime.block_on(async {
        let signals = stop.clone();
        let mut received = Signals::new();
        tokio::spawn(async move {
            received.next().await;
            signals.cancel();
            // A second signal means "now": whatever is under way is left to resume later.
            received.next().await;
            eprintln!("stopping at once");
            std::process::exit(130);
        });
        match cli.command {
            Command::Agent(args) => commands::agent::run(*args, stop).await,
            Command::Verify(args) => commands::verify::run_verify(args, stop).await,
            Command::Repair(args) => commands::verify::run_repair(*args, stop).await,
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
        Command::Verify(_) => unreachable!("verify runs with the stop token"),
        Command::Repair(_) => unreachable!("repair runs with the stop token"),
        Command::Status(args) => commands::status::run(args).await,
        Command::Check(args) => commands::check::run(args).await,
        Command::Doctor(args) => commands::doctor::run(*args).await,
    }
}

/// SIGTERM and SIGINT, listened for from start to end (so none is missed between two waits).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
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
