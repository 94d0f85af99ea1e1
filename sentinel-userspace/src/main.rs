//! The `sentinel` binary: parses the command line and maps every failure to a one-line error and
//! an exit status (1: runtime error, 2: bad usage or input).

use clap::Parser as _;
use sentinel::{
    cli::{self, Cli, CliError, Command, client_command},
    config::Config,
    daemon::{self, PinLockState, RunOptions},
    datapath,
};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap prints them, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        // Usage errors: one line that says what was wrong, exit 2.
        Err(e) => {
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            eprintln!("{}", cli::usage_error(&e, &args));
            std::process::exit(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("starting the runtime: {e}")))
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    if let Err(e) = result {
        eprintln!("sentinel: {}", e.message);
        std::process::exit(e.code);
    }
}

async fn dispatch(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let mut config = match &args.config {
                Some(path) => Config::load(path).map_err(|e| CliError::input(e.to_string()))?,
                None => Config::default(),
            };
            config.resolve_secrets().map_err(CliError::input)?;
            if !args.http_ports.is_empty() {
                config.capture.http_ports = args.http_ports.clone();
            }
            if let Some(snap) = args.snap_len {
                config.capture.snap_len = snap;
            }
            let prepared = daemon::preflight(&args.iface, &config, args.mode, &args.geoip_db)
                .map_err(CliError::input)?;
            daemon::run(
                RunOptions {
                    ifaces: args.iface,
                    config,
                    mode: args.mode,
                    socket: args.socket,
                    pin_dir: args.pin_path,
                    config_path: args.config.clone(),
                },
                prepared,
            )
            .await
            .map_err(|e| CliError::runtime(format!("{e:#}")))
        }
        Command::Unload {
            pin_path,
            json,
            force,
            socket: _,
        } => {
            // Held until the pins are gone (no daemon starts on them meanwhile), then removed
            // with its file (a killed daemon's too).
            let _lock = match daemon::check_pin_lock(&pin_path) {
                Ok(PinLockState::Free(lock)) => Some(lock),
                Ok(PinLockState::Held { path, holder }) if !force => {
                    let who = holder.map_or("a sentinel daemon".to_owned(), |h| h.to_string());
                    return Err(CliError::input(format!(
                        "{who} serves the pins under {} (it holds {}): stop it first (SIGTERM), or pass --force",
                        pin_path.display(),
                        path.display()
                    )));
                }
                Ok(PinLockState::Held { .. }) => None,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(CliError::runtime(format!(
                        "sentinel unload needs root (the pins' lock under {}: {e})",
                        daemon::pin_lock_path(&pin_path).display()
                    )));
                }
                Err(e) if !force => {
                    return Err(CliError::runtime(format!(
                        "cannot tell whether a daemon serves the pins under {}: {}: {e} (--force unloads anyway)",
                        pin_path.display(),
                        daemon::pin_lock_path(&pin_path).display()
                    )));
                }
                Err(_) => None,
            };
            let report =
                datapath::unload(&pin_path).map_err(|e| CliError::runtime(e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string(&report).expect("serialisable"));
            } else if report.detached.is_empty()
                && report.maps_removed == 0
                && report.qdiscs_removed.is_empty()
            {
                println!("nothing to unload under {}", pin_path.display());
            } else {
                println!(
                    "detached from {} interface(s) [{}], removed {} map pin(s) under {}",
                    report.detached.len(),
                    report.detached.join(", "),
                    report.maps_removed,
                    pin_path.display()
                );
                if !report.qdiscs_removed.is_empty() {
                    println!(
                        "removed the clsact qdisc Sentinel had added on [{}]",
                        report.qdiscs_removed.join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Replay(args) => sentinel::replay::command(&args),
        Command::Demo => tokio::task::spawn_blocking(sentinel::demo::run)
            .await
            .map_err(|e| CliError::runtime(e.to_string()))?
            .map_err(|e| CliError::runtime(format!("{e:#}"))),
        other => client_command(other).await,
    }
}
