//! The library's one rayon pool.
//!
//! Sized from `FERROGRAD_NUM_THREADS`, else the number of cores; changed with
//! [`set_num_threads`]. All heavy work runs inside [`install`]. A pool built
//! before a `fork()` is never used in the child (its worker threads do not
//! exist there): the pool remembers the process id that built it and a child
//! builds a fresh one.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

struct PoolState {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    pid: u32,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);

/// The thread count used when nothing else was asked for.
pub fn default_num_threads() -> usize {
    if let Ok(v) = std::env::var("FERROGRAD_NUM_THREADS") {
        if let Ok(n) = v.trim().parse::<usize>() {
            if n > 0 {
                return n.min(MAX_THREADS);
            }
        }
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn build(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ferrograd-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::state(format!("could not start {threads} worker threads: {e}")))
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    match guard.as_ref() {
        Some(st) if st.pid == pid => Ok(st.pool.clone()),
        other => {
            let threads = other.map(|s| s.threads).unwrap_or_else(default_num_threads);
            if let Some(old) = guard.take() {
                // Inherited across fork: its threads are gone, so dropping it
                // could wait on them. Leak it instead.
                std::mem::forget(old);
            }
            let pool = build(threads)?;
            *guard = Some(PoolState { pool: pool.clone(), threads, pid });
            Ok(pool)
        }
    }
}

/// The most worker threads the library will start.
pub const MAX_THREADS: usize = 1024;

/// Sets the number of worker threads (1 ..= [`MAX_THREADS`]) for all later work.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > MAX_THREADS {
        return Err(Error::value(format!("number of threads must be in [1, {MAX_THREADS}], got {n}")));
    }
    let pool = build(n)?;
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(old) = guard.take() {
        if old.pid != std::process::id() {
            std::mem::forget(old);
        }
    }
    *guard = Some(PoolState { pool, threads: n, pid: std::process::id() });
    Ok(())
}

/// The number of worker threads the next call will use.
pub fn get_num_threads() -> usize {
    let guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_ref() {
        Some(st) => st.threads,
        None => default_num_threads(),
    }
}

/// Runs `f` inside the library's pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = pool()?;
    Ok(pool.install(f))
}
