//! Helpers for running the TC capture programs by BPF_PROG_TEST_RUN.

use sentinel::datapath::loader::CaptureHandles;
use sentinel_common::CaptureConfig;

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN's `ctx_in` with only `tstamp` set (offset 152 of
/// 192 bytes as of Linux 5.16; the kernel rejects non-zero fields it does not take). The
/// kernel cannot be given `tstamp_type` this way: the program sees the stamp as the realtime
/// clock.
pub fn skb_ctx_with_tstamp(ts: u64) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[152..160].copy_from_slice(&ts.to_ne_bytes());
    ctx
}

/// Captures `port` with a 2048-byte snap length and the wakeup shift the daemon would use.
pub fn capture_port(cap: &mut CaptureHandles, port: u16) -> anyhow::Result<()> {
    cap.ports.set(port as u32, 1u8, 0)?;
    cap.config.set(
        0,
        CaptureConfig {
            snap_len: 2048,
            wakeup_shift: sentinel_common::wakeup_shift(
                sentinel_common::DEFAULT_RING_BYTES,
                aya::util::nr_cpus().map_or(1, |n| n as u32),
            ),
        },
        0,
    )?;
    Ok(())
}
