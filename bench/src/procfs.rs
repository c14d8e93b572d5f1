//! What the kernel says about a proxy: its process tree, the CPU time of
//! every process in it, and their resident and proportional memory.
//!
//! A proxy is "all the processes descended from the one we started": nginx
//! and HAProxy run a master and workers, hitch a manager and a child, and a
//! reload may add or retire processes, so every figure is summed over the tree.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

struct Stat {
    ppid: i32,
    /// utime + stime + cutime + cstime, in ticks.
    ticks: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
    })
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            t.rfind(')')
                .map(|i| t[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// `root` and every process descended from it.
pub fn tree(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(s) = stat(pid) {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    if fs::metadata(format!("/proc/{root}")).is_err() {
        return out;
    }
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out
}

/// CPU seconds (user + system) used so far by the tree under `root`,
/// including children it has already reaped.
pub fn cpu_seconds(root: i32) -> f64 {
    let ticks: u64 = tree(root)
        .iter()
        .filter_map(|&p| stat(p))
        .map(|s| s.ticks)
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// Resident and proportional set size of the whole tree, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub processes: usize,
}

pub fn memory(root: i32) -> Memory {
    let mut m = Memory::default();
    for pid in tree(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        m.processes += 1;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match key {
                "Rss:" => m.rss_kib += v,
                "Pss:" => m.pss_kib += v,
                _ => {}
            }
        }
    }
    m
}

/// Times the threads of the tree under `root` were preempted (involuntary
/// context switches): on a shared machine, what puts spikes into latency tails.
pub fn preemptions(root: i32) -> u64 {
    let mut n = 0;
    for pid in tree(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(text) = fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            n += text
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    n
}

/// Moves every thread of the tree under `root` that may run anywhere but
/// `cpu` back onto `cpu` alone, and says how many it moved. hitch pins its
/// worker to a CPU of its own choosing (CPU 0, the load generator's, for the
/// first worker), overriding `taskset`, and does so again for the worker each
/// reload starts; left there it shares a CPU with its clients, which makes
/// every figure of its incomparable with the others'.
pub fn pin_tree(root: i32, cpu: usize) -> usize {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let mut want = CpuSet::new();
    if want.set(cpu).is_err() {
        return 0;
    }
    let mut moved = 0;
    for pid in tree(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let tid = Pid::from_raw(tid);
            let Ok(now) = sched_getaffinity(tid) else {
                continue;
            };
            let elsewhere =
                (0..CpuSet::count()).any(|c| c != cpu && now.is_set(c).unwrap_or(false));
            if elsewhere && sched_setaffinity(tid, &want).is_ok() {
                moved += 1;
            }
        }
    }
    moved
}
