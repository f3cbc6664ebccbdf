//! What the page states about the machine, and the resident memory and CPU of processes
//! read from /proc.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::output;
use crate::runner::new_histogram;

#[derive(Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
    /// p50 of the bare Unix-socket round trip, in µs, per number of connections.
    pub socket_p50_us: Vec<(usize, u64)>,
    pub versions: Vec<(String, String)>,
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Latency of a 4 KiB write followed by fdatasync in `dir`, 200 times.
fn fsync_latency(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0u8; 4096];
    let mut histogram = new_histogram();
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let _ = histogram.record(t.elapsed().as_micros().max(1) as u64);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    ))
}

pub fn describe(dir: &Path, corral: &Path, clients: &[usize]) -> anyhow::Result<Machine> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let (fsync_p50_us, fsync_p99_us) = fsync_latency(dir)?;
    let mut socket_p50_us = Vec::new();
    for &c in clients {
        let p50 = crate::socket_floor::round_trip_p50_us(c, Duration::from_secs(1))?;
        socket_p50_us.push((c, p50));
    }
    let package = |name: &str| {
        output("dpkg-query", &["-W", "-f", "${Version}", name]).unwrap_or_else(|_| "?".into())
    };
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let versions = vec![
        (
            "Corral".to_string(),
            output(&corral.display().to_string(), &["--version"]).unwrap_or_else(|_| "?".into()),
        ),
        (
            "etcd (Debian etcd-server)".to_string(),
            package("etcd-server"),
        ),
        (
            "ZooKeeper (Debian zookeeper)".to_string(),
            package("zookeeper"),
        ),
        ("Java for ZooKeeper".to_string(), java),
    ];
    Ok(Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        memory_gib: meminfo_kib("MemTotal:").unwrap_or(0) as f64 / 1024.0 / 1024.0,
        kernel: output("uname", &["-r"]).unwrap_or_else(|_| "?".into()),
        fsync_p50_us,
        fsync_p99_us,
        socket_p50_us,
        versions,
    })
}

/// CPU ticks (user + system) and resident bytes of a process.
fn read_process(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss_kib * 1024))
}

#[derive(Clone, Debug)]
pub struct Footprint {
    pub process: String,
    pub rss_mib: f64,
    /// Percent of one core.
    pub cpu_percent: f64,
}

/// CPU over `window` and resident memory at its end, per process.
pub async fn footprint(processes: &[(String, u32)], window: Duration) -> Vec<Footprint> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before: Vec<Option<(u64, u64)>> = processes
        .iter()
        .map(|(_, pid)| read_process(*pid))
        .collect();
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = t.elapsed().as_secs_f64();
    processes
        .iter()
        .zip(before)
        .filter_map(|((name, pid), before)| {
            let (ticks0, _) = before?;
            let (ticks1, rss) = read_process(*pid)?;
            Some(Footprint {
                process: name.clone(),
                rss_mib: rss as f64 / 1024.0 / 1024.0,
                cpu_percent: (ticks1.saturating_sub(ticks0)) as f64 / ticks_per_second / seconds
                    * 100.0,
            })
        })
        .collect()
}
