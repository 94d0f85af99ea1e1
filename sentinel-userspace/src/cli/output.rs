//! How the CLI prints: aligned tables for people, JSON (`--json`) for programs, and the live
//! `top` view.

use std::{collections::HashMap, time::Duration};

use crate::{
    capture::{
        defrag::{DefragGroup, DefragStats},
        live::defrag_key,
    },
    control::{
        api::{Entry, ExplainReport, ListKind, SourceReport, StatusReport, TopReport},
        client::Client,
    },
};

use super::CliError;

fn fmt_ttl(s: Option<f64>) -> String {
    match s {
        None => "never".into(),
        Some(s) => humantime::format_duration(Duration::from_secs(s.ceil() as u64)).to_string(),
    }
}

/// Prints list entries.
pub fn entries(kind: ListKind, entries: &[Entry], json: bool) {
    if json {
        for e in entries {
            println!("{}", serde_json::to_string(e).expect("serialisable"));
        }
        return;
    }
    if entries.is_empty() {
        println!("{} list is empty", kind.as_str());
        return;
    }
    let tw = entries
        .iter()
        .map(|e| e.target.len())
        .max()
        .unwrap_or(6)
        .max(6);
    match kind {
        ListKind::Throttle => {
            println!(
                "{:<tw$}  {:>10}  {:>8}  {:>9}  {:>12}  {:<6}  REASON",
                "TARGET", "RATE/S", "BURST", "PER", "EXPIRES IN", "SHADOW"
            );
            for e in entries {
                let t = e.throttle.expect("throttle entries carry a spec");
                println!(
                    "{:<tw$}  {:>10}  {:>8}  {:>9}  {:>12}  {:<6}  {}",
                    e.target,
                    t.rate_pps,
                    t.burst,
                    t.aggregate
                        .map(|a| format!("/{a}"))
                        .unwrap_or_else(|| "source".into()),
                    fmt_ttl(e.ttl_remaining_s),
                    if e.shadow { "yes" } else { "no" },
                    e.reason.as_deref().unwrap_or("-")
                );
            }
        }
        _ => {
            println!(
                "{:<tw$}  {:>12}  {:<6}  REASON",
                "TARGET", "EXPIRES IN", "SHADOW"
            );
            for e in entries {
                println!(
                    "{:<tw$}  {:>12}  {:<6}  {}",
                    e.target,
                    fmt_ttl(e.ttl_remaining_s),
                    if e.shadow { "yes" } else { "no" },
                    e.reason.as_deref().unwrap_or("-")
                );
            }
        }
    }
    println!(
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
}

/// Prints the status report.
pub fn status(s: &StatusReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).expect("serialisable"));
        return;
    }
    println!(
        "sentinel {}  mode {}  up {}  pins {}",
        s.version,
        s.mode,
        humantime::format_duration(Duration::from_secs(s.uptime_s as u64)),
        s.pin_path
    );
    println!("\nprograms:");
    if s.programs.is_empty() {
        println!("  none attached");
    }
    for p in &s.programs {
        println!(
            "  {:<16} {:<7} {} (prog id {}, link id {})",
            p.iface, p.mode, p.program, p.program_id, p.link_id
        );
    }
    println!("\nmaps:");
    for m in &s.maps {
        let pct = if m.max_entries == 0 {
            0.0
        } else {
            m.entries as f64 * 100.0 / m.max_entries as f64
        };
        println!(
            "  {:<14} {:>9} / {:<9} {:>5.1}%",
            m.name, m.entries, m.max_entries, pct
        );
    }
    if let Some(c) = &s.capture {
        let ports: Vec<String> = c.http_ports.iter().map(u16::to_string).collect();
        println!(
            "\ncapture: ports {}  snap {} B",
            ports.join(","),
            c.snap_len
        );
        let k = |n: &str| c.kernel.get(n).copied().unwrap_or(0);
        println!(
            "  kernel: {} segments ({} bytes; {} of them IP fragments), {} coalesced packets split into segments, {} lost to a full ring buffer, {} truncated, {} malformed, {} copy failures, {} TCP packets not followed (headers out of the parser's reach)",
            k("captured"),
            k("bytes"),
            k("fragments"),
            k("coalesced"),
            k("ring_full"),
            k("truncated"),
            k("malformed"),
            k("load_failed"),
            k("unfollowed")
        );
        let u = |n: &str| c.consumer.get(n).copied().unwrap_or(0);
        println!(
            "  consumer: {} records, {} undecodable, {} wake-ups",
            u("records"),
            u("decode_errors"),
            u("wakeups")
        );
        let defrag = |group: DefragGroup| {
            DefragStats::FIELDS
                .iter()
                .filter(|f| f.group == group)
                .map(|f| format!("{} {}", u(&defrag_key(f.name)), f.says))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  IP fragments: {}; dropped: {}; fragments dropped: {}",
            defrag(DefragGroup::Seen),
            defrag(DefragGroup::DatagramsDropped),
            defrag(DefragGroup::FragmentsDropped)
        );
    }
    if s.analysis.is_none() && s.capture.is_some() {
        println!("\nmodels: off ([models] enabled = false: capture only)");
    }
    if let Some(a) = &s.analysis {
        println!("\nmodels:");
        let geo = &a["geo"];
        if geo["on"].as_bool() == Some(true) {
            let files: Vec<&str> = geo["files"]
                .as_array()
                .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!("  geo: on ({})", files.join(", "));
            if let Some(n) = geo["errors"].as_u64().filter(|n| *n > 0) {
                println!(
                    "  geo: {n} lookups found a record that cannot be read (a damaged database?); those addresses have no location"
                );
            }
        } else {
            println!(
                "  geo: off ({})",
                geo["reason"].as_str().unwrap_or("no GeoIP database")
            );
        }
        println!(
            "  {} transactions analysed, {} principals tracked, {} sessions known, {} endpoint templates",
            a["transactions"].as_u64().unwrap_or(0),
            a["principals"].as_u64().unwrap_or(0),
            a["sessions_tracked"].as_u64().unwrap_or(0),
            a["templates"].as_u64().unwrap_or(0)
        );
        let q = &a["queue"];
        if q["stopped"].as_bool() == Some(true) {
            println!(
                "  ANALYSIS STOPPED: transactions are dropped, no alert is raised (see the daemon's log)"
            );
        }
        if let Some(n) = q["panicked"].as_u64().filter(|n| *n > 0) {
            println!(
                "  analysis panicked on {n} transactions (skipped; a defect: see the daemon's log)"
            );
        }
        println!(
            "  queue: {} dropped of {} queued, last lag {:.1} ms",
            q["dropped"].as_u64().unwrap_or(0),
            q["queued"].as_u64().unwrap_or(0),
            q["last_lag_ms"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(r) = &s.response {
        let kinds: Vec<String> = r["alerts"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
            .unwrap_or_default();
        println!(
            "  alerts: {}",
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(", ")
            }
        );
        println!(
            "  response: {} verdicts, {} tokens revoked, {} revocations failed, {} allowlisted",
            r["verdicts"].as_u64().unwrap_or(0),
            r["tokens_revoked"].as_u64().unwrap_or(0),
            r["revocations_failed"].as_u64().unwrap_or(0),
            r["allowlisted"].as_u64().unwrap_or(0)
        );
    }
    if let Some(p) = &s.policy {
        println!(
            "  policy: {} ({} rules, {}){}",
            p["source"].as_str().unwrap_or("?"),
            p["rules"].as_u64().unwrap_or(0),
            p["mode"].as_str().unwrap_or("?"),
            p["last_error"]
                .as_str()
                .map(|e| format!("; last reload rejected: {e}"))
                .unwrap_or_default()
        );
    }
    println!("\ncounters:");
    println!("  {:<18} {:>14} {:>16}", "REASON", "PACKETS", "BYTES");
    for (k, c) in &s.counters {
        println!("  {:<18} {:>14} {:>16}", k, c.packets, c.bytes);
    }
}

fn with_rates(prev: &TopReport, cur: &mut TopReport) {
    let dt = cur.at_ns.saturating_sub(prev.at_ns) as f64 / 1e9;
    if dt <= 0.0 {
        return;
    }
    let before: HashMap<&str, &SourceReport> = prev
        .sources
        .iter()
        .map(|s| (s.src_ip.as_str(), s))
        .collect();
    for s in &mut cur.sources {
        let (p0, b0) = before
            .get(s.src_ip.as_str())
            .map(|p| (p.packets, p.bytes))
            .unwrap_or((0, 0));
        s.pps = Some(s.packets.saturating_sub(p0) as f64 / dt);
        s.bps = Some(s.bytes.saturating_sub(b0) as f64 * 8.0 / dt);
    }
}

/// `sentinel top`: one JSON snapshot with rates over one second, or a live view.
pub async fn top(client: &Client, limit: u64, json: bool) -> Result<(), CliError> {
    // Rates need two snapshots; ask for more than shown so sources entering the top still have a
    // previous figure.
    let uri = format!("/v1/top?limit={}", limit.saturating_mul(4).max(100));
    let mut prev: TopReport = client.get(&uri).await?;
    if json {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut cur: TopReport = client.get(&uri).await?;
        with_rates(&prev, &mut cur);
        cur.sources.truncate(limit as usize);
        println!("{}", serde_json::to_string(&cur).expect("serialisable"));
        return Ok(());
    }
    live_top(client, &uri, limit as usize, &mut prev).await
}

async fn live_top(
    client: &Client,
    uri: &str,
    limit: usize,
    prev: &mut TopReport,
) -> Result<(), CliError> {
    use ratatui::{
        crossterm::event::{self, Event, KeyCode},
        layout::Constraint,
        style::{Modifier, Style},
        widgets::{Block, Row, Table},
    };
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::input(
            "sentinel top: the live view needs a terminal; use --json for a snapshot",
        ));
    }
    let mut terminal = ratatui::try_init().map_err(|e| {
        CliError::input(format!(
            "sentinel top: no terminal for the live view: {e}; use --json"
        ))
    })?;
    let result = async {
        loop {
            let mut cur: TopReport = client.get(uri).await?;
            with_rates(prev, &mut cur);
            let rows: Vec<Row> = cur
                .sources
                .iter()
                .take(limit)
                .map(|s| {
                    Row::new(vec![
                        s.src_ip.clone(),
                        format!("{:.0}", s.pps.unwrap_or(0.0)),
                        format!("{:.1}", s.bps.unwrap_or(0.0) / 1e6),
                        s.packets.to_string(),
                        s.bytes.to_string(),
                        s.dropped.to_string(),
                        s.verdict.clone(),
                    ])
                })
                .collect();
            let table = Table::new(
                rows,
                [
                    Constraint::Length(40),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(14),
                    Constraint::Length(16),
                    Constraint::Length(12),
                    Constraint::Length(9),
                ],
            )
            .header(
                Row::new(vec![
                    "SOURCE", "PPS", "MBIT/S", "PACKETS", "BYTES", "DROPPED", "VERDICT",
                ])
                .style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(Block::bordered().title(" sentinel top (q to quit) "));
            terminal
                .draw(|f| f.render_widget(table, f.area()))
                .map_err(|e| CliError::runtime(e.to_string()))?;
            *prev = cur;
            if event::poll(Duration::from_secs(1)).map_err(|e| CliError::runtime(e.to_string()))?
                && let Event::Key(k) =
                    event::read().map_err(|e| CliError::runtime(e.to_string()))?
                && matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
            {
                return Ok(());
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

fn alert_line(a: &serde_json::Value) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
    format!(
        "{} {:<8} {:<20} {:<16} {:<3} {:<14} {}",
        s("ts"),
        s("severity"),
        s("kind"),
        s("src_ip"),
        a["country"].as_str().unwrap_or("--"),
        s("action"),
        s("explanation")
    )
}

/// `sentinel alerts`.
pub async fn alerts(
    client: &Client,
    follow: bool,
    since: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let now_ns = crate::clock::unix_ns();
    let mut since_ts =
        since.map(|d| crate::models::alert::rfc3339(now_ns.saturating_sub(d.as_nanos() as u64)));
    let mut seen = std::collections::HashSet::new();
    loop {
        let uri = match &since_ts {
            Some(t) => format!("/v1/alerts?since={}", super::url_escape(t)),
            None => "/v1/alerts".to_owned(),
        };
        let batch: Vec<serde_json::Value> = client.get(&uri).await?;
        for a in follow_step(&batch, &mut seen, &mut since_ts) {
            if json {
                println!("{a}");
            } else {
                println!("{}", alert_line(a));
            }
        }
        if !follow {
            if batch.is_empty() && !json {
                eprintln!("no alerts");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One answer of `alerts --follow` (alerts from `since` on): the ones not shown yet. `since`
/// moves to the newest one's time, and `seen` keeps only the alerts of that time, the only
/// ones the next answer can repeat (a long follow would otherwise keep every line it showed).
fn follow_step<'a>(
    batch: &'a [serde_json::Value],
    seen: &mut std::collections::HashSet<String>,
    since: &mut Option<String>,
) -> Vec<&'a serde_json::Value> {
    let fresh: Vec<&serde_json::Value> = batch
        .iter()
        .filter(|a| !seen.contains(&a.to_string()))
        .collect();
    if let Some(last) = batch.last().and_then(|a| a["ts"].as_str()) {
        *since = Some(last.to_owned());
        *seen = batch
            .iter()
            .filter(|a| a["ts"].as_str() == Some(last))
            .map(|a| a.to_string())
            .collect();
    }
    fresh
}

/// `sentinel explain`.
pub fn explain(r: &ExplainReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serialisable"));
        return;
    }
    println!("{}", r.target);
    if r.entries.is_empty() {
        println!("  lists: none");
    }
    for (list, e) in &r.entries {
        let extra = e
            .throttle
            .map(|t| format!(" at {} pkt/s (burst {})", t.rate_pps, t.burst))
            .unwrap_or_default();
        println!(
            "  {list} {}{extra}, {}{}, reason: {}",
            e.target,
            match e.ttl_remaining_s {
                None => "no expiry".to_owned(),
                t => format!("expires in {}", fmt_ttl(t)),
            },
            if e.shadow { " (shadow)" } else { "" },
            e.reason.as_deref().unwrap_or("-")
        );
    }
    match &r.source {
        Some(s) => println!(
            "  kernel: {} packets, {} bytes, {} dropped, last seen {:.1} s ago, verdict {}",
            s.packets, s.bytes, s.dropped, s.last_seen_s_ago, s.verdict
        ),
        None => println!("  kernel: no packets tracked for it"),
    }
    println!("  alerts: {}", r.alerts.len());
    for a in &r.alerts {
        println!("    {}", alert_line(a));
    }
    println!("  verdicts in force: {}", r.verdicts.len());
    for v in &r.verdicts {
        println!("    {}", verdict_line(v));
    }
    match &r.profile {
        Some(p) => {
            let countries: Vec<&str> = p["countries"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!(
                "  profile: {} requests since {}, {} per window, countries [{}], busiest hours (UTC) {}, last from {}",
                p["requests"],
                p["first_seen"].as_str().unwrap_or("?"),
                p["requests_per_window"],
                countries.join(", "),
                p["busiest_hours_utc"],
                p["last_ip"].as_str().unwrap_or("?")
            );
        }
        None => println!("  profile: none learned"),
    }
}

/// One verdict record (as the verdict log holds it) in words: `block 203.0.113.7/32 (shadow)
/// for brute_force user:layla, applied 2026-11-29T17:02:03.000Z, until 2026-11-29T18:02:03.000Z`.
fn verdict_line(v: &serde_json::Value) -> String {
    let time = |k: &str| {
        v[k].as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| crate::models::alert::rfc3339((t * 1e9) as u64))
    };
    let rate = v["rate_pps"]
        .as_u64()
        .map(|r| format!(" at {r} pkt/s"))
        .unwrap_or_default();
    format!(
        "{} {}{rate}{} for {}, applied {}, {}",
        v["list"].as_str().unwrap_or("?"),
        v["target"].as_str().unwrap_or("?"),
        if v["shadow"] == true { " (shadow)" } else { "" },
        v["reason"].as_str().unwrap_or("-"),
        time("applied_at").unwrap_or_else(|| "?".into()),
        match time("expires_at") {
            Some(t) if v["expires_at"].as_f64().is_some_and(|e| e > 0.0) => format!("until {t}"),
            _ => "no expiry".into(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_reads_as_a_sentence() {
        let v = serde_json::json!({
            "applied_at": 1_795_000_000.0, "expires_at": 1_795_003_600.0,
            "target": "203.0.113.7/32", "list": "throttle", "rate_pps": 20,
            "shadow": false, "reason": "brute_force user:layla"
        });
        let line = verdict_line(&v);
        assert!(
            line.starts_with(
                "throttle 203.0.113.7/32 at 20 pkt/s for brute_force user:layla, applied 2026-"
            ) && line.contains(", until 2026-"),
            "{line}"
        );
        let never = serde_json::json!({"applied_at": 1.0, "expires_at": 0.0, "target": "t",
            "list": "block", "shadow": true, "reason": "r"});
        assert!(
            verdict_line(&never).ends_with("no expiry"),
            "{}",
            verdict_line(&never)
        );
    }

    #[test]
    fn following_shows_each_alert_once_and_remembers_only_the_last_second() {
        let a = |ts: &str, n: u32| serde_json::json!({"ts": ts, "n": n});
        let (mut seen, mut since) = (std::collections::HashSet::new(), None);
        let first = [a("t1", 1), a("t2", 2), a("t2", 3)];
        assert_eq!(follow_step(&first, &mut seen, &mut since).len(), 3);
        assert_eq!(since.as_deref(), Some("t2"));
        assert_eq!(seen.len(), 2, "only t2's");
        // The server answers from t2 on: its two again, and a new one.
        let second = [a("t2", 2), a("t2", 3), a("t3", 4)];
        let shown = follow_step(&second, &mut seen, &mut since);
        assert_eq!(shown, [&a("t3", 4)]);
        assert_eq!(seen.len(), 1);
        // Nothing new: nothing shown, the place kept.
        assert!(follow_step(&[], &mut seen, &mut since).is_empty());
        assert_eq!(since.as_deref(), Some("t3"));
    }
}
