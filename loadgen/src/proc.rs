//! Reading a process's CPU time and resident memory from /proc (Linux).

use anyhow::{Context, Result};

/// utime + stime of all `pids`, in µs; `None` when no pid is given.
pub fn cpu_us(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    // /proc reports clock ticks of USER_HZ, which is 100 on Linux (sysconf(_SC_CLK_TCK)).
    const USER_HZ: u64 = 100;
    let mut total = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime 15.
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += (ticks(11) + ticks(12)) * 1_000_000 / USER_HZ;
    }
    Ok(Some(total))
}

/// VmRSS of all `pids`, in KiB; `None` when no pid is given.
pub fn rss_kib(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0u64;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Some(total))
}
