//! A spinning worker team for the short parallel sections of small-batch
//! training steps.
//!
//! A rayon worker that finds no work goes to sleep within microseconds, and
//! waking a sleeping virtual CPU costs tens of microseconds: more than a
//! batch-32 step's 60-90 microsecond matrix products can save by splitting.
//! A [`Team`] keeps its helpers spinning (yielding now and then) for the
//! length of an epoch, so handing them work costs a cache-line transfer.
//! Kernels ask [`current`] for the calling thread's team and fall back to
//! rayon outside one.

use std::cell::{Cell, UnsafeCell};
use std::hint::spin_loop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

type Job = dyn Fn() + Sync;

/// The owner thread and its spinning helpers.
pub struct Team {
    /// Helpers that started (the team has one more worker: the owner).
    helpers: AtomicUsize,
    /// Bumped once per job; helpers run the job when it changes.
    epoch: AtomicUsize,
    /// Helpers still running the current job.
    pending: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
    /// The current job, its lifetime erased (see [`Team::run`]).
    job: UnsafeCell<Option<*const Job>>,
}

// SAFETY: `job` is written only by the owner in `run`, while no helper reads
// it (every helper of the previous job has decremented `pending`, and none
// reads it before seeing the next `epoch`, published with Release after the
// write); helpers only read it between acquiring a new `epoch` and
// decrementing `pending`. The job itself is `Sync`.
unsafe impl Sync for Team {}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Calls `f` with the team the calling thread owns, if it is inside
/// [`with_team`].
pub fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let p = CURRENT.with(Cell::get);
    // SAFETY: `with_team` sets the pointer to a team that outlives the
    // closure it runs and clears it before the team is dropped; the pointer
    // is thread-local, so only the owner thread sees it, and the reference
    // cannot escape `f`.
    f(unsafe { p.as_ref() })
}

/// Workers of the calling thread's team, or `None` outside one.
pub fn current_size() -> Option<usize> {
    with_current(|t| t.map(Team::size))
}

/// Runs `f` on this thread with a team of `size` workers: this thread and
/// `size - 1` spinning helper threads, which stop when `f` returns (or
/// panics). Without helpers (`size <= 1`, a team already active, or no
/// thread could be started) `f` simply runs.
pub fn with_team<R>(size: usize, f: impl FnOnce() -> R) -> R {
    if size <= 1 || current_size().is_some() {
        return f();
    }
    let team = Team {
        helpers: AtomicUsize::new(0),
        epoch: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
        job: UnsafeCell::new(None),
    };
    std::thread::scope(|s| {
        for _ in 1..size {
            let t = &team;
            let spawned =
                std::thread::Builder::new().name("ferrograd-team".into()).spawn_scoped(s, move || t.helper());
            if spawned.is_err() {
                break;
            }
            team.helpers.fetch_add(1, Ordering::Relaxed);
        }
        /// Stops the helpers and forgets the team, also on unwind.
        struct Leave<'a>(&'a Team);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(std::ptr::null()));
                self.0.stop.store(true, Ordering::Release);
            }
        }
        let _leave = Leave(&team);
        CURRENT.with(|c| c.set(&team));
        f()
    })
}

impl Team {
    /// Workers in the team, the owner included.
    pub fn size(&self) -> usize {
        self.helpers.load(Ordering::Relaxed) + 1
    }

    /// Runs `f` on every worker at once and returns when all have finished.
    /// A panic in any of them is re-raised here once all have finished.
    pub fn run(&self, f: &(dyn Fn() + Sync)) {
        let helpers = self.helpers.load(Ordering::Relaxed);
        if helpers == 0 {
            return f();
        }
        let p: *const (dyn Fn() + Sync + '_) = f;
        // SAFETY: only the lifetime changes. The pointer is dereferenced by
        // helpers only until they decrement `pending`, and this function does
        // not return (nor unwind) before `pending` is zero, so `f` outlives
        // every use.
        let p: *const Job = unsafe { std::mem::transmute(p) };
        // SAFETY: see `unsafe impl Sync for Team`: no helper is reading `job`.
        unsafe { *self.job.get() = Some(p) };
        self.pending.store(helpers, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Release);
        let mine = catch_unwind(AssertUnwindSafe(f));
        while self.pending.load(Ordering::Acquire) != 0 {
            spin_loop();
        }
        if let Err(e) = mine {
            resume_unwind(e);
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a ferrograd team worker panicked");
        }
    }

    /// Runs `f(i)` for every `i < count`, each exactly once, spread over the
    /// team's workers (claimed one at a time, in increasing order).
    pub fn for_each_index(&self, count: usize, f: impl Fn(usize) + Sync) {
        let next = AtomicUsize::new(0);
        self.run(&|| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                break;
            }
            f(i);
        });
    }

    fn helper(&self) {
        let mut seen = 0usize;
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            if e == seen {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                spins = spins.wrapping_add(1);
                if spins % 256 == 0 {
                    // Let the owner's other threads (a progress display) run.
                    std::thread::yield_now();
                } else {
                    spin_loop();
                }
                continue;
            }
            seen = e;
            // SAFETY: a new epoch was acquired, so `job` holds this job's
            // pointer, valid until `pending` is decremented below.
            if let Some(job) = unsafe { *self.job.get() } {
                // SAFETY: as above; `run` keeps the closure alive.
                let job = unsafe { &*job };
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
            }
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

/// A pointer into a slice that team workers carve into disjoint chunks.
#[derive(Clone, Copy)]
pub struct SlicePtr<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: it only hands out disjoint chunks (the caller's contract on
// `chunk`), each of which may move to another thread when `T: Send`.
unsafe impl<T: Send> Send for SlicePtr<T> {}
// SAFETY: as for `Send`: shared use only ever yields disjoint chunks.
unsafe impl<T: Send> Sync for SlicePtr<T> {}

impl<T> SlicePtr<T> {
    /// Borrows `s` for the pointer's lifetime (the caller keeps `s` borrowed
    /// mutably while chunks are in use).
    pub fn new(s: &mut [T]) -> Self {
        SlicePtr { ptr: s.as_mut_ptr(), len: s.len() }
    }

    /// The first element's address (using it is the caller's affair).
    pub fn as_mut_ptr(&self) -> *mut T {
        self.ptr
    }

    /// Elements `start .. min(end, len)`.
    ///
    /// # Safety
    /// The slice given to [`SlicePtr::new`] must still be mutably borrowed
    /// by the caller and not otherwise used, and no two live chunks may
    /// overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn chunk(&self, start: usize, end: usize) -> &mut [T] {
        let end = end.min(self.len);
        let start = start.min(end);
        // SAFETY: `start <= end <= len`, within the original slice; the
        // caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// Runs `f(i, chunk_i)` over the `chunk`-sized pieces of `out` on `team`.
pub fn team_chunks<T: Send>(team: &Team, out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let count = out.len().div_ceil(chunk);
    let p = SlicePtr::new(out);
    team.for_each_index(count, |i| {
        // SAFETY: each index runs once, so the chunks are disjoint; `out`
        // stays mutably borrowed until `for_each_index` returns.
        let c = unsafe { p.chunk(i * chunk, (i + 1) * chunk) };
        f(i, c)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_index_once_and_stops() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        let size = with_team(3, || {
            with_current(|team| {
                let team = team.expect("a team inside with_team");
                for _ in 0..50 {
                    team.for_each_index(hits.len(), |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                team.size()
            })
        });
        assert_eq!(size, 3);
        assert!(current_size().is_none());
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1001];
        with_team(2, || {
            with_current(|team| {
                team_chunks(team.expect("team"), &mut v, 64, |i, c| c.iter_mut().for_each(|x| *x += i + 1))
            })
        });
        for (j, x) in v.iter().enumerate() {
            assert_eq!(*x, j / 64 + 1);
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_owner() {
        let r = catch_unwind(|| {
            with_team(2, || {
                with_current(|team| team.expect("team").for_each_index(8, |i| assert!(i != 5, "index five")))
            })
        });
        assert!(r.is_err());
        // The team is gone and a new one works.
        assert!(current_size().is_none());
        assert_eq!(with_team(2, current_size), Some(2));
    }
}
