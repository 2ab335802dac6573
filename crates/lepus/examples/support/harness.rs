//! What both peer-harness clients (`bench_client`, `bench_blocking`) share: the harness's
//! conventions for bodies, timing windows, the JSON result line and resource figures.
#![allow(dead_code)]

use std::time::Instant;

/// The timed window: wall clock and process CPU.
pub(crate) struct Window {
    client: &'static str,
    t0: Instant,
    cpu0: (f64, f64),
}

impl Window {
    /// Starts timing for `client` (the JSON `client` field).
    pub(crate) fn start(client: &'static str) -> Self {
        Self {
            client,
            cpu0: cpu_times(),
            t0: Instant::now(),
        }
    }

    /// Prints the JSON result line.
    pub(crate) fn finish(self, workload: &str, n: u64, mode: &str) {
        self.finish_with(workload, n, mode, "");
    }

    /// Prints the JSON line, with `extra` fields (`,"name":value...`) before the mode.
    pub(crate) fn finish_with(self, workload: &str, n: u64, mode: &str, extra: &str) {
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu1 = cpu_times();
        let (u, s) = (cpu1.0 - self.cpu0.0, cpu1.1 - self.cpu0.1);
        let body_size = if workload == "connections" {
            String::new()
        } else {
            format!(",\"body_size\":{}", body_size())
        };
        let coalescing = match coalescing() {
            (true, true) => "",
            (false, false) => "; coalescing off",
            (false, true) => "; read coalescing off",
            (true, false) => "; write coalescing off",
        };
        println!(
            "{{\"client\":\"{}\",\"workload\":\"{workload}\",\"n\":{n},\"wall_s\":{wall:.6},\
             \"msgs_per_s\":{:.1},\"cpu_user_s\":{u:.6},\"cpu_sys_s\":{s:.6}{body_size}{extra},\
             \"mode\":\"{mode}{coalescing}\"}}",
            self.client,
            n as f64 / wall
        );
    }
}

/// (user, sys) CPU seconds of the whole process, all threads.
pub(crate) fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Resident memory of the process, in KiB (`VmRSS`).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the soft limit of open files to `want` (at most the hard limit).
pub(crate) fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    #[allow(unsafe_code)]
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The `q`-quantile of sorted `values`, nearest rank.
pub(crate) fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// The latency workload's extra JSON fields from the round trips in µs (sorted here).
pub(crate) fn latency_fields(trips: &mut [u64]) -> String {
    trips.sort_unstable();
    format!(
        ",\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_max_us\":{}",
        nearest_rank(trips, 0.50),
        nearest_rank(trips, 0.99),
        trips.last().copied().unwrap_or(0)
    )
}

/// `BODY_SIZE`, 64 when unset or empty; `None` when it is not a byte count.
pub(crate) fn body_size_env() -> Option<usize> {
    match std::env::var("BODY_SIZE") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().ok(),
        _ => Some(64),
    }
}

/// `BODY_SIZE` (checked by `main`).
pub(crate) fn body_size() -> usize {
    body_size_env().unwrap_or(64)
}

/// Which coalescing stays on, as (read, write): `LEPUS_COALESCING=0` turns both off,
/// `read-off` and `write-off` one of them; unset, both are on (the defaults).
pub(crate) fn coalescing() -> (bool, bool) {
    match std::env::var("LEPUS_COALESCING").as_deref() {
        Ok("0") => (false, false),
        Ok("read-off") => (false, true),
        Ok("write-off") => (true, false),
        _ => (true, true),
    }
}

/// The harness's body: the 64-byte pattern (`a..z`, `a..z`, `a..l`) repeated and cut to
/// `BODY_SIZE`.
pub(crate) fn body() -> lepus::bytes::Bytes {
    (0..body_size())
        .map(|i| b'a' + (i % 64 % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Connection options from `url`, with coalescing as `LEPUS_COALESCING` says.
pub(crate) fn options(url: &str) -> Result<lepus::ConnectionOptions, lepus::Error> {
    let mut o = lepus::ConnectionOptions::from_uri(url)?;
    let (read, write) = coalescing();
    if !read {
        o.read_coalescing(std::time::Duration::ZERO);
    }
    if !write {
        o.write_coalescing(std::time::Duration::ZERO);
    }
    Ok(o)
}

/// The five workloads, in the harness's order.
pub(crate) const WORKLOADS: [&str; 5] = [
    "publish-noconfirm",
    "publish-confirm",
    "consume",
    "latency",
    "connections",
];

/// Reads `<workload> <n>` from the command line and checks `BODY_SIZE`; `None` (after a usage
/// line on stderr) when they are not right.
pub(crate) fn args(program: &str) -> Option<(String, u64)> {
    let args: Vec<String> = std::env::args().collect();
    let workload = args.get(1).cloned().unwrap_or_default();
    let n = args.get(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    if args.len() != 3
        || !WORKLOADS.contains(&workload.as_str())
        || n == 0
        || body_size_env().is_none()
    {
        eprintln!(
            "usage: {program} <{}> <n>   (env AMQP_URL, BODY_SIZE)",
            WORKLOADS.join("|")
        );
        return None;
    }
    Some((workload, n))
}

/// `AMQP_URL` (the harness always sets it), or `memory://`.
pub(crate) fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string())
}

/// A queue name unique to this run, with the `bench.<client>.` prefix `run.sh` cleans up by.
pub(crate) fn queue_name(client: &str, workload: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench.{client}.{workload}.{}.{nanos}", std::process::id())
}
