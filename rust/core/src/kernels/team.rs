//! A spinning worker team for the short parallel sections of small-batch
//! training steps.
//!
//! A rayon worker that finds no work goes to sleep within microseconds, and
//! waking a sleeping virtual CPU costs tens of microseconds: more than a
//! batch-32 step's 60-90 microsecond matrix products can save by splitting.
//! A [`Team`] keeps its helpers spinning (yielding now and then) for the
//! length of an epoch, so handing them work costs a cache-line transfer.
//!
//! A helper may be descheduled by the host at any moment (a virtual CPU is
//! shared), so the owner never waits for a helper that has not yet joined a
//! job: work is claimed piece by piece, the owner claims whatever is left,
//! and closing a job turns late helpers away. The owner waits only for
//! helpers already inside the job.
//! Kernels ask [`with_current`] for the calling thread's team and fall back to
//! rayon outside one.
//!
//! Nesting is serial: code already running inside a job (on the owner or a
//! helper) sees no team and no rayon split ([`in_job`]), a [`Team::run`]
//! called while the team runs another job runs its closure on the calling
//! thread, and a [`with_team`] inside a team (or a job) runs its closure
//! without a new team and leaves the outer one in place.

use std::cell::{Cell, UnsafeCell};
use std::hint::spin_loop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

type Job = dyn Fn() + Sync;

/// The owner thread and its spinning helpers.
pub struct Team {
    /// Helpers that started (the team has one more worker: the owner).
    helpers: AtomicUsize,
    /// The current job's number (upper 32 bits), whether it is closed to
    /// helpers that have not joined yet ([`CLOSED`]), and how many helpers
    /// are inside it (the lower bits).
    state: AtomicU64,
    stop: AtomicBool,
    /// Off: kernels see no team, and helpers doze instead of spinning.
    enabled: AtomicBool,
    panicked: AtomicBool,
    /// Set while a job runs: a `run` meanwhile (a nested call from inside
    /// the job, or another thread's) runs serially instead of replacing it.
    running: AtomicBool,
    /// The current job, its lifetime erased (see [`Team::run`]).
    job: UnsafeCell<Option<*const Job>>,
}

const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

// SAFETY: `job` is written only in `run` by the one caller that set
// `running` (so never by two threads at once, nor while another job is
// open), while no helper is inside a job (the previous job was closed and
// its active count reached zero); it is published by the Release store of the next job number, and a
// helper reads it only after joining that job (an acquiring compare-exchange
// on `state` that checks the number and that the job is open) and before
// leaving it. The job itself is `Sync`.
unsafe impl Sync for Team {}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Whether this thread is running a team job's closure.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside a team job (as its owner or as a
/// helper): work it starts there must run serially.
pub fn in_job() -> bool {
    IN_JOB.with(Cell::get)
}

/// Marks the calling thread as inside a job until dropped (restoring the
/// previous mark, also on unwind).
struct JobMark(bool);

impl JobMark {
    fn enter() -> Self {
        JobMark(IN_JOB.with(|c| c.replace(true)))
    }
}

impl Drop for JobMark {
    fn drop(&mut self) {
        IN_JOB.with(|c| c.set(self.0));
    }
}

/// Calls `f` with the team the calling thread owns, if it is inside
/// [`with_team`], the team is enabled ([`set_enabled`]), and the thread is
/// not already inside one of its jobs.
pub fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    if in_job() {
        return f(None);
    }
    with_owned(|t| f(t.filter(|t| t.enabled.load(Ordering::Relaxed))))
}

/// The calling thread's team, enabled or not.
fn with_owned<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let p = CURRENT.with(Cell::get);
    // SAFETY: `with_team` sets the pointer to a team that outlives the
    // closure it runs and clears it before the team is dropped; the pointer
    // is thread-local, so only the owner thread sees it, and the reference
    // cannot escape `f`.
    f(unsafe { p.as_ref() })
}

/// Turns the calling thread's team on or off (no effect outside one). Off,
/// kernels run as if there were no team and the helpers doze, polling
/// every 200 microseconds; results are the same either way.
pub fn set_enabled(on: bool) {
    with_owned(|t| {
        if let Some(t) = t {
            t.enabled.store(on, Ordering::Relaxed);
        }
    })
}

/// Chooses, while an epoch runs, between a team and no team by timing
/// both: a two-vCPU machine whose virtual CPUs share a physical core, or
/// whose second one the host lends elsewhere, runs a spinning team slower
/// than one thread. Each cycle of [`Tuner::CYCLE`] steps starts with
/// [`Tuner::PROBE`] steps of each, then keeps the team unless it was
/// [`Tuner::MARGIN`] times slower.
#[derive(Debug)]
pub struct Tuner {
    active: bool,
    step: usize,
    with: std::time::Duration,
    without: std::time::Duration,
    choice: bool,
}

impl Tuner {
    /// Steps per cycle.
    pub const CYCLE: usize = 256;
    /// Timed steps of each kind per cycle (the first of each is not counted).
    pub const PROBE: usize = 6;
    /// How much slower the team's steps may be before it is turned off.
    pub const MARGIN: f64 = 1.25;

    /// A tuner for a loop that runs on a team when `active`.
    pub fn new(active: bool) -> Self {
        Tuner { active, step: 0, with: Default::default(), without: Default::default(), choice: true }
    }

    /// Sets up the team for the next step; pass its duration to
    /// [`Tuner::after_step`].
    pub fn before_step(&self) {
        if self.active {
            let on = match self.step {
                i if i < Self::PROBE => true,
                i if i < 2 * Self::PROBE => false,
                _ => self.choice,
            };
            set_enabled(on);
        }
    }

    /// Records how long the step took.
    pub fn after_step(&mut self, took: std::time::Duration) {
        if !self.active {
            return;
        }
        let i = self.step;
        if (1..Self::PROBE).contains(&i) {
            self.with += took;
        } else if (Self::PROBE + 1..2 * Self::PROBE).contains(&i) {
            self.without += took;
        }
        if i == 2 * Self::PROBE - 1 {
            // Off only when clearly slower: a few noisy steps should not
            // cost a whole cycle of the usual winner.
            self.choice = self.with.as_secs_f64() <= Self::MARGIN * self.without.as_secs_f64();
            self.with = Default::default();
            self.without = Default::default();
        }
        self.step = (i + 1) % Self::CYCLE;
    }

    /// Whether the last probe chose the team.
    pub fn choice(&self) -> bool {
        self.choice
    }
}

/// Workers of the calling thread's team, or `None` outside one.
pub fn current_size() -> Option<usize> {
    with_current(|t| t.map(Team::size))
}

/// Runs `f` on this thread with a team of `size` workers: this thread and
/// `size - 1` spinning helper threads, which stop when `f` returns (or
/// panics). Without helpers (`size <= 1`, a team already owned by this
/// thread, enabled or not, a call from inside a job, or no thread could be
/// started) `f` simply runs, and any outer team stays current.
pub fn with_team<R>(size: usize, f: impl FnOnce() -> R) -> R {
    if size <= 1 || in_job() || with_owned(|t| t.is_some()) {
        return f();
    }
    let team = Team {
        helpers: AtomicUsize::new(0),
        state: AtomicU64::new(CLOSED),
        stop: AtomicBool::new(false),
        enabled: AtomicBool::new(true),
        panicked: AtomicBool::new(false),
        running: AtomicBool::new(false),
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
        /// Stops the helpers and restores the previous current team (none:
        /// `with_team` never nests a team), also on unwind.
        struct Leave<'a>(&'a Team, *const Team);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.1));
                self.0.stop.store(true, Ordering::Release);
            }
        }
        let previous = CURRENT.with(|c| c.replace(&team));
        let _leave = Leave(&team, previous);
        f()
    })
}

impl Team {
    /// Workers in the team, the owner included.
    pub fn size(&self) -> usize {
        self.helpers.load(Ordering::Relaxed) + 1
    }

    /// Runs `f` on this thread and on every helper that joins before `f`
    /// returns here, and returns when all of those have finished. `f` must
    /// therefore be correct however many workers run it (one or more), as
    /// [`Team::for_each_index`] is. A panic in any of them is re-raised here.
    ///
    /// A call while the team runs another job (from inside that job, on
    /// the owner or a helper, or from another thread) runs `f` on the
    /// calling thread alone.
    pub fn run(&self, f: &(dyn Fn() + Sync)) {
        if self.helpers.load(Ordering::Relaxed) == 0 || in_job() || self.running.swap(true, Ordering::Acquire)
        {
            let _mark = JobMark::enter();
            return f();
        }
        /// Lets the next job start once this one is over, also on unwind.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.running);
        let p: *const (dyn Fn() + Sync + '_) = f;
        // SAFETY: only the lifetime changes. Helpers dereference the pointer
        // only while inside the job, and this function does not return (nor
        // unwind) before the job is closed and no helper is inside it, so `f`
        // outlives every use.
        let p: *const Job = unsafe { std::mem::transmute(p) };
        // SAFETY: see `unsafe impl Sync for Team`: no helper is in a job.
        unsafe { *self.job.get() = Some(p) };
        let number = (self.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        self.state.store(number << 32, Ordering::Release);
        let mine = {
            let _mark = JobMark::enter();
            catch_unwind(AssertUnwindSafe(f))
        };
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        while self.state.load(Ordering::Acquire) & ACTIVE != 0 {
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
        let mut seen = self.state.load(Ordering::Relaxed) >> 32;
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s >> 32 == seen || s & CLOSED != 0 {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                if !self.enabled.load(Ordering::Relaxed) {
                    // Off: leave the CPU to others; the owner works alone
                    // meanwhile (no job waits for a helper to join).
                    std::thread::park_timeout(std::time::Duration::from_micros(200));
                    continue;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) {
                    // Let the owner's other threads (a progress display) run.
                    std::thread::yield_now();
                } else {
                    spin_loop();
                }
                continue;
            }
            // Join the open job `s >> 32`, unless it closed or changed since.
            if self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            seen = s >> 32;
            // SAFETY: this helper is inside the job, so `job` holds its
            // pointer, and `run` keeps the closure alive until it leaves.
            if let Some(job) = unsafe { *self.job.get() } {
                // SAFETY: as above.
                let job = unsafe { &*job };
                let _mark = JobMark::enter();
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
            }
            self.state.fetch_sub(1, Ordering::Release);
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
        // SAFETY: each index `i < count` runs once, so the chunks are
        // disjoint (`i * chunk < out.len()` cannot overflow, and the end
        // saturates past the slice, where `chunk` clamps it); `out` stays
        // mutably borrowed until `for_each_index` returns.
        let c = unsafe { p.chunk(i * chunk, (i + 1).saturating_mul(chunk)) };
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

    #[test]
    fn disabled_team_is_invisible_and_work_still_runs() {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        with_team(2, || {
            set_enabled(false);
            assert!(current_size().is_none());
            set_enabled(true);
            with_current(|t| {
                t.expect("enabled again").for_each_index(100, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
            });
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    /// Team work started from inside a team job (a parallel kernel inside
    /// a per-sample parallel loop, on the owner and on helpers) runs
    /// serially: every index still runs exactly once, nothing hangs, and the
    /// outer job's count is intact.
    #[test]
    fn nested_runs_are_serial() {
        let outer: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        let inner: Vec<AtomicUsize> = (0..64 * 32).map(|_| AtomicUsize::new(0)).collect();
        let nested_saw_team = AtomicUsize::new(0);
        with_team(3, || {
            with_current(|team| {
                let team = team.expect("team");
                for _ in 0..20 {
                    team.for_each_index(outer.len(), |i| {
                        outer[i].fetch_add(1, Ordering::Relaxed);
                        assert!(in_job());
                        // A kernel inside the job: no team, no rayon split.
                        if with_current(|t| t.is_some()) || crate::kernels::workers_for(1).0 != 1 {
                            nested_saw_team.fetch_add(1, Ordering::Relaxed);
                        }
                        // The team itself, called again from inside its own job.
                        team.for_each_index(32, |j| {
                            inner[i * 32 + j].fetch_add(1, Ordering::Relaxed);
                        });
                        // A new team from inside a job runs inline.
                        assert_eq!(with_team(2, current_size), None);
                    });
                }
                assert!(!in_job());
            })
        });
        assert_eq!(nested_saw_team.load(Ordering::Relaxed), 0);
        assert!(outer.iter().all(|h| h.load(Ordering::Relaxed) == 20));
        assert!(inner.iter().all(|h| h.load(Ordering::Relaxed) == 20));
    }

    /// A `with_team` inside another (even while the outer one is disabled
    /// by the tuner) keeps the outer team and leaves it current afterwards.
    #[test]
    fn nested_with_team_restores_the_outer_team() {
        with_team(2, || {
            let outer = with_owned(|t| t.map(|t| t as *const Team));
            set_enabled(false);
            with_team(3, || assert_eq!(with_owned(|t| t.map(|t| t as *const Team)), outer));
            set_enabled(true);
            assert_eq!(with_owned(|t| t.map(|t| t as *const Team)), outer);
            assert_eq!(current_size(), Some(2));
        });
        assert!(current_size().is_none());
    }

    /// Two threads sharing one team: a `run` from a second thread while the
    /// owner's job runs is executed serially on that thread.
    #[test]
    fn run_from_another_thread_during_a_job_is_serial() {
        let hits = AtomicUsize::new(0);
        with_team(2, || {
            with_current(|team| {
                let team = team.expect("team");
                std::thread::scope(|s| {
                    let other = s.spawn(|| {
                        for _ in 0..200 {
                            team.for_each_index(10, |_| {
                                hits.fetch_add(1, Ordering::Relaxed);
                            });
                        }
                    });
                    for _ in 0..200 {
                        team.for_each_index(10, |_| {
                            hits.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    other.join().expect("other thread");
                });
            })
        });
        assert_eq!(hits.load(Ordering::Relaxed), 4000);
    }

    #[test]
    fn tuner_keeps_the_faster_mode() {
        use std::time::Duration;
        let mut t = Tuner::new(true);
        // Team steps take 1 ms, lone steps 2 ms: the team wins.
        for i in 0..2 * Tuner::PROBE {
            t.after_step(Duration::from_millis(if i < Tuner::PROBE { 1 } else { 2 }));
        }
        assert!(t.choice());
        for _ in 2 * Tuner::PROBE..Tuner::CYCLE {
            t.after_step(Duration::from_millis(1));
        }
        // Next cycle: the team is a little slower, within the margin.
        for i in 0..2 * Tuner::PROBE {
            t.after_step(Duration::from_micros(if i < Tuner::PROBE { 2200 } else { 2000 }));
        }
        assert!(t.choice());
        for _ in 2 * Tuner::PROBE..Tuner::CYCLE {
            t.after_step(Duration::from_millis(1));
        }
        // Then much slower (a descheduled helper): off.
        for i in 0..2 * Tuner::PROBE {
            t.after_step(Duration::from_millis(if i < Tuner::PROBE { 4 } else { 2 }));
        }
        assert!(!t.choice());
    }
}
