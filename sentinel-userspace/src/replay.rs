//! `sentinel replay`: a pcap or pcapng file through the same pipeline as live capture.

use std::{io::Write as _, path::Path};

use serde::Serialize;

use crate::{
    analyze::Analyzer,
    capture::{CaptureReader, CaptureStats, PcapError},
    cli::{CliError, Emit, ReplayArgs},
    config::Config,
    enrich::principal::PrincipalKind,
    http::Transaction,
    models::Alert,
    pipeline::{Pipeline, PipelineSettings, PipelineStats},
};

/// What a replay saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// The capture file.
    pub capture: CaptureStats,
    /// Reassembly and HTTP.
    #[serde(flatten)]
    pub pipeline: PipelineStats,
}

/// Why a replay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or is not a capture.
    #[error("{0}")]
    Open(PcapError),
    /// The file is damaged part way; everything before the damage was replayed.
    #[error("{source}")]
    Damaged {
        /// What was wrong, with its offset.
        source: PcapError,
        /// What was replayed before it.
        summary: Box<ReplaySummary>,
    },
    /// The sink failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(std::io::Error),
}

/// Replays `path`, handing each transaction to `sink` as it completes. On a damaged file, the
/// flows are closed and their transactions emitted before the error is returned.
pub fn replay(
    path: &Path,
    settings: PipelineSettings,
    sink: impl FnMut(Transaction) -> std::io::Result<()>,
) -> Result<ReplaySummary, ReplayError> {
    replay_with(path, settings, None, sink)
}

/// [`replay`], cutting every payload to `snap_len` bytes first when given.
pub fn replay_with(
    path: &Path,
    settings: PipelineSettings,
    snap_len: Option<usize>,
    mut sink: impl FnMut(Transaction) -> std::io::Result<()>,
) -> Result<ReplaySummary, ReplayError> {
    let mut reader = CaptureReader::open(path).map_err(ReplayError::Open)?;
    let mut pipe = Pipeline::new(settings);
    let mut damage = None;
    loop {
        match reader.next_segment() {
            Ok(Some(mut seg)) => {
                if let Some(n) = snap_len
                    && seg.payload.len() > n
                {
                    seg.payload.truncate(n);
                }
                pipe.push(seg);
                if pipe.has_output() {
                    for t in pipe.drain() {
                        sink(t).map_err(ReplayError::Output)?;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                damage = Some(e);
                break;
            }
        }
    }
    pipe.finish();
    for t in pipe.drain() {
        sink(t).map_err(ReplayError::Output)?;
    }
    let summary = ReplaySummary {
        capture: reader.stats().clone(),
        pipeline: pipe.stats(),
    };
    match damage {
        Some(source) => Err(ReplayError::Damaged {
            source,
            summary: Box::new(summary),
        }),
        None => Ok(summary),
    }
}

/// The pipeline limits `sentinel replay` was given.
pub fn settings(args: &ReplayArgs) -> PipelineSettings {
    let mut s = PipelineSettings::default();
    s.http.body_cap = args.body_cap;
    s.reassembly.mem_cap = args.mem_cap;
    s.reassembly.flow_cap = args.flow_cap;
    s.reassembly.idle_timeout_ns = args.idle_timeout.as_nanos().min(u64::MAX as u128) as u64;
    s
}

/// The analyzer `sentinel replay` runs: the config's `[enrich]`, `[geoip]` and `[models]`, and
/// the `--geoip-db` files after the config's. A bad config or database is bad input.
pub fn analyzer(args: &ReplayArgs) -> Result<Analyzer, CliError> {
    let cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| CliError::input(e.to_string()))?,
        None => Config::default(),
    };
    if args.emit == Emit::Alerts && !cfg.models.enabled {
        return Err(CliError::input(
            "the configuration turns the models off ([models] enabled = false): nothing raises \
             alerts (--emit transactions replays without them)",
        ));
    }
    let mut geoip = cfg.geoip.files.clone();
    geoip.extend(args.geoip_db.iter().cloned());
    Analyzer::new(&cfg.enrich, &cfg.models, &geoip).map_err(|e| CliError::input(e.to_string()))
}

/// Replays `path` through `analyzer`, as `sentinel replay --emit alerts` does: each transaction
/// is enriched and run through the models, and `sink` is handed the alerts it raised (often
/// none); at the end, also after a damaged file, the windows still open are judged as of the
/// last transaction's time and `sink` is handed those. The summary and errors are
/// [`replay_with`]'s; a failing sink ends the replay with [`ReplayError::Output`].
pub fn alerts(
    path: &Path,
    settings: PipelineSettings,
    snap_len: Option<usize>,
    analyzer: &mut Analyzer,
    mut sink: impl FnMut(&[Alert]) -> std::io::Result<()>,
) -> Result<ReplaySummary, ReplayError> {
    let mut raised = Vec::new();
    let mut last_ts = 0u64;
    let result = replay_with(path, settings, snap_len, |mut t| {
        last_ts = last_ts.max(t.ts_ns);
        analyzer.transaction(&mut t, &mut raised);
        let r = sink(&raised);
        raised.clear();
        r
    });
    if matches!(result, Err(ReplayError::Output(_))) {
        return result;
    }
    analyzer.finish(last_ts, &mut raised);
    sink(&raised).map_err(ReplayError::Output)?;
    result
}

/// `sentinel replay`: prints one JSON line per transaction (`--emit transactions`, with the
/// principal enrichment found) or per alert (`--emit alerts`) on stdout. A file that cannot be
/// read, or is damaged part way, is bad input (exit 2), after what it held was printed.
pub fn command(args: &ReplayArgs) -> Result<(), CliError> {
    let mut analyzer = analyzer(args)?;
    // `-` is standard input, as for most tools that read files.
    let file = if args.file.as_os_str() == "-" {
        Path::new("/dev/stdin")
    } else {
        args.file.as_path()
    };
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out.lock());
    let mut line = Vec::with_capacity(512);
    let path = args.file.display().to_string();
    let emit = args.emit;
    let mut alerts_printed = 0usize;
    let result = match emit {
        Emit::Transactions => replay_with(file, settings(args), args.snap_len, |mut t| {
            let obs = analyzer.observation(&t);
            // The address alone is not an identity: it is in src_ip already.
            t.principal = (obs.principal.kind != PrincipalKind::Ip).then(|| obs.principal.name());
            line.clear();
            serde_json::to_writer(&mut line, &t.record(analyzer.api_key_params()))
                .map_err(std::io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)
        }),
        Emit::Alerts => alerts(
            file,
            settings(args),
            args.snap_len,
            &mut analyzer,
            |raised| {
                alerts_printed += raised.len();
                for a in raised {
                    line.clear();
                    serde_json::to_writer(&mut line, a).map_err(std::io::Error::other)?;
                    line.push(b'\n');
                    out.write_all(&line)?;
                }
                Ok(())
            },
        ),
    };
    let flushed = out.flush();
    let geo_errors = analyzer.stats().geo_errors;
    if geo_errors > 0 {
        eprintln!(
            "sentinel: warning: {geo_errors} GeoIP lookup(s) found a record that cannot be read \
             (a damaged database?): those addresses had no location, so no geo alert"
        );
    }
    let summary = match result {
        Ok(s) => s,
        Err(ReplayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(());
        }
        Err(ReplayError::Output(e)) => {
            return Err(CliError::runtime(format!("writing output: {e}")));
        }
        Err(ReplayError::Open(e)) => {
            return Err(CliError::input(match e {
                PcapError::Open { .. } => e.to_string(),
                other => format!("{path}: {other}"),
            }));
        }
        Err(ReplayError::Damaged { source, summary }) => {
            if args.stats {
                eprintln!("{}", stats_line(&summary, emit, &analyzer));
            }
            let transactions = summary.pipeline.http.transactions;
            let printed = match emit {
                Emit::Transactions => format!("the {transactions} transaction(s) before it were"),
                Emit::Alerts => format!(
                    "the {alerts_printed} alert(s) raised by the {transactions} transaction(s) \
                     before it were"
                ),
            };
            return Err(CliError::input(format!(
                "{path}: {source}; {printed} printed"
            )));
        }
    };
    if let Err(e) = flushed
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(CliError::runtime(format!("writing output: {e}")));
    }
    if args.stats {
        eprintln!("{}", stats_line(&summary, emit, &analyzer));
    }
    Ok(())
}

/// The `--stats` line: the summary, and with `--emit alerts` the analysis and models' figures,
/// as one JSON object with its keys sorted (whether the replay finished or met damage).
fn stats_line(summary: &ReplaySummary, emit: Emit, analyzer: &Analyzer) -> serde_json::Value {
    let mut stats = serde_json::to_value(summary).expect("serialisable");
    if emit == Emit::Alerts {
        stats["analysis"] = serde_json::to_value(analyzer.stats()).expect("serialisable");
        stats["models"] = serde_json::to_value(analyzer.engine_stats()).expect("serialisable");
    }
    stats
}

#[cfg(test)]
mod models_off {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn args(config: &std::path::Path, emit: &str) -> crate::cli::ReplayArgs {
        let argv = ["sentinel", "replay", "x.pcap", "--emit", emit, "--config"];
        let cli = Cli::try_parse_from(
            argv.iter()
                .map(|a| a.to_string())
                .chain([config.display().to_string()]),
        )
        .unwrap();
        let Command::Replay(args) = cli.command else {
            panic!("not replay");
        };
        args
    }

    #[test]
    fn alerts_are_refused_with_the_models_off_and_transactions_are_not() {
        let dir = crate::lab::TempDir::new("sentinel-replay-models-off").unwrap();
        let config = dir.join("sentinel.toml");
        std::fs::write(&config, "[models]\nenabled = false\n").unwrap();
        let Err(e) = super::analyzer(&args(&config, "alerts")) else {
            panic!("alerts with the models off");
        };
        assert_eq!(e.code, 2);
        assert!(e.message.contains("enabled = false"), "{}", e.message);
        assert!(super::analyzer(&args(&config, "transactions")).is_ok());
    }

    #[test]
    fn the_configured_api_key_params_are_read_and_checked() {
        let dir = crate::lab::TempDir::new("sentinel-replay-key-params").unwrap();
        let config = dir.join("sentinel.toml");
        // The names `--emit transactions` redacts are the configuration's.
        std::fs::write(
            &config,
            "[models]\napi_key_params = [\"subscription-key\"]\n",
        )
        .unwrap();
        let a = super::analyzer(&args(&config, "transactions")).unwrap();
        assert_eq!(a.api_key_params(), ["subscription-key"]);
        // A bad one is bad input, said in one line.
        std::fs::write(&config, "[models]\napi_key_params = [\"key\", \"a&b\"]\n").unwrap();
        let Err(e) = super::analyzer(&args(&config, "transactions")) else {
            panic!("a bad api_key_params accepted");
        };
        assert_eq!(e.code, 2);
        assert!(e.message.contains("api_key_params"), "{}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
    }
}
