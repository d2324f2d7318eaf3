//! CPU time and memory of another process, read from Linux `/proc`.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is gone or this
/// is not Linux.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

/// Parses the two files. `utime` and `stime` are fields 14 and 15 of `stat`, in clock ticks
/// of `USER_HZ`, which the kernel ABI fixes at 100 per second for `/proc`.
pub fn parse(stat: &str, status: &str) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(ProcSample {
        cpu: Duration::from_millis((utime + stime) * 10),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:").unwrap_or(0),
        threads: kib("Threads:").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name_and_status() {
        let stat = "4242 (call bridge) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 \
                    3 0 12345 1000000 2000 18446744073709551615";
        let status = "Name:\tcallbridge\nVmHWM:\t  20480 kB\nVmRSS:\t  18432 kB\nThreads:\t3\n";
        let s = parse(stat, status).unwrap();
        assert_eq!(s.cpu, Duration::from_millis(3800));
        assert_eq!(s.rss_kib, 18432);
        assert_eq!(s.hwm_kib, 20480);
        assert_eq!(s.threads, 3);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("linux /proc");
        assert!(s.rss_kib > 0 && s.threads >= 1);
    }
}
