//! Result files and process statistics.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A latency histogram in microseconds up to 10 minutes, with `digits` significant digits.
pub fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, digits).expect("constant bounds are valid")
}

/// p50/p95/p99/max in milliseconds of a histogram recorded in microseconds.
pub fn latency_ms(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
        "mean": h.mean() / 1000.0,
    })
}

/// A variable `bench/run` exports for the stack it started.
pub fn stack_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run through bench/run)"))
}

/// A process's CPU (% of one core) and RSS between two [`proc_stats`] readings `seconds` apart;
/// `None` when either reading is missing (the process was not found).
pub fn usage(before: Option<(f64, u64)>, after: Option<(f64, u64)>, seconds: f64) -> Option<Value> {
    let (b, a) = (before?, after?);
    Some(json!({
        "cpu_percent": ((a.0 - b.0) / seconds * 1000.0).round() / 10.0,
        "rss_mib": (a.1 as f64 / 102.4).round() / 10.0,
    }))
}

/// CPU seconds (user+system) and RSS (KiB) of a process, from /proc.
pub fn proc_stats(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss))
}

/// CPU seconds and RSS (KiB) of every process whose name (`comm`) is `name`, by pid: the
/// PostgreSQL behind FerretDB, the registry and the platform works in one backend process per
/// connection, none of which `proc_stats` of the postmaster counts.
pub fn proc_group_stats(name: &str) -> std::collections::HashMap<u32, (f64, u64)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == name).then_some(())?;
            Some((pid, proc_stats(pid)?))
        })
        .collect()
}

/// Busy CPU seconds of the whole machine, all cores (everything but idle and iowait).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    Some((ticks.iter().take(8).sum::<f64>() - idle - iowait) / 100.0)
}

/// Partitions of the room log (`CHAT_ROOM_PARTITIONS`, as the stack sets it; 12 by default).
pub fn room_partitions() -> i32 {
    std::env::var("CHAT_ROOM_PARTITIONS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(12)
}

/// The pid `deploy/local/up` recorded for a service of the stack in `CHAT_STATE_DIR`.
pub fn stack_pid(service: &str) -> Option<u32> {
    let state = std::env::var("CHAT_STATE_DIR").ok()?;
    std::fs::read_to_string(format!("{state}/run/{service}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pid of the first process whose command line contains `needle`.
pub fn find_pid(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(pid)
        })
}

/// A result file written by [`write`], if there is a readable one.
pub fn read(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Runs `deploy/local/<action> <services>` (`up` or `down`) on the stack `bench/run` started.
pub fn stack(action: &str, services: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(format!("deploy/local/{action}"))
        .args(services)
        .status()
        .with_context(|| format!("running deploy/local/{action}"))?;
    anyhow::ensure!(
        status.success(),
        "deploy/local/{action} {services:?} failed"
    );
    Ok(())
}

pub fn write(dir: &Path, name: &str, result: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(result)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({"cpu": cpu, "cores": cores})
}
