//! A memory budget checked before the large allocations: a model's
//! parameters, gradients and buffers, a batch's activations and scratch,
//! an optimizer's state. A request that would not fit fails with
//! [`ErrorKind::Memory`](crate::ErrorKind::Memory), naming the bytes needed
//! and available, before anything is allocated or changed, rather than
//! letting the kernel's out-of-memory killer end the process once the
//! pages are touched.
//!
//! The limit ([`MemoryLimit`]) comes from `FERROGRAD_MEMORY_LIMIT` (read on
//! first use) and can be changed with [`set_memory_limit`]:
//!
//! - [`MemoryLimit::Auto`] (the default): what the system has available now
//!   ([`available_bytes`]): Linux's `MemAvailable`, within the process's
//!   cgroup limit; no check where neither can be read (other systems).
//! - [`MemoryLimit::Bytes`]: a fixed size in place of the detected one,
//!   for machines that overcommit (or to test with a small one).
//! - [`MemoryLimit::Off`]: no check.
//!
//! Each request is checked on its own against the limit (the memory already
//! in use is reflected in the detected value, not in a fixed one). Checks
//! run only when an allocation is about to happen, never per training step;
//! under `Auto`, requests below [`AUTO_MIN_BYTES`] (16 MiB) are not checked.

use crate::error::{Error, Result};
use std::sync::Mutex;

/// The environment variable the limit is read from on first use.
pub const ENV_VAR: &str = "FERROGRAD_MEMORY_LIMIT";

/// How much memory one allocation may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    /// What the system reports available at the time ([`available_bytes`]).
    Auto,
    /// No check.
    Off,
    /// A fixed number of bytes, in place of the detected available memory.
    Bytes(u64),
}

impl MemoryLimit {
    /// Parses a limit as `FERROGRAD_MEMORY_LIMIT` gives it: `"auto"` (or
    /// empty), `"off"`, `"none"` or `"0"` (no check), or a size in bytes,
    /// optionally with a binary suffix `K`, `M`, `G` or `T` (also `KB`/`KiB`,
    /// ..., all powers of 1024, any case; decimals allowed: `"1.5G"`).
    pub fn parse(text: &str) -> Result<MemoryLimit> {
        let s = text.trim().to_ascii_lowercase();
        match s.as_str() {
            "" | "auto" => return Ok(MemoryLimit::Auto),
            "off" | "none" | "0" => return Ok(MemoryLimit::Off),
            _ => {}
        }
        let bad = || {
            Error::value(format!(
                "memory limit {text:?} is not a size: expected bytes, optionally with a K, M, G or T \
                 suffix (powers of 1024), e.g. \"512M\", or \"auto\", or \"off\" to disable the check"
            ))
        };
        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let scale: u64 = match s[digits.len()..].trim_end_matches("ib").trim_end_matches('b') {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(bad()),
        };
        let digits = digits.trim();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(bad());
        }
        let bytes = match digits.parse::<u64>() {
            Ok(v) => v.checked_mul(scale).ok_or_else(bad)?,
            Err(_) => {
                let v: f64 = digits.parse().map_err(|_| bad())?;
                let b = (v * scale as f64).round();
                if !(b.is_finite() && b < u64::MAX as f64) {
                    return Err(bad());
                }
                b as u64
            }
        };
        Ok(if bytes == 0 { MemoryLimit::Off } else { MemoryLimit::Bytes(bytes) })
    }
}

/// Where the limit in force came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Default,
    Env(String),
    Set,
}

/// The limit in force; `None` until first read from the environment.
static LIMIT: Mutex<Option<(MemoryLimit, Source)>> = Mutex::new(None);

#[cfg(test)]
thread_local! {
    /// A per-thread limit for unit tests, which run in parallel threads of one process.
    static TEST_LIMIT: std::cell::Cell<Option<MemoryLimit>> = const { std::cell::Cell::new(None) };
}

/// The limit in force and where it came from, reading the environment on
/// first use. An invalid `FERROGRAD_MEMORY_LIMIT` is an error every time
/// until [`set_memory_limit`] replaces it.
fn current() -> Result<(MemoryLimit, Source)> {
    #[cfg(test)]
    if let Some(l) = TEST_LIMIT.with(|t| t.get()) {
        return Ok((l, Source::Set));
    }
    let mut guard = LIMIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = guard.as_ref() {
        return Ok(v.clone());
    }
    let v = match std::env::var(ENV_VAR) {
        Ok(raw) => {
            let l =
                MemoryLimit::parse(&raw).map_err(|e| Error::value(format!("{ENV_VAR}: {}", e.message)))?;
            (l, Source::Env(raw))
        }
        Err(_) => (MemoryLimit::Auto, Source::Default),
    };
    *guard = Some(v.clone());
    Ok(v)
}

/// The limit in force (from `FERROGRAD_MEMORY_LIMIT` or [`set_memory_limit`]).
pub fn memory_limit() -> Result<MemoryLimit> {
    current().map(|(l, _)| l)
}

/// Sets the limit for all later allocations, replacing `FERROGRAD_MEMORY_LIMIT`.
pub fn set_memory_limit(limit: MemoryLimit) {
    let mut guard = LIMIT.lock().unwrap_or_else(|p| p.into_inner());
    *guard = Some((limit, Source::Set));
}

/// The memory this process can allocate now, as the system reports it:
/// Linux's `MemAvailable` (`/proc/meminfo`), lowered to the room left under
/// the limit of the process's cgroup and its ancestors (v2 `memory.max`, v1
/// `memory.limit_in_bytes`; inactive file cache counted as free, since the
/// kernel reclaims it first). `None` where none of these can be read (other
/// systems, or `/proc` not mounted).
pub fn available_bytes() -> Option<u64> {
    detect().map(|(b, _)| b)
}

/// [`available_bytes`] and where the value came from.
fn detect() -> Option<(u64, &'static str)> {
    #[cfg(target_os = "linux")]
    {
        let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| meminfo_available(&s));
        let cg = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| cgroup_room(&s, &SysFs));
        const MEM: &str = "MemAvailable in /proc/meminfo";
        const CG: &str = "the room left under the process's cgroup memory limit";
        match (mem, cg) {
            (Some(a), Some(b)) if b < a => Some((b, CG)),
            (Some(a), _) => Some((a, MEM)),
            (None, b) => b.map(|b| (b, CG)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Under [`MemoryLimit::Auto`], smaller requests are not checked (a fixed
/// limit checks every request: a comparison, without reading the system).
pub const AUTO_MIN_BYTES: u64 = 16 << 20;

/// Checks that `bytes` more can be allocated for `what` (e.g. "the model's
/// parameters"), against the limit in force; call it before allocating and
/// before changing anything, so that a failure leaves everything as it was.
/// Fails with [`ErrorKind::Memory`](crate::ErrorKind::Memory) naming what,
/// the bytes needed and available, and how to change the limit.
pub fn reserve(what: &str, bytes: u64) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let (limit, source) = current()?;
    let (avail, from) = match (limit, &source) {
        (MemoryLimit::Off, _) => return Ok(()),
        (MemoryLimit::Bytes(b), Source::Env(raw)) => (b, format!("allowed by {ENV_VAR}={raw}")),
        (MemoryLimit::Bytes(b), _) => (b, "allowed by the limit set with set_memory_limit()".to_string()),
        // Reading the system's counters costs about 0.1 ms, more than
        // allocating this much; a small request cannot be what exhausts memory.
        (MemoryLimit::Auto, _) if bytes < AUTO_MIN_BYTES => return Ok(()),
        (MemoryLimit::Auto, _) => match detect() {
            Some((b, how)) => (b, format!("available ({how})")),
            None => return Ok(()),
        },
    };
    check(what, bytes, avail, &from)
}

/// The check behind [`reserve`], for a known amount available.
fn check(what: &str, bytes: u64, avail: u64, from: &str) -> Result<()> {
    if bytes <= avail {
        return Ok(());
    }
    Err(Error::memory(format!(
        "not enough memory for {what}: {} needed, {} {from}; use smaller layers or batches, or change \
         the limit with {ENV_VAR} or ferrograd.set_memory_limit() (\"off\" disables this check, e.g. on machines \
         that overcommit memory)",
        human(bytes),
        human(avail)
    )))
}

/// The size of `n` values of type `V` in bytes (saturating: an impossible
/// size still fails the check instead of wrapping around).
pub fn bytes_of<V>(n: usize) -> u64 {
    (n as u64).saturating_mul(std::mem::size_of::<V>() as u64)
}

/// `"1.5 GiB (1610612736 bytes)"`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {} ({bytes} bytes)", UNITS[u])
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line["MemAvailable:".len()..].split_whitespace();
    let v: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        None => 1,
        Some(u) if u.eq_ignore_ascii_case("kb") => 1024,
        Some(_) => return None,
    };
    Some(v.saturating_mul(unit))
}

/// Reads cgroup files (a trait so the tests can give their own tree).
trait CgroupFs {
    fn read(&self, path: &str) -> Option<String>;
}

/// The real `/sys/fs/cgroup`.
#[cfg(target_os = "linux")]
struct SysFs;

#[cfg(target_os = "linux")]
impl CgroupFs for SysFs {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Limits at or above this are "no limit" (cgroup v1 writes one near 2^63).
const NO_LIMIT: u64 = 1 << 60;

/// The room left under the tightest memory limit among the process's
/// cgroup and its ancestors, from a `/proc/self/cgroup` text: v2
/// (`0::/path`: `memory.max`, `memory.current`, `inactive_file`) and v1
/// (`N:...memory...:/path`: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
/// `total_inactive_file`). `None` when no limit is set or readable.
fn cgroup_room(self_cgroup: &str, fs: &dyn CgroupFs) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        let v1 = controllers.split(',').any(|c| c == "memory");
        let (mount, files) = if v2 {
            ("/sys/fs/cgroup", ["memory.max", "memory.current", "inactive_file"])
        } else if v1 {
            (
                "/sys/fs/cgroup/memory",
                ["memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"],
            )
        } else {
            continue;
        };
        // The process's cgroup, then each ancestor up to the mount's root
        // (inside a container the path may name the host's hierarchy, which
        // is not mounted: then only the root is read).
        let mut rel = path.trim_end_matches('/').to_string();
        loop {
            let dir = format!("{mount}{rel}");
            if let Some(room) = room_in(fs, &dir, &files) {
                best = Some(best.map_or(room, |b| b.min(room)));
            }
            match rel.rfind('/') {
                Some(i) => rel.truncate(i),
                None => break,
            }
        }
    }
    best
}

/// The room left in one cgroup folder, `None` without a limit.
fn room_in(fs: &dyn CgroupFs, dir: &str, [max, current, inactive]: &[&str; 3]) -> Option<u64> {
    let limit: u64 = fs.read(&format!("{dir}/{max}"))?.trim().parse().ok()?;
    if limit >= NO_LIMIT {
        return None;
    }
    let used: u64 = fs.read(&format!("{dir}/{current}"))?.trim().parse().ok()?;
    let reclaimable = fs
        .read(&format!("{dir}/memory.stat"))
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                if k == *inactive {
                    v.trim().parse::<u64>().ok()
                } else {
                    None
                }
            })
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(used.saturating_sub(reclaimable)))
}

/// Runs `f` with `limit` in force on this thread only (unit tests).
#[cfg(test)]
pub(crate) fn with_test_limit<R>(limit: MemoryLimit, f: impl FnOnce() -> R) -> R {
    let old = TEST_LIMIT.with(|t| t.replace(Some(limit)));
    let out = f();
    TEST_LIMIT.with(|t| t.set(old));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::collections::HashMap;

    #[test]
    fn parses_sizes_and_words() {
        let b = MemoryLimit::Bytes;
        assert_eq!(MemoryLimit::parse("1048576").unwrap(), b(1 << 20));
        assert_eq!(MemoryLimit::parse("1M").unwrap(), b(1 << 20));
        assert_eq!(MemoryLimit::parse(" 64 mib ").unwrap(), b(64 << 20));
        assert_eq!(MemoryLimit::parse("2GB").unwrap(), b(2 << 30));
        assert_eq!(MemoryLimit::parse("1.5g").unwrap(), b(3 << 29));
        assert_eq!(MemoryLimit::parse("3T").unwrap(), b(3 << 40));
        assert_eq!(MemoryLimit::parse("512k").unwrap(), b(512 << 10));
        assert_eq!(MemoryLimit::parse("10b").unwrap(), b(10));
        for off in ["off", "OFF", "none", "0", "0G"] {
            assert_eq!(MemoryLimit::parse(off).unwrap(), MemoryLimit::Off, "{off}");
        }
        for auto in ["", "auto", " Auto "] {
            assert_eq!(MemoryLimit::parse(auto).unwrap(), MemoryLimit::Auto, "{auto}");
        }
        for bad in ["-1", "1X", "G", "1..5G", "lots", "99999999999T", "1e9", "nan", "1 2"] {
            let e = MemoryLimit::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Value, "{bad}");
            assert!(e.message.contains("is not a size"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn check_names_the_bytes() {
        assert!(check("x", 100, 100, "available").is_ok());
        let e = check("the model's parameters", 3 << 30, 1 << 30, "available").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Memory);
        for part in [
            "not enough memory for the model's parameters: 3.0 GiB (3221225472 bytes) needed, \
             1.0 GiB (1073741824 bytes) available;",
            ENV_VAR,
            "ferrograd.set_memory_limit()",
            "\"off\"",
        ] {
            assert!(e.message.contains(part), "{part:?} not in {}", e.message);
        }
        assert_eq!(human(5), "5 bytes");
        assert_eq!(human(1536), "1.5 KiB (1536 bytes)");
    }

    #[test]
    fn reserve_honours_the_limit() {
        with_test_limit(MemoryLimit::Bytes(1000), || {
            assert!(reserve("x", 1000).is_ok());
            assert!(reserve("x", 0).is_ok());
            let e = reserve("a batch", 1001).unwrap_err();
            assert!(e.message.contains("set with set_memory_limit()"), "{}", e.message);
        });
        with_test_limit(MemoryLimit::Off, || assert!(reserve("x", u64::MAX).is_ok()));
        with_test_limit(MemoryLimit::Auto, || {
            assert!(reserve("x", AUTO_MIN_BYTES - 1).is_ok());
            if available_bytes().is_some() {
                let e = reserve("everything", u64::MAX).unwrap_err();
                assert!(e.message.contains("available ("), "{}", e.message);
            }
        });
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24684092 kB\nMemFree:  100 kB\nMemAvailable:   23842344 kB\n";
        assert_eq!(meminfo_available(text), Some(23842344 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
    }

    struct Fake(HashMap<&'static str, &'static str>);
    impl CgroupFs for Fake {
        fn read(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.to_string())
        }
    }

    #[test]
    fn cgroup_v2_takes_the_tightest_ancestor() {
        let fs = Fake(HashMap::from([
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("/sys/fs/cgroup/a/b/memory.current", "100\n"),
            ("/sys/fs/cgroup/a/memory.max", "1000\n"),
            ("/sys/fs/cgroup/a/memory.current", "600\n"),
            ("/sys/fs/cgroup/a/memory.stat", "anon 400\ninactive_file 100\nactive_file 100\n"),
        ]));
        // 1000 - (600 - 100 reclaimable)
        assert_eq!(cgroup_room("0::/a/b\n", &fs), Some(500));
        assert_eq!(cgroup_room("0::/\n", &fs), None);
        assert_eq!(cgroup_room("0::/other\n", &fs), None);
    }

    #[test]
    fn cgroup_v1_memory_controller() {
        let fs = Fake(HashMap::from([
            ("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "2000\n"),
            ("/sys/fs/cgroup/memory/job/memory.usage_in_bytes", "500\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "5\n"),
        ]));
        let text = "4:memory:/job\n3:cpu,cpuacct:/\n0::/\n";
        assert_eq!(cgroup_room(text, &fs), Some(1500));
        assert_eq!(cgroup_room("4:memory:/\n", &fs), None);
        assert_eq!(cgroup_room("garbage\n", &fs), None);
    }

    #[test]
    fn detects_something_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }

    fn dense(i: usize, o: usize) -> crate::LayerSpec {
        crate::layers::DenseSpec { in_features: i, out_features: o, bias: true, init: crate::Init::He }.into()
    }

    /// 1000 x 1000 weights and biases, twice (gradients), in float32.
    const MODEL: u64 = 2 * 4 * 1_001_000;

    #[test]
    fn a_model_that_does_not_fit_is_not_built() {
        let e = with_test_limit(MemoryLimit::Bytes(MODEL - 1), || {
            crate::Sequential::<f32>::new(vec![dense(1000, 1000)], 0).err().expect("refused")
        });
        assert_eq!(e.kind, ErrorKind::Memory);
        assert!(e.message.contains(&format!("({MODEL} bytes) needed")), "{}", e.message);
        assert!(e.message.contains("parameters, gradients and buffers (1001000 parameters in float32)"));
        let m = with_test_limit(MemoryLimit::Bytes(MODEL), || {
            crate::Sequential::<f32>::new(vec![dense(1000, 1000)], 0)
        });
        assert!(m.is_ok());
        // Impossible sizes fail the check instead of overflowing.
        let e = with_test_limit(MemoryLimit::Bytes(1 << 40), || {
            crate::Sequential::<f32>::new(vec![dense(1 << 31, 1 << 31)], 0).err().expect("refused")
        });
        assert_eq!(e.kind, ErrorKind::Memory, "{}", e.message);
    }

    #[test]
    fn a_batch_that_does_not_fit_changes_nothing() {
        use crate::{Data, EpochOptions, Features, Flow, Loss, Target};
        let mut m = crate::Sequential::<f32>::new(vec![dense(10, 1000), dense(1000, 2)], 0).unwrap();
        let before = m.params().to_vec();
        let n = 4000; // 4000 x 1000 activations: 16 MB, and as much again for gradients
        let x = vec![0.5f32; n * 10];
        let y = vec![1i64; n];
        let data = Data::new(Features::F32(&x), n, &[10], Target::Labels(&y));
        let cfg =
            crate::OptimConfig::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let mut opt = crate::Optimizer::new(cfg, ranges).unwrap();
        let opts = EpochOptions { shuffle: false, ..EpochOptions::new(Loss::CrossEntropy, n) };
        with_test_limit(MemoryLimit::Bytes(1 << 20), || {
            let e = m.forward(&Features::F32(&x), n, &[10], false).expect_err("refused");
            assert_eq!(e.kind, ErrorKind::Memory);
            assert!(e.message.contains("a batch of 4000 samples of shape [10]"), "{}", e.message);
            let mut out = vec![0.0f32; n * 2];
            let e = m.predict_into(&Features::F32(&x), n, &[10], n, &mut out).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Memory);
            let e = m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Memory);
            assert!(e.message.contains("training activations"), "{}", e.message);
            assert_eq!(m.params(), &before[..]);
            assert_eq!(opt.steps(), 0);
            // A small batch still fits, and then needs no new check.
            m.predict_into(&Features::F32(&x), n, &[10], 10, &mut out).unwrap();
        });
        // The optimizer's state (2 x 13002 floats) is checked on the first step.
        let small = Data::new(Features::F32(&x[..40]), 4, &[10], Target::Labels(&y[..4]));
        let opts = EpochOptions::new(Loss::CrossEntropy, 4);
        with_test_limit(MemoryLimit::Bytes(60_000), || {
            let e = m.train_epoch(small, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).unwrap_err();
            assert!(
                e.message.contains("the optimizer's state (2 slots of 13002 values in float32)"),
                "{}",
                e.message
            );
            assert_eq!(m.params(), &before[..]);
            assert!(opt.state().is_empty());
        });
        with_test_limit(MemoryLimit::Bytes(200_000), || {
            m.train_epoch(small, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).unwrap();
        });
        assert_ne!(m.params(), &before[..]);
        assert_eq!(opt.state().len(), 2 * 13002);
    }
}
