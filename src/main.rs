//! The `callbridge` command line: nothing but argument parsing and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "callbridge",
    version,
    about = "Puts the Gemini Live voice model on the phone"
)]
struct Cli {
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line, for log
    /// shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CALLBRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; ANSI colour only when stdout is a terminal.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter), never colour.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (Twilio webhook + media WebSocket).
    Serve {
        /// Configuration file (see configs/callbridge.toml); defaults apply without one.
        #[arg(short, long, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective settings (secrets redacted).
    CheckConfig {
        /// Configuration file.
        #[arg(short, long, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Open one model session exactly as a call would and report whether the model accepts
    /// the setup. Exit status: 0 accepted, 1 refused by the model, 2 unreachable, timed out
    /// or invalid configuration.
    CheckModel {
        /// Configuration file.
        #[arg(short, long, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// One command, no account: bridge + Gemini simulator + a simulated caller.
    Demo(callbridge::demo::DemoArgs),
    /// A simulated Twilio caller: streams a WAV to a bridge and records what it hears.
    Call(callbridge::sim::caller::CallArgs),
    /// A local Gemini Live server for tests, the demo and development.
    SimulateGemini(callbridge::sim::gemini::SimulateArgs),
    /// Many simulated calls against a bridge: latency, CPU and memory per call (see
    /// docs/PERFORMANCE.md).
    Loadtest(callbridge::loadtest::LoadArgs),
}

fn init_logging(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        // Logs written to a file or a pipe carry no ANSI escape codes.
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// `check-model`: the outcome's line on stdout; exit 0 accepted, 1 refused, 2 no verdict or
/// a configuration error.
async fn check_model(config: Option<&std::path::Path>) -> ExitCode {
    use callbridge::gemini::preflight::PreflightOutcome;
    init_logging("warn");
    match callbridge::run::check_model(config).await {
        Ok(outcome) => {
            println!("{}", outcome.one_line());
            match outcome {
                PreflightOutcome::Accepted { .. } => ExitCode::SUCCESS,
                PreflightOutcome::Refused { .. } => ExitCode::from(1),
                PreflightOutcome::Unreachable { .. } => ExitCode::from(2),
            }
        }
        Err(e) => {
            eprintln!("callbridge: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callbridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::CheckModel { config } = &cli.command {
        return rt.block_on(check_model(config.as_deref()));
    }
    let result: Result<(), String> = rt.block_on(async move {
        match cli.command {
            Command::Serve { config } => {
                init_logging("info");
                callbridge::run::serve(config.as_deref())
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::CheckModel { .. } => unreachable!("handled above"),
            Command::CheckConfig { config } => {
                let env = |k: &str| std::env::var(k).ok();
                callbridge::config::Config::load(config.as_deref(), &env)
                    .map(|c| {
                        let (p, how) = c.model_profile();
                        println!("{c:#?}");
                        println!("model profile: {} ({}, {how:?})", p.name, p.status.as_str());
                    })
                    .map_err(|e| e.to_string())
            }
            Command::Demo(args) => {
                init_logging("warn");
                callbridge::demo::run(args).await.map_err(|e| e.to_string())
            }
            Command::Call(args) => {
                init_logging("warn");
                callbridge::sim::caller::run_cli(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Loadtest(args) => {
                init_logging("warn");
                callbridge::loadtest::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::SimulateGemini(args) => {
                init_logging("info");
                callbridge::sim::gemini::run_cli(args)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callbridge: {e}");
            ExitCode::FAILURE
        }
    }
}
