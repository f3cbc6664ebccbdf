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
    /// p50 of a bare gRPC get through the etcd client (answered at once), by clients.
    pub grpc_p50_us: Vec<(usize, u64)>,
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
        grpc_p50_us: Vec::new(),
        versions,
    })
}

/// CPU time in clock ticks (USER_HZ: 100 a second on Linux).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

const TICKS_PER_SECOND: f64 = 100.0;

impl CpuTicks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    /// Seconds of CPU.
    pub fn seconds(self) -> f64 {
        self.total() as f64 / TICKS_PER_SECOND
    }

    pub fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// User and system CPU of the process whose `stat` file this is (all its threads).
fn read_cpu(stat_path: &str) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(CpuTicks {
        user: fields.get(11)?.parse().ok()?,
        system: fields.get(12)?.parse().ok()?,
    })
}

/// CPU ticks and resident bytes of a process.
fn read_process(pid: u32) -> Option<(CpuTicks, u64)> {
    let ticks = read_cpu(&format!("/proc/{pid}/stat"))?;
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

/// The CPU `processes` spent together, or None once one of them cannot be read.
pub fn processes_cpu(processes: &[(String, u32)]) -> Option<CpuTicks> {
    processes
        .iter()
        .try_fold(CpuTicks::default(), |sum, (_, pid)| {
            let t = read_cpu(&format!("/proc/{pid}/stat"))?;
            Some(CpuTicks {
                user: sum.user + t.user,
                system: sum.system + t.system,
            })
        })
}

/// CPU per operation over a load's measured window, in µs: the system's processes
/// together, and the driver (this process, every client of the load).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuPerOp {
    pub servers_user_us: f64,
    pub servers_system_us: f64,
    pub driver_user_us: f64,
    pub driver_system_us: f64,
}

impl CpuPerOp {
    /// None without operations or without a tick of CPU to divide.
    pub fn new(servers: CpuTicks, driver: CpuTicks, ops: u64) -> Option<Self> {
        if ops == 0 || servers.total() + driver.total() == 0 {
            return None;
        }
        let per_op = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / ops as f64;
        Some(CpuPerOp {
            servers_user_us: per_op(servers.user),
            servers_system_us: per_op(servers.system),
            driver_user_us: per_op(driver.user),
            driver_system_us: per_op(driver.system),
        })
    }

    pub fn servers_us(&self) -> f64 {
        self.servers_user_us + self.servers_system_us
    }

    pub fn driver_us(&self) -> f64 {
        self.driver_user_us + self.driver_system_us
    }
}

/// The CPU `processes` and this driver spend over `measure`, from `warmup` on:
/// (servers, driver), or None where a process could not be read at either end.
pub async fn cpu_over(
    processes: &[(String, u32)],
    warmup: Duration,
    measure: Duration,
) -> Option<(CpuTicks, CpuTicks)> {
    tokio::time::sleep(warmup).await;
    let servers = processes_cpu(processes);
    let driver = read_cpu("/proc/self/stat");
    tokio::time::sleep(measure).await;
    let servers = processes_cpu(processes)?.since(servers?);
    let driver = read_cpu("/proc/self/stat")?.since(driver?);
    Some((servers, driver))
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
    let before: Vec<Option<(CpuTicks, u64)>> = processes
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
                cpu_percent: ticks1.since(ticks0).total() as f64 / TICKS_PER_SECOND / seconds
                    * 100.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_op_divides_the_window_s_ticks_among_its_operations() {
        let servers = CpuTicks {
            user: 30,
            system: 70,
        };
        let driver = CpuTicks {
            user: 10,
            system: 20,
        };
        // 100 ticks are 1 s of CPU: over 100,000 operations, 10 µs each.
        let cpu = CpuPerOp::new(servers, driver, 100_000).expect("ticks and operations");
        assert!((cpu.servers_us() - 10.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.servers_system_us - 7.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.driver_us() - 3.0).abs() < 1e-9, "{cpu:?}");
        assert_eq!(CpuPerOp::new(servers, driver, 0), None);
        assert_eq!(
            CpuPerOp::new(CpuTicks::default(), CpuTicks::default(), 10),
            None
        );
    }

    #[test]
    fn a_process_s_cpu_is_read_from_proc_and_grows_as_it_runs() {
        let me = vec![("me".to_string(), std::process::id())];
        let start = processes_cpu(&me).expect("this process can be read");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut spent = CpuTicks::default();
        while spent.total() == 0 && Instant::now() < deadline {
            std::hint::black_box((0..100_000u64).sum::<u64>());
            spent = processes_cpu(&me).expect("still readable").since(start);
        }
        assert!(spent.total() > 0, "no tick of CPU in 5 s of spinning");
        let gone = vec![("gone".to_string(), u32::MAX)];
        assert_eq!(processes_cpu(&gone), None, "a process that is not there");
    }
}
