//! CPU time and resident memory of processes and of this process's threads,
//! from `/proc/<pid>/stat`, `/proc/<pid>/status` and `/proc/self/task`
//! (Linux): for `si-bench`, the stages' benchmarks and the tests that count
//! threads.

use std::time::Instant;

/// User plus system CPU time of a process, in clock ticks, from the text of
/// `/proc/<pid>/stat` (fields 14 and 15; the command name in parentheses may
/// hold spaces, so fields are counted after its closing parenthesis).
#[must_use]
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; utime is field 14, stime 15.
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The command name of a `/proc/<pid>/stat` text: between the first `(`
/// and the last `)`, since the name itself may hold either.
#[must_use]
pub fn command_name(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// This process's threads as they are now: each one's name and CPU time in
/// clock ticks. A thread that ends while they are read is left out.
///
/// # Errors
/// When `/proc/self/task` cannot be listed.
pub fn own_threads() -> std::io::Result<Vec<(String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let (Some(name), Some(ticks)) = (command_name(&stat), cpu_ticks(&stat)) {
            threads.push((name.to_owned(), ticks));
        }
    }
    Ok(threads)
}

/// Resident set size in KiB (`VmRSS`) from the text of `/proc/<pid>/status`.
#[must_use]
pub fn rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux default, if it
/// cannot be asked).
#[must_use]
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Peak resident set size in KiB (`VmHWM`, the high-water mark of `VmRSS`
/// over the process's life) from the text of `/proc/<pid>/status`.
#[must_use]
pub fn hwm_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmHWM:")
}

/// The KiB figure of the `/proc/<pid>/status` line that starts with `field`.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn read_cpu(pid: u32) -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_rss(pid: u32) -> Option<u64> {
    rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// One watched process over a measuring window.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    start_ticks: Option<u64>,
    peak_rss_kib: u64,
}

/// CPU and memory of one process over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub name: String,
    /// Average CPU over the window, in % of one core.
    pub cpu_percent: Option<f64>,
    /// Largest RSS sampled in the window, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Samples a set of processes: CPU time at the window's start and end, RSS
/// at every [`Window::sample`].
#[derive(Debug)]
pub struct Window {
    started: Instant,
    ticks_per_second: u64,
    processes: Vec<Watched>,
}

impl Window {
    /// Opens a window over `processes` (name, pid).
    #[must_use]
    pub fn open(processes: &[(String, u32)], ticks_per_second: u64) -> Self {
        let mut window = Self {
            started: Instant::now(),
            ticks_per_second,
            processes: processes
                .iter()
                .map(|(name, pid)| Watched {
                    name: name.clone(),
                    pid: *pid,
                    start_ticks: read_cpu(*pid),
                    peak_rss_kib: 0,
                })
                .collect(),
        };
        window.sample();
        window
    }

    /// Reads every process's RSS, keeping the largest.
    pub fn sample(&mut self) {
        for p in &mut self.processes {
            if let Some(rss) = read_rss(p.pid) {
                p.peak_rss_kib = p.peak_rss_kib.max(rss);
            }
        }
    }

    /// Seconds since the window opened.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Closes the window: average CPU and peak RSS of each process.
    #[must_use]
    pub fn close(mut self) -> Vec<Usage> {
        self.sample();
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        self.processes
            .iter()
            .map(|p| {
                let cpu = p.start_ticks.zip(read_cpu(p.pid)).map(|(a, b)| {
                    b.saturating_sub(a) as f64 / self.ticks_per_second as f64 / seconds * 100.0
                });
                Usage {
                    name: p.name.clone(),
                    cpu_percent: cpu,
                    peak_rss_mib: (p.peak_rss_kib > 0).then(|| p.peak_rss_kib as f64 / 1024.0),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat =
            "4242 (si-ingress) S 1 4242 4242 0 -1 4194560 1200 0 3 0 517 83 0 0 20 0 9 0 1234 0 0";
        assert_eq!(cpu_ticks(stat), Some(600));
        let spaced = "77 (tokio (rt) x) R 1 77 77 0 -1 0 0 0 0 0 10 5 0 0";
        assert_eq!(cpu_ticks(spaced), Some(15));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(command_name(stat), Some("si-ingress"));
        assert_eq!(command_name(spaced), Some("tokio (rt) x"));
        assert_eq!(command_name("garbage"), None);
    }

    #[test]
    fn a_thread_is_among_the_processs_threads_while_it_runs() -> anyhow::Result<()> {
        const NAME: &str = "procfs-probe";
        let named = || -> std::io::Result<usize> {
            Ok(own_threads()?.iter().filter(|(n, _)| n == NAME).count())
        };
        let (started, running) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name(NAME.to_owned())
            .spawn(move || {
                started.send(()).ok();
                stopped.recv().ok();
            })?;
        running.recv()?;
        assert_eq!(named()?, 1);
        stop.send(())?;
        probe
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
        // The kernel lets the joined thread go a moment after join returns.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while named()? > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(named()?, 0, "an ended thread is gone");
        Ok(())
    }

    #[test]
    fn rss_comes_from_vmrss_and_the_peak_from_vmhwm() {
        let status = "Name:\tsi-egress\nVmPeak:\t  900000 kB\nVmHWM:\t   80000 kB\nVmRSS:\t   73912 kB\nThreads:\t9\n";
        assert_eq!(rss_kib(status), Some(73_912));
        assert_eq!(hwm_kib(status), Some(80_000));
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id();
        let window = Window::open(&[("me".to_owned(), me)], ticks_per_second());
        let usage = window.close();
        assert_eq!(usage.len(), 1);
        assert!(usage[0].cpu_percent.is_some());
        assert!(usage[0].peak_rss_mib.is_some_and(|mib| mib > 0.0));
    }
}
