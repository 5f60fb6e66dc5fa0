//! The `jasper-host` binary: parse flags, set up logging (and, for `run`
//! with `[telemetry] otlp_endpoint`, the trace exporter) once, run a command.

use std::io::IsTerminal;

use clap::Parser;
use jasper_host::cli::Command;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = jasper_host::cli::Cli::parse();
    // Only `run` exports traces; a config that does not load is reported
    // by the command itself.
    let telemetry = match &cli.command {
        Command::Run(c) => jasper_host::config::Config::load(&c.config)
            .ok()
            .map(|cfg| (cfg.telemetry, cfg.node.name)),
        _ => None,
    };
    let (otel, telemetry) = match telemetry
        .map(|(t, name)| jasper_host::telemetry::layer(&t, &name))
        .transpose()
    {
        Ok(Some(Some((layer, handle)))) => (Some(layer), Some(handle)),
        Ok(_) => (None, None),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour(
                    std::io::stderr().is_terminal(),
                    std::env::var_os("NO_COLOR"),
                )),
        )
        .with(otel)
        .init();
    let result = jasper_host::cli::dispatch(cli).await;
    if let Some(t) = telemetry {
        // The last spans (a drained host's) go out before the exit.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                jasper_host::join_causes(e.chain().map(|c| c.to_string()))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Colour the log only on a terminal (a file or a pipe would keep the escape
/// codes), and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn the_log_is_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("".into())));
    }
}
