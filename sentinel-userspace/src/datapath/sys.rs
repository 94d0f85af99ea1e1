//! Raw `bpf(2)` batch operations that aya 0.14 does not expose: `BPF_MAP_UPDATE_BATCH` for bulk
//! loads and `BPF_MAP_LOOKUP_BATCH` for fast scans (counting, listing, expiry sweeps).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member (Linux 5.6+).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix for this command and lives
    // across the call; the kernel reads and writes only `size_of::<BatchAttr>()` bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `keys[i] -> values[i]` in batches of at most `chunk` elements. Returns how many were
/// written; on error, the elements before that count are in the map.
pub fn update_batch<K: Copy, V: Copy>(
    map: impl AsFd,
    keys: &[K],
    values: &[V],
    chunk: usize,
) -> io::Result<usize> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.as_fd().as_raw_fd() as u32;
    let mut done = 0;
    while done < keys.len() {
        let n = chunk.min(keys.len() - done);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd,
            ..Default::default()
        };
        let res = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // On error the kernel reports in `count` how many elements it processed.
        done += attr.count as usize;
        res?;
    }
    Ok(done)
}

/// Reads every element of a hash-type map with `BPF_MAP_LOOKUP_BATCH`. `value_size` is the size
/// the kernel copies per element (for per-CPU maps: the rounded value size times the CPU count).
/// Calls `f(key, value_bytes)` for each element.
pub fn lookup_all<K: Copy + Default>(
    map: impl AsFd,
    value_size: usize,
    mut f: impl FnMut(&K, &[u8]),
) -> io::Result<()> {
    const CHUNK: usize = 4096;
    let fd = map.as_fd().as_raw_fd() as u32;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![0u8; CHUNK * value_size];
    // Opaque batch tokens; for hash maps the kernel uses a u32 bucket index.
    let mut in_batch = 0u64;
    let mut out_batch = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut in_batch as *mut u64 as u64
            },
            out_batch: &mut out_batch as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            ..Default::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        for i in 0..n {
            f(&keys[i], &values[i * value_size..(i + 1) * value_size]);
        }
        match res {
            Ok(()) => {}
            // ENOENT: this was the last batch.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// Number of possible CPUs, the number of slots per-CPU maps hold.
pub fn possible_cpus() -> io::Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| e)
}
