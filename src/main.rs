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
    /// Validate the configuration (file, environment, flags, as `serve`
    /// reads them) and print every key's effective value and its source.
    CheckConfig(ServeArgs),
    /// Print the configuration reference (Markdown), generated from the
    /// table of keys; README.md holds it.
    ConfigReference {
        /// Replace the reference between its markers in this file instead
        /// of printing it (e.g. README.md).
        #[arg(long, value_name = "FILE")]
        write: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    ringcache::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            ringcache::config::warn_unknown_env_vars();
            Config::load(&args).and_then(|config| ringcache::runtime::serve(config, &args))
        }
        Command::Origin { listen, threads } => ringcache::demo_origin::run(listen, threads.max(1))
            .map_err(|e| format!("demo origin: {e}")),
        Command::Inspect { store } => ringcache::store::inspect::inspect(&store)
            .map(|report| print!("{report}"))
            .map_err(|e| format!("store {}: {e}", store.display())),
        Command::CheckConfig(args) => {
            ringcache::config::warn_unknown_env_vars();
            Config::load_traced(&args, &|name| std::env::var(name).ok())
                .map(|(config, given)| print!("{}", config.describe(&given)))
        }
        Command::ConfigReference { write: None } => {
            print!("{}", ringcache::config::reference());
            Ok(())
        }
        Command::ConfigReference { write: Some(path) } => write_reference(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Replace the text between the reference markers of `path` (inclusive)
/// with the generated reference.
fn write_reference(path: &std::path::Path) -> Result<(), String> {
    use ringcache::config::{reference, REFERENCE_BEGIN, REFERENCE_END};
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let (Some(begin), Some(end)) = (text.find(REFERENCE_BEGIN), text.find(REFERENCE_END)) else {
        return Err(format!("{shown}: the reference markers are missing"));
    };
    if end < begin {
        return Err(format!("{shown}: the reference markers are out of order"));
    }
    let end = end + REFERENCE_END.len();
    let end = end + usize::from(text[end..].starts_with('\n'));
    let updated = format!("{}{}{}", &text[..begin], reference(), &text[end..]);
    std::fs::write(path, updated).map_err(|e| format!("{shown}: {e}"))
}
