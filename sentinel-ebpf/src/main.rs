//! Sentinel's kernel programs.
//!
//! - `sentinel_xdp`: per packet, parse, then allowlist (always wins) -> flow kill (5-tuple) ->
//!   blocklist (exact hash, then LPM trie) -> throttle (token bucket per source or per aggregate
//!   prefix) -> pass; count the packet under exactly one verdict reason and per source (except
//!   sources the blocklist drops on first sight: see `decide`).
//! - `sentinel_xdp_drop` / `sentinel_xdp_pass`: bare programs used as benchmark floors and as
//!   the pass-only arm of overhead comparisons.
//! - `sentinel_bench_gen` / `sentinel_bench_ref`: the datapath benchmark's traffic generator
//!   (run with `BPF_PROG_RUN` live frames) and its minimal hash-blocklist reference; never
//!   attached by the daemon.
//!
//! Fail policy: anything unexpected (unparseable headers, a map update that fails) passes the
//! packet and is counted. Enforcement must never turn into an outage.
#![no_std]
#![no_main]

mod bench;
mod parse;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
