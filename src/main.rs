//! The `isthmus` binary.
//!
//! Subcommands so far: `resolver check`, the law checker for merge modules.
//! Node assembly, server, demo, admin and client commands come later.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod resolver_cmd;

/// Isthmus: a multi-datacenter key-value store with WebAssembly merge functions.
#[derive(Parser, Debug)]
#[command(name = "isthmus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with resolver (merge function) modules.
    Resolver {
        #[command(subcommand)]
        command: resolver_cmd::ResolverCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Resolver { command } => resolver_cmd::run(command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
