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

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN's `ctx_in` describing a coalesced packet (GSO or
/// GRO) of `segs` wire segments of `size` payload bytes: `gso_segs` at offset 164, `gso_size`
/// at 176, both taken by the kernel's test run.
pub fn skb_ctx_coalesced(segs: u32, size: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&size.to_ne_bytes());
    ctx
}

/// Captures `port` with a 2048-byte snap length and the wakeup shift the daemon would use.
pub fn capture_port(cap: &mut CaptureHandles, port: u16) -> anyhow::Result<()> {
    capture_port_snap(cap, port, 2048)
}

/// Captures `port` with a snap length of `snap_len` bytes and the daemon's wakeup shift.
pub fn capture_port_snap(cap: &mut CaptureHandles, port: u16, snap_len: u32) -> anyhow::Result<()> {
    cap.ports.set(port as u32, 1u8, 0)?;
    cap.config.set(
        0,
        CaptureConfig {
            snap_len,
            wakeup_shift: sentinel_common::wakeup_shift(
                sentinel_common::DEFAULT_RING_BYTES,
                aya::util::nr_cpus().map_or(1, |n| n as u32),
            ),
        },
        0,
    )?;
    Ok(())
}
