//! `ringcache` command line: parse, load the configuration, hand over.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ringcache::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "ringcache", version, about = "HTTP/1.1 caching reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `serve` flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the caching proxy.
    Serve(ServeArgs),
    /// Run the built-in demo origin (a small JSON API with latency knobs).
    Origin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Event-loop threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Describe a store file (format, layout, clean flag, segments, items)
    /// without starting a server or changing the file.
    Inspect {
        /// The store file.
        #[arg(long)]
        store: std::path::PathBuf,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The TOML file to check.
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    ringcache::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            Config::load(&args).and_then(|config| ringcache::runtime::serve(config, &args))
        }
        Command::Origin { listen, threads } => ringcache::demo_origin::run(listen, threads.max(1))
            .map_err(|e| format!("demo origin: {e}")),
        Command::Inspect { store } => ringcache::store::inspect::inspect(&store)
            .map(|report| print!("{report}"))
            .map_err(|e| format!("store {}: {e}", store.display())),
        Command::CheckConfig { config } => {
            let args = ServeArgs {
                config: Some(config),
                ..Default::default()
            };
            Config::load(&args).map(|c| print!("{c}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
