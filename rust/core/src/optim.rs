//! Optimizers, with update equations exactly as `torch.optim` documents them
//! (SGD, Adam, AdamW, RMSprop). An optimizer updates a set of ranges of the
//! model's flat parameter buffer in one parallel, elementwise pass; its
//! per-element state is interleaved in one buffer allocated on the first step.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::team::{self, SlicePtr};
use crate::kernels::workers_for;
use rayon::prelude::*;
use std::ops::Range;

/// Optimizer hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimConfig {
    /// `torch.optim.SGD`.
    Sgd { lr: f64, momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64 },
    /// `torch.optim.Adam` (L2 penalty added to the gradient).
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// `torch.optim.RMSprop`.
    RmsProp { lr: f64, alpha: f64, eps: f64, momentum: f64, weight_decay: f64, centered: bool },
}

fn check(ok: bool, what: &str, v: f64, want: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::value(format!("invalid {what}: {v} (expected {want})")))
    }
}

impl OptimConfig {
    /// Checks every hyper-parameter; the message names the bad one.
    pub fn validate(&self) -> Result<()> {
        let lr = self.lr();
        check(lr.is_finite() && lr > 0.0, "learning rate", lr, "a finite value > 0")?;
        self.validate_rest()
    }

    /// [`OptimConfig::validate`] for everything but the learning rate.
    fn validate_rest(&self) -> Result<()> {
        let nonneg = |name: &str, v: f64| check(v.is_finite() && v >= 0.0, name, v, "a finite value >= 0");
        let beta = |name: &str, v: f64| check((0.0..1.0).contains(&v), name, v, "a value in [0, 1)");
        match *self {
            OptimConfig::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
                nonneg("momentum", momentum)?;
                nonneg("dampening", dampening)?;
                nonneg("weight_decay", weight_decay)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::value("Nesterov momentum requires a momentum > 0 and zero dampening"));
                }
            }
            OptimConfig::Adam { beta1, beta2, eps, weight_decay, .. }
            | OptimConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                beta("beta1", beta1)?;
                beta("beta2", beta2)?;
                nonneg("eps", eps)?;
                nonneg("weight_decay", weight_decay)?;
            }
            OptimConfig::RmsProp { alpha, eps, momentum, weight_decay, .. } => {
                check((0.0..=1.0).contains(&alpha), "alpha", alpha, "a value in [0, 1]")?;
                nonneg("eps", eps)?;
                nonneg("momentum", momentum)?;
                nonneg("weight_decay", weight_decay)?;
            }
        }
        Ok(())
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimConfig::Sgd { lr, .. }
            | OptimConfig::Adam { lr, .. }
            | OptimConfig::AdamW { lr, .. }
            | OptimConfig::RmsProp { lr, .. } => lr,
        }
    }

    /// Changes the learning rate (for schedules, which may anneal it to 0).
    pub fn set_lr(&mut self, new: f64) -> Result<()> {
        check(new.is_finite() && new >= 0.0, "learning rate", new, "a finite value >= 0")?;
        match self {
            OptimConfig::Sgd { lr, .. }
            | OptimConfig::Adam { lr, .. }
            | OptimConfig::AdamW { lr, .. }
            | OptimConfig::RmsProp { lr, .. } => *lr = new,
        }
        Ok(())
    }

    /// The momentum a schedule cycles (torch's OneCycleLR): SGD's and
    /// RMSprop's `momentum`, Adam's and AdamW's `beta1`.
    pub fn momentum(&self) -> f64 {
        match *self {
            OptimConfig::Sgd { momentum, .. } | OptimConfig::RmsProp { momentum, .. } => momentum,
            OptimConfig::Adam { beta1, .. } | OptimConfig::AdamW { beta1, .. } => beta1,
        }
    }

    /// Changes [`OptimConfig::momentum`], checking the new value.
    pub fn set_momentum(&mut self, new: f64) -> Result<()> {
        let mut next = self.clone();
        match &mut next {
            OptimConfig::Sgd { momentum, .. } | OptimConfig::RmsProp { momentum, .. } => *momentum = new,
            OptimConfig::Adam { beta1, .. } | OptimConfig::AdamW { beta1, .. } => *beta1 = new,
        }
        next.validate_rest()?;
        *self = next;
        Ok(())
    }

    /// Per-element state slots (always allocated together; a slot a
    /// configuration does not use is never touched, so its zeroed pages cost
    /// no memory): SGD `[momentum_buffer]`, Adam and AdamW `[exp_avg,
    /// exp_avg_sq]`, RMSprop `[square_avg, momentum_buffer, grad_avg]`.
    pub fn slots(&self) -> usize {
        match *self {
            OptimConfig::Sgd { .. } => 1,
            OptimConfig::Adam { .. } | OptimConfig::AdamW { .. } => 2,
            OptimConfig::RmsProp { .. } => 3,
        }
    }
}

/// Scalars of one step, in the element type (as torch applies them).
#[derive(Clone, Copy)]
struct StepScalars<T> {
    lr: T,
    wd: T,
    a: T,
    b: T,
    c: T,
    d: T,
    eps: T,
    first: bool,
    flag: bool,
}

/// An optimizer bound to ranges of a flat parameter buffer.
#[derive(Clone, Debug)]
pub struct Optimizer<T: Float> {
    pub config: OptimConfig,
    ranges: Vec<Range<usize>>,
    len: usize,
    steps: u64,
    state: Vec<T>,
}

const CHUNK: usize = 1 << 14;

impl<T: Float> Optimizer<T> {
    /// An optimizer updating `ranges` of the parameter buffer (they must not overlap).
    pub fn new(config: OptimConfig, mut ranges: Vec<Range<usize>>) -> Result<Self> {
        config.validate()?;
        ranges.sort_by_key(|r| r.start);
        if ranges.windows(2).any(|w| w[0].end > w[1].start) {
            return Err(Error::value("an optimizer was given the same parameter twice"));
        }
        let len = ranges.iter().map(|r| r.len()).sum();
        Ok(Optimizer { config, ranges, len, steps: 0, state: Vec::new() })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameter ranges this optimizer updates.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Number of elements updated (the ranges' total length).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no element is updated (never true for a built optimizer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The per-element state: [`OptimConfig::slots`] slots one after the
    /// other, each [`Optimizer::len`] long, holding the ranges in the order
    /// of [`Optimizer::ranges`]. Empty before the first step.
    pub fn state(&self) -> &[T] {
        &self.state
    }

    /// Where `range` (one of [`Optimizer::ranges`]) starts within each slot.
    pub fn offset_of(&self, range: &Range<usize>) -> Option<usize> {
        let mut off = 0;
        for r in &self.ranges {
            if r == range {
                return Some(off);
            }
            off += r.len();
        }
        None
    }

    /// Replaces the step count and the state (laid out as
    /// [`Optimizer::state`]; empty for none, then `steps` must be 0). Checked
    /// before anything changes: the length, and every value finite.
    pub fn set_state(&mut self, steps: u64, state: Vec<T>) -> Result<()> {
        let want = self.len * self.config.slots();
        if !state.is_empty() && state.len() != want {
            return Err(Error::shape(format!(
                "optimizer state has {} values, expected {want} ({} slots of {})",
                state.len(),
                self.config.slots(),
                self.len
            )));
        }
        if state.is_empty() && steps != 0 {
            return Err(Error::state(format!("optimizer state is missing for step {steps}")));
        }
        if state.iter().any(|v| !v.is_finite()) {
            return Err(Error::non_finite("optimizer state holds NaN or infinity"));
        }
        self.steps = steps;
        self.state = state;
        Ok(())
    }

    /// Forgets the step count and all state (momentum, moments).
    pub fn reset(&mut self) {
        self.steps = 0;
        self.state = Vec::new();
    }

    /// Allocates the state; called before the first step so steps never
    /// allocate. The allocation is first checked against the memory budget
    /// ([`crate::memory::reserve`]); on failure nothing changes.
    pub fn prepare(&mut self) -> Result<()> {
        let want = self.len * self.config.slots();
        if self.state.len() != want {
            let slots = self.config.slots();
            crate::memory::reserve(
                &format!("the optimizer's state ({slots} slots of {} values in {})", self.len, T::NAME),
                crate::memory::bytes_of::<T>(want.saturating_sub(self.state.len())),
            )?;
            let mut state = Vec::new();
            state.try_reserve_exact(want).map_err(|_| {
                Error::memory(format!(
                    "cannot allocate {} for the optimizer's state",
                    crate::memory::human(crate::memory::bytes_of::<T>(want))
                ))
            })?;
            state.resize(want, T::ZERO);
            self.state = state;
        }
        Ok(())
    }

    fn scalars(&self) -> StepScalars<T> {
        let t = (self.steps + 1) as f64;
        let f = T::from_f64;
        let first = self.steps == 0;
        match self.config {
            OptimConfig::Sgd { lr, momentum, dampening, nesterov, weight_decay } => StepScalars {
                lr: f(lr),
                wd: f(weight_decay),
                a: f(momentum),
                b: f(1.0 - dampening),
                c: T::ZERO,
                d: T::ZERO,
                eps: T::ZERO,
                first,
                flag: nesterov,
            },
            OptimConfig::Adam { lr, beta1, beta2, eps, weight_decay }
            | OptimConfig::AdamW { lr, beta1, beta2, eps, weight_decay } => {
                let bc1 = 1.0 - beta1.powf(t);
                let bc2 = 1.0 - beta2.powf(t);
                StepScalars {
                    lr: f(lr),
                    wd: f(weight_decay),
                    a: f(beta1),
                    b: f(beta2),
                    c: f(lr / bc1),
                    d: f(bc2.sqrt()),
                    eps: f(eps),
                    first,
                    flag: matches!(self.config, OptimConfig::AdamW { .. }),
                }
            }
            OptimConfig::RmsProp { lr, alpha, eps, momentum, weight_decay, centered } => StepScalars {
                lr: f(lr),
                wd: f(weight_decay),
                a: f(alpha),
                b: f(momentum),
                c: T::ZERO,
                d: T::ZERO,
                eps: f(eps),
                first,
                flag: centered,
            },
        }
    }

    /// One update of `params` from `grads` (both the model's full flat buffers).
    pub fn step(&mut self, params: &mut [T], grads: &[T]) -> Result<()> {
        self.step_part(params, grads, 0..usize::MAX)?;
        self.finish_step();
        Ok(())
    }

    /// Part of one update: only the parameters inside `window` (flat
    /// indices), e.g. one layer's right after its gradient is computed, while
    /// the gradient is still in cache. Every parameter must be covered by
    /// exactly one part before [`Optimizer::finish_step`]; the parts give the
    /// same values as one [`Optimizer::step`].
    pub fn step_part(&mut self, params: &mut [T], grads: &[T], window: Range<usize>) -> Result<()> {
        self.check_len(params, grads)?;
        self.prepare()?;
        let (cfg, sc) = (self.config.clone(), self.scalars());
        self.stretches(params, grads, window, |st| drive(st, |_, st| update(&cfg, sc, st, &mut Plain)));
        Ok(())
    }

    /// [`Optimizer::step_part`] that also measures what it does, for
    /// training diagnostics: `[sum g^2, sum w^2, sum (w_new - w)^2]` over
    /// `window`, taken block by block while the block is in cache. The sums
    /// run in a fixed order (the same bits on any thread count), in the
    /// element type within blocks of the optimizer's `CHUNK` (16,384 elements) and in float64 across
    /// them. `None`, updating nothing, when `window` is not inside one of the
    /// optimizer's ranges. `buf` holds partial sums.
    pub fn step_part_measured(
        &mut self,
        params: &mut [T],
        grads: &[T],
        window: Range<usize>,
        buf: &mut Vec<[f64; 3]>,
    ) -> Result<Option<[f64; 3]>> {
        if !self.ranges.iter().any(|r| r.start <= window.start && window.end <= r.end) {
            return Ok(None);
        }
        self.check_len(params, grads)?;
        self.prepare()?;
        let (cfg, sc) = (self.config.clone(), self.scalars());
        let count = window.len().div_ceil(CHUNK);
        if buf.len() < count {
            buf.resize(count, [0.0; 3]);
        }
        let parts = SlicePtr::new(&mut buf[..count]);
        self.stretches(params, grads, window, |st| drive(st, |s0, st| measured(&cfg, sc, s0, st, &parts)));
        let mut total = [0.0f64; 3];
        for b in &buf[..count] {
            for k in 0..3 {
                total[k] += b[k];
            }
        }
        Ok(Some(total))
    }

    fn check_len(&self, params: &[T], grads: &[T]) -> Result<()> {
        if let Some(r) = self.ranges.last() {
            if r.end > params.len() || r.end > grads.len() {
                return Err(Error::state(format!(
                    "optimizer covers {} parameters but the model has {}",
                    r.end,
                    params.len()
                )));
            }
        }
        Ok(())
    }

    /// `f(stretch)` for each range's part inside `window`, with its state.
    fn stretches(
        &mut self,
        params: &mut [T],
        grads: &[T],
        window: Range<usize>,
        mut f: impl FnMut(Stretch<'_, T>),
    ) {
        let len = self.len;
        // State slots are stored one after the other, each `len` long.
        let (s0, rest) = self.state.split_at_mut(len);
        let (s1, s2) = if rest.is_empty() { (&mut [][..], &mut [][..]) } else { rest.split_at_mut(len) };
        let mut off = 0;
        for r in &self.ranges {
            let (lo, hi) = (r.start.max(window.start), r.end.min(window.end));
            let base = off;
            off += r.len();
            if lo >= hi {
                continue;
            }
            let (n, at) = (hi - lo, base + lo - r.start);
            f(Stretch {
                p: &mut params[lo..hi],
                g: &grads[lo..hi],
                a: &mut s0[at..at + n],
                b: part_mut(s1, at, at + n),
                c: part_mut(s2, at, at + n),
            });
        }
    }

    /// Ends an update made of [`Optimizer::step_part`] calls.
    pub fn finish_step(&mut self) {
        self.steps += 1;
    }
}

/// Parameters, gradients and state slots (empty when unused) of one
/// stretch of elements.
struct Stretch<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    a: &'a mut [T],
    b: &'a mut [T],
    c: &'a mut [T],
}

/// The update of one stretch, on this thread, watched by `o`: [`Plain`]
/// (a step) or [`Sums`] (a measured step, for diagnostics). Both run the
/// one definition of each optimizer's per-element update ([`sgd`],
/// [`adam`], [`rmsprop`]), so they give the same bits.
fn update<T: Float, O: Watch<T>>(cfg: &OptimConfig, sc: StepScalars<T>, st: Stretch<'_, T>, o: &mut O) {
    let Stretch { p, g, a, b, c } = st;
    match *cfg {
        OptimConfig::Sgd { momentum, nesterov, .. } => {
            sgd(sc, momentum != 0.0, sc.first, nesterov, p, g, a, o)
        }
        OptimConfig::Adam { .. } | OptimConfig::AdamW { .. } => adam(sc, p, g, a, b, o),
        OptimConfig::RmsProp { momentum, centered, .. } => {
            rmsprop(sc, momentum != 0.0, centered, p, g, a, b, c, o)
        }
    }
}

/// A measured update of a stretch that starts `s0` elements (a multiple
/// of `CHUNK`) into its window: each `CHUNK` of the window updated with its
/// own [`Sums`], stored in its slot of `parts`.
fn measured<T: Float>(
    cfg: &OptimConfig,
    sc: StepScalars<T>,
    s0: usize,
    st: Stretch<'_, T>,
    parts: &SlicePtr<[f64; 3]>,
) {
    let Stretch { p, g, a, b, c } = st;
    let n = p.len();
    let mut i = 0;
    while i < n {
        let e = (i + CHUNK).min(n);
        let mut sums = Sums::new();
        let st = Stretch {
            p: &mut p[i..e],
            g: &g[i..e],
            a: part_mut(a, i, e),
            b: part_mut(b, i, e),
            c: part_mut(c, i, e),
        };
        update(cfg, sc, st, &mut sums);
        let slot = (s0 + i) / CHUNK;
        // SAFETY: slot `k` sums offsets `k * CHUNK .. (k + 1) * CHUNK` of the
        // window, which one call alone processes: `drive` hands out whole
        // `CHUNK`s (or everything to one call), and the window lies inside
        // one range, so it is one stretch; `parts` stays borrowed by
        // `step_part_measured` until the update returns.
        let cell = unsafe { parts.chunk(slot, slot + 1) };
        cell[0] = sums.total();
        i = e;
    }
}

/// What an update pass does besides updating: nothing ([`Plain`]) or
/// measuring what it sees ([`Sums`]).
trait Watch<T: Float> {
    /// Whether [`Watch::see`] does anything. A constant, so the plain pass
    /// compiles to the bare update loop (no copies of the old weights).
    const ON: bool;
    /// Element `g` changed a weight from `old` to `new`; `l < LANES` is its
    /// lane (its index modulo [`LANES`]).
    fn see(&mut self, l: usize, g: T, old: T, new: T);
}

/// A plain step: nothing is watched.
struct Plain;

impl<T: Float> Watch<T> for Plain {
    const ON: bool = false;
    #[inline(always)]
    fn see(&mut self, _: usize, _: T, _: T, _: T) {}
}

/// Lanes of a measured update's sums (a multiple of every vector width).
const LANES: usize = 32;

/// Per-lane sums, in the element type, of `g^2`, `w^2` (the weights before
/// the update) and `(w_new - w)^2`, taken inside the update loop while the
/// values are in registers.
#[derive(Clone, Copy)]
struct Sums<T> {
    g: [T; LANES],
    w: [T; LANES],
    d: [T; LANES],
}

impl<T: Float> Sums<T> {
    fn new() -> Self {
        Sums { g: [T::ZERO; LANES], w: [T::ZERO; LANES], d: [T::ZERO; LANES] }
    }

    /// The three sums, the lanes added in order in float64.
    fn total(&self) -> [f64; 3] {
        let f = |a: &[T; LANES]| a.iter().map(|v| v.to_f64()).sum::<f64>();
        [f(&self.g), f(&self.w), f(&self.d)]
    }
}

impl<T: Float> Watch<T> for Sums<T> {
    const ON: bool = true;

    /// Fused multiply-adds: the measured kernels are compiled with FMA
    /// (AVX2 or AVX-512 builds; the portable fallback pays for software FMA).
    #[inline(always)]
    fn see(&mut self, l: usize, g: T, old: T, new: T) {
        self.g[l] = g.mul_add(g, self.g[l]);
        self.w[l] = old.mul_add(old, self.w[l]);
        let d = new - old;
        self.d[l] = d.mul_add(d, self.d[l]);
    }
}

const PAR_MIN: usize = 1 << 17;

fn par_ok(n: usize) -> bool {
    let (threads, min_work) = workers_for(PAR_MIN);
    n >= min_work && threads > 1
}

/// `f(start, end)` over the `CHUNK`-sized ranges of `0..n`, in parallel on
/// the calling thread's team or else on the rayon pool; each range once.
fn for_ranges(n: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let count = n.div_ceil(CHUNK);
    let range = |i: usize| (i * CHUNK, ((i + 1) * CHUNK).min(n));
    team::with_current(|t| match t {
        Some(t) => t.for_each_index(count, |i| {
            let (s, e) = range(i);
            f(s, e)
        }),
        None => (0..count).into_par_iter().for_each(|i| {
            let (s, e) = range(i);
            f(s, e)
        }),
    })
}

fn part<T>(g: &[T], s: usize, e: usize) -> &[T] {
    &g[s.min(g.len())..e.min(g.len())]
}

fn part_mut<T>(g: &mut [T], s: usize, e: usize) -> &mut [T] {
    let n = g.len();
    &mut g[s.min(n)..e.min(n)]
}

/// `f(offset, piece)` over the `CHUNK`-sized pieces of a stretch, in
/// parallel when it is large, else once over all of it (offset 0).
fn drive<T: Float>(st: Stretch<'_, T>, f: impl Fn(usize, Stretch<'_, T>) + Sync + Send) {
    let n = st.p.len();
    if !par_ok(n) {
        return f(0, st);
    }
    let Stretch { p, g, a, b, c } = st;
    let (pp, pa, pb, pc) = (SlicePtr::new(p), SlicePtr::new(a), SlicePtr::new(b), SlicePtr::new(c));
    for_ranges(n, |s, e| {
        // SAFETY: `for_ranges` gives each disjoint range once, and the
        // slices stay mutably borrowed by this call until it returns
        // (`chunk` clamps to an empty slice for an unused, empty slot).
        let (p, a, b, c) = unsafe { (pp.chunk(s, e), pa.chunk(s, e), pb.chunk(s, e), pc.chunk(s, e)) };
        f(s, Stretch { p, g: part(g, s, e), a, b, c })
    });
}

// The drivers below run an update closure `f(p, g, state..)` on every
// element of a stretch, watched by `o`. Unwatched (`O::ON` false, known at
// compile time): one loop over the zipped slices, which the compiler
// vectorizes. Watched: runs of `LANES` elements, each run updated (its old
// weights kept) and then seen, two loops of fixed length that vectorize on
// their own, then the remainder in lane `i % LANES`. Every element gets
// the same `f` either way, so both passes give the same bits.

/// The driver for updates with one state slot (`a`, unused by plain SGD).
#[inline(always)]
fn each1<T: Float, O: Watch<T>>(o: &mut O, p: &mut [T], g: &[T], a: &mut [T], f: impl Fn(&mut T, T, &mut T)) {
    let n = p.len();
    let (g, a) = (&g[..n], &mut a[..n]);
    if !O::ON {
        p.iter_mut().zip(g).zip(a).for_each(|((p, &g), a)| f(p, g, a));
        return;
    }
    let (pc, pr) = p.as_chunks_mut::<LANES>();
    let (gc, gr) = g.as_chunks::<LANES>();
    let (ac, ar) = a.as_chunks_mut::<LANES>();
    for ((p, g), a) in pc.iter_mut().zip(gc).zip(ac.iter_mut()) {
        let old = *p;
        for l in 0..LANES {
            f(&mut p[l], g[l], &mut a[l]);
        }
        for l in 0..LANES {
            o.see(l, g[l], old[l], p[l]);
        }
    }
    for (l, ((p, &g), a)) in pr.iter_mut().zip(gr).zip(ar.iter_mut()).enumerate() {
        let old = *p;
        f(p, g, a);
        o.see(l, g, old, *p);
    }
}

/// [`each1`] for updates with two state slots.
#[inline(always)]
fn each2<T: Float, O: Watch<T>>(
    o: &mut O,
    p: &mut [T],
    g: &[T],
    a: &mut [T],
    b: &mut [T],
    f: impl Fn(&mut T, T, &mut T, &mut T),
) {
    let n = p.len();
    let (g, a, b) = (&g[..n], &mut a[..n], &mut b[..n]);
    if !O::ON {
        p.iter_mut().zip(g).zip(a).zip(b).for_each(|(((p, &g), a), b)| f(p, g, a, b));
        return;
    }
    let (pc, pr) = p.as_chunks_mut::<LANES>();
    let (gc, gr) = g.as_chunks::<LANES>();
    let (ac, ar) = a.as_chunks_mut::<LANES>();
    let (bc, br) = b.as_chunks_mut::<LANES>();
    for (((p, g), a), b) in pc.iter_mut().zip(gc).zip(ac.iter_mut()).zip(bc.iter_mut()) {
        let old = *p;
        for l in 0..LANES {
            f(&mut p[l], g[l], &mut a[l], &mut b[l]);
        }
        for l in 0..LANES {
            o.see(l, g[l], old[l], p[l]);
        }
    }
    for (l, (((p, &g), a), b)) in pr.iter_mut().zip(gr).zip(ar.iter_mut()).zip(br.iter_mut()).enumerate() {
        let old = *p;
        f(p, g, a, b);
        o.see(l, g, old, *p);
    }
}

/// [`each1`] for updates with three state slots.
#[inline(always)]
fn each3<T: Float, O: Watch<T>>(
    o: &mut O,
    p: &mut [T],
    g: &[T],
    a: &mut [T],
    b: &mut [T],
    c: &mut [T],
    f: impl Fn(&mut T, T, &mut T, &mut T, &mut T),
) {
    let n = p.len();
    let (g, a, b, c) = (&g[..n], &mut a[..n], &mut b[..n], &mut c[..n]);
    if !O::ON {
        p.iter_mut().zip(g).zip(a).zip(b).zip(c).for_each(|((((p, &g), a), b), c)| f(p, g, a, b, c));
        return;
    }
    let (pc, pr) = p.as_chunks_mut::<LANES>();
    let (gc, gr) = g.as_chunks::<LANES>();
    let (ac, ar) = a.as_chunks_mut::<LANES>();
    let (bc, br) = b.as_chunks_mut::<LANES>();
    let (cc, cr) = c.as_chunks_mut::<LANES>();
    for ((((p, g), a), b), c) in
        pc.iter_mut().zip(gc).zip(ac.iter_mut()).zip(bc.iter_mut()).zip(cc.iter_mut())
    {
        let old = *p;
        for l in 0..LANES {
            f(&mut p[l], g[l], &mut a[l], &mut b[l], &mut c[l]);
        }
        for l in 0..LANES {
            o.see(l, g[l], old[l], p[l]);
        }
    }
    for (l, ((((p, &g), a), b), c)) in
        pr.iter_mut().zip(gr).zip(ar.iter_mut()).zip(br.iter_mut()).zip(cr.iter_mut()).enumerate()
    {
        let old = *p;
        f(p, g, a, b, c);
        o.see(l, g, old, *p);
    }
}

// Each optimizer's per-element update, written once: one closure per
// branch, chosen outside the element loop so every loop is branch-free and
// vectorizes. Each follows torch.optim's documented equations.

crate::multiversion! {
fn sgd<T: Float, O: Watch<T>>(
    sc: StepScalars<T>,
    has_m: bool,
    first: bool,
    nesterov: bool,
    p: &mut [T],
    g: &[T],
    buf: &mut [T],
    o: &mut O,
) {
    let (lr, wd, mom, damp) = (sc.lr, sc.wd, sc.a, sc.b);
    match (has_m, first, nesterov) {
        (false, _, _) => each1(o, p, g, buf, |p, g, _| *p -= lr * (g + wd * *p)),
        (true, true, false) => each1(o, p, g, buf, |p, g, b| {
            let d = g + wd * *p;
            *b = d;
            *p -= lr * d;
        }),
        (true, true, true) => each1(o, p, g, buf, |p, g, b| {
            let d = g + wd * *p;
            *b = d;
            *p -= lr * (d + mom * d);
        }),
        (true, false, false) => each1(o, p, g, buf, |p, g, b| {
            let d = g + wd * *p;
            *b = mom * *b + damp * d;
            *p -= lr * *b;
        }),
        (true, false, true) => each1(o, p, g, buf, |p, g, b| {
            let d = g + wd * *p;
            *b = mom * *b + damp * d;
            *p -= lr * (d + mom * *b);
        }),
    }
}
}

crate::multiversion! {
fn adam<T: Float, O: Watch<T>>(sc: StepScalars<T>, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], o: &mut O) {
    let one = T::ONE;
    let (b1c, b2, b2c) = (one - sc.a, sc.b, one - sc.b);
    let (step, bc2, eps) = (sc.c, sc.d, sc.eps);
    if sc.flag {
        // AdamW: decoupled decay, then the Adam step on the raw gradient.
        let shrink = one - sc.lr * sc.wd;
        each2(o, p, g, m, v, |p, d, m, v| {
            *p *= shrink;
            // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
            *m += b1c * (d - *m);
            *v = *v * b2 + b2c * d * d;
            *p -= step * (*m / ((*v).sqrt() / bc2 + eps));
        });
    } else {
        let wd = sc.wd;
        each2(o, p, g, m, v, |p, g, m, v| {
            let d = g + wd * *p;
            *m += b1c * (d - *m);
            *v = *v * b2 + b2c * d * d;
            *p -= step * (*m / ((*v).sqrt() / bc2 + eps));
        });
    }
}
}

crate::multiversion! {
fn rmsprop<T: Float, O: Watch<T>>(
    sc: StepScalars<T>,
    has_m: bool,
    centered: bool,
    p: &mut [T],
    g: &[T],
    v: &mut [T],
    buf: &mut [T],
    ga: &mut [T],
    o: &mut O,
) {
    let one = T::ONE;
    let (lr, wd, alpha, ac, mom, eps) = (sc.lr, sc.wd, sc.a, one - sc.a, sc.b, sc.eps);
    // One closure per branch, so each loop is branch-free.
    macro_rules! run {
        ($centered:expr, $has_m:expr) => {
            each3(o, p, g, v, buf, ga, |p, g, v, buf, ga| {
                let d = g + wd * *p;
                *v = *v * alpha + ac * d * d;
                let avg = if $centered {
                    *ga += ac * (d - *ga);
                    (*v - *ga * *ga).sqrt() + eps
                } else {
                    (*v).sqrt() + eps
                };
                if $has_m {
                    *buf = *buf * mom + d / avg;
                    *p -= lr * *buf;
                } else {
                    *p -= lr * (d / avg);
                }
            })
        };
    }
    match (centered, has_m) {
        (true, true) => run!(true, true),
        (true, false) => run!(true, false),
        (false, true) => run!(false, true),
        (false, false) => run!(false, false),
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Updating in parts (any windows that cover every parameter once) gives
    /// the bits of one whole step, for every optimizer, over several steps.
    #[test]
    fn parts_equal_one_step() {
        let configs = [
            OptimConfig::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 0.01 },
            OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            OptimConfig::AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
            OptimConfig::RmsProp {
                lr: 1e-2,
                alpha: 0.99,
                eps: 1e-8,
                momentum: 0.5,
                weight_decay: 0.0,
                centered: true,
            },
        ];
        let n = 40_000;
        let ranges = vec![0..30_000, 30_000..30_100, 30_200..n];
        for cfg in configs {
            let mut whole = Optimizer::<f32>::new(cfg.clone(), ranges.clone()).expect("optimizer");
            let name = format!("{cfg:?}");
            let mut parts = Optimizer::<f32>::new(cfg, ranges.clone()).expect("optimizer");
            let mut p1: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect();
            let mut p2 = p1.clone();
            for s in 0..3 {
                let g: Vec<f32> = (0..n).map(|i| ((i * 7 + s) % 89) as f32 / 89.0 - 0.5).collect();
                whole.step(&mut p1, &g).expect("step");
                for w in [0..17_000, 17_000..30_050, 30_050..n] {
                    parts.step_part(&mut p2, &g, w).expect("part");
                }
                parts.finish_step();
                assert_eq!(p1, p2, "{name} step {s}");
            }
            assert_eq!(parts.steps(), 3);
            // Parameters outside the ranges are never touched.
            assert_eq!(p2[30_150], (30_150 % 97) as f32 / 97.0 - 0.5);
        }
    }

    /// A state copied with `state`/`set_state` continues bit for bit; bad
    /// states are refused and leave the optimizer as it was.
    #[test]
    fn state_round_trip() {
        let cfg = OptimConfig::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let ranges = vec![10..20, 0..5];
        let mut a = Optimizer::<f64>::new(cfg.clone(), ranges.clone()).expect("optimizer");
        let mut pa: Vec<f64> = (0..20).map(|i| i as f64 / 7.0).collect();
        let g: Vec<f64> = (0..20).map(|i| (i as f64 - 9.5) / 3.0).collect();
        for _ in 0..3 {
            a.step(&mut pa, &g).expect("step");
        }
        assert_eq!(a.state().len(), 2 * 15);
        assert_eq!(a.offset_of(&(0..5)), Some(0));
        assert_eq!(a.offset_of(&(10..20)), Some(5));
        assert_eq!(a.offset_of(&(5..10)), None);
        let mut b = Optimizer::<f64>::new(cfg, ranges).expect("optimizer");
        assert!(b.set_state(3, vec![0.0; 7]).is_err());
        assert!(b.set_state(3, vec![]).is_err());
        assert!(b.set_state(3, vec![f64::NAN; 30]).is_err());
        assert_eq!((b.steps(), b.state().len()), (0, 0));
        b.set_state(a.steps(), a.state().to_vec()).expect("set");
        let mut pb = pa.clone();
        a.step(&mut pa, &g).expect("step");
        b.step(&mut pb, &g).expect("step");
        assert_eq!(pa, pb);
        assert_eq!(a.state(), b.state());
    }

    /// A measured update gives the bits of a plain one, for every optimizer
    /// and branch, and sums that match plain float64 sums closely and do
    /// not depend on the thread count.
    #[test]
    fn measured_equals_plain_and_measures() {
        let sgd = |momentum: f64, nesterov: bool| OptimConfig::Sgd {
            lr: 0.1,
            momentum,
            dampening: 0.0,
            nesterov,
            weight_decay: 0.01,
        };
        let configs = [
            sgd(0.0, false),
            sgd(0.9, false),
            sgd(0.9, true),
            OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
            OptimConfig::AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
            OptimConfig::RmsProp {
                lr: 1e-2,
                alpha: 0.99,
                eps: 1e-8,
                momentum: 0.5,
                weight_decay: 0.0,
                centered: true,
            },
            OptimConfig::RmsProp {
                lr: 1e-2,
                alpha: 0.9,
                eps: 1e-8,
                momentum: 0.0,
                weight_decay: 0.1,
                centered: false,
            },
        ];
        let n = 300_017; // large enough to split; not a multiple of anything
        let ranges = vec![0..1000, 1000..n];
        for cfg in configs {
            let name = format!("{cfg:?}");
            let mut plain = Optimizer::<f32>::new(cfg.clone(), ranges.clone()).expect("optimizer");
            let mut meas = Optimizer::<f32>::new(cfg.clone(), ranges.clone()).expect("optimizer");
            let mut one = Optimizer::<f32>::new(cfg, ranges.clone()).expect("optimizer");
            let mut p1: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect();
            let (mut p2, mut p3) = (p1.clone(), p1.clone());
            let mut buf = Vec::new();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
            for step in 0..3 {
                let g: Vec<f32> = (0..n).map(|i| ((i * 7 + step) % 89) as f32 / 89.0 - 0.5).collect();
                let before = p2.clone();
                plain.step(&mut p1, &g).expect("step");
                let mut sums = Vec::new();
                for r in &ranges {
                    sums.push(
                        meas.step_part_measured(&mut p2, &g, r.clone(), &mut buf)
                            .expect("m")
                            .expect("inside"),
                    );
                }
                meas.finish_step();
                let serial = pool.install(|| {
                    let r = ranges[1].clone();
                    one.step_part(&mut p3, &g, ranges[0].clone()).expect("part");
                    let s =
                        one.step_part_measured(&mut p3, &g, r, &mut Vec::new()).expect("m").expect("inside");
                    one.finish_step();
                    s
                });
                assert_eq!(p1, p2, "{name} step {step}");
                assert_eq!(p1, p3, "{name} step {step}");
                assert_eq!(sums[1], serial, "{name}: sums independent of the thread count");
                for (r, got) in ranges.iter().zip(&sums) {
                    let r = r.clone();
                    let sq = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
                    let d: Vec<f32> =
                        p2[r.clone()].iter().zip(&before[r.clone()]).map(|(a, b)| a - b).collect();
                    let want = [sq(&g[r.clone()]), sq(&before[r.clone()]), sq(&d)];
                    for k in 0..3 {
                        assert!(
                            (got[k] - want[k]).abs() <= 1e-5 * want[k],
                            "{name} sum {k}: {} vs {}",
                            got[k],
                            want[k]
                        );
                    }
                }
            }
            // A window across two ranges is not measured (and not updated).
            let before = p2.clone();
            assert!(meas
                .step_part_measured(&mut p2, &[0.5; 300_017], 500..1500, &mut buf)
                .expect("m")
                .is_none());
            assert_eq!(p2, before);
        }
    }
}
