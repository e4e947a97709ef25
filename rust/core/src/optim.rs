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

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, new: f64) -> Result<()> {
        check(new.is_finite() && new > 0.0, "learning rate", new, "a finite value > 0")?;
        match self {
            OptimConfig::Sgd { lr, .. }
            | OptimConfig::Adam { lr, .. }
            | OptimConfig::AdamW { lr, .. }
            | OptimConfig::RmsProp { lr, .. } => *lr = new,
        }
        Ok(())
    }

    /// Per-element state slots (always allocated together; a slot a
    /// configuration does not use is never touched, so its zeroed pages cost
    /// no memory).
    fn slots(&self) -> usize {
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

    /// Forgets the step count and all state (momentum, moments).
    pub fn reset(&mut self) {
        self.steps = 0;
        self.state = Vec::new();
    }

    /// Allocates the state; called before the first step so steps never allocate.
    pub fn prepare(&mut self) {
        let want = self.len * self.config.slots();
        if self.state.len() != want {
            self.state = vec![T::ZERO; want];
        }
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
        if let Some(r) = self.ranges.last() {
            if r.end > params.len() || r.end > grads.len() {
                return Err(Error::state(format!(
                    "optimizer covers {} parameters but the model has {}",
                    r.end,
                    params.len()
                )));
            }
        }
        self.prepare();
        let sc = self.scalars();
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
            let p = &mut params[lo..hi];
            let g = &grads[lo..hi];
            let a = &mut s0[at..at + n];
            let b = if s1.is_empty() { &mut [][..] } else { &mut s1[at..at + n] };
            let c = if s2.is_empty() { &mut [][..] } else { &mut s2[at..at + n] };
            match self.config {
                OptimConfig::Sgd { momentum, nesterov, .. } => {
                    let (first, has_m) = (sc.first, momentum != 0.0);
                    zip3(p, g, a, |p, g, buf| sgd(sc, has_m, first, nesterov, p, g, buf));
                }
                OptimConfig::Adam { .. } | OptimConfig::AdamW { .. } => {
                    zip4(p, g, a, b, |p, g, m, v| adam(sc, p, g, m, v));
                }
                OptimConfig::RmsProp { momentum, centered, .. } => {
                    let has_m = momentum != 0.0;
                    zip5(p, g, a, b, c, |p, g, v, buf, ga| rmsprop(sc, has_m, centered, p, g, v, buf, ga));
                }
            }
        }
        Ok(())
    }

    /// Ends an update made of [`Optimizer::step_part`] calls.
    pub fn finish_step(&mut self) {
        self.steps += 1;
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

fn zip3<T: Float>(p: &mut [T], g: &[T], a: &mut [T], f: impl Fn(&mut [T], &[T], &mut [T]) + Sync) {
    if !par_ok(p.len()) {
        return f(p, g, a);
    }
    let n = p.len();
    let (p, a) = (SlicePtr::new(p), SlicePtr::new(a));
    for_ranges(n, |s, e| {
        // SAFETY: `for_ranges` gives each disjoint range once, and the
        // slices stay mutably borrowed by this call until it returns.
        let (p, a) = unsafe { (p.chunk(s, e), a.chunk(s, e)) };
        f(p, part(g, s, e), a)
    });
}

fn zip4<T: Float>(
    p: &mut [T],
    g: &[T],
    a: &mut [T],
    b: &mut [T],
    f: impl Fn(&mut [T], &[T], &mut [T], &mut [T]) + Sync,
) {
    if !par_ok(p.len()) {
        return f(p, g, a, b);
    }
    let n = p.len();
    let (p, a, b) = (SlicePtr::new(p), SlicePtr::new(a), SlicePtr::new(b));
    for_ranges(n, |s, e| {
        // SAFETY: as in `zip3`.
        let (p, a, b) = unsafe { (p.chunk(s, e), a.chunk(s, e), b.chunk(s, e)) };
        f(p, part(g, s, e), a, b)
    });
}

fn zip5<T: Float>(
    p: &mut [T],
    g: &[T],
    a: &mut [T],
    b: &mut [T],
    c: &mut [T],
    f: impl Fn(&mut [T], &[T], &mut [T], &mut [T], &mut [T]) + Sync,
) {
    if !par_ok(p.len()) {
        return f(p, g, a, b, c);
    }
    let n = p.len();
    let (p, a, b, c) = (SlicePtr::new(p), SlicePtr::new(a), SlicePtr::new(b), SlicePtr::new(c));
    for_ranges(n, |s, e| {
        // SAFETY: as in `zip3`.
        let (p, a, b, c) = unsafe { (p.chunk(s, e), a.chunk(s, e), b.chunk(s, e), c.chunk(s, e)) };
        f(p, part(g, s, e), a, b, c)
    });
}

// The update loops below hoist every branch out of the element loop so the
// compiler vectorizes them; each follows torch.optim's documented equations.

crate::multiversion! {
fn sgd<T: Float>(
    sc: StepScalars<T>,
    has_m: bool,
    first: bool,
    nesterov: bool,
    p: &mut [T],
    g: &[T],
    buf: &mut [T],
) {
    let (lr, wd, mom, damp) = (sc.lr, sc.wd, sc.a, sc.b);
    if !has_m {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= lr * (g + wd * *p);
        }
        return;
    }
    let it = p.iter_mut().zip(g).zip(buf.iter_mut());
    match (first, nesterov) {
        (true, false) => it.for_each(|((p, &g), b)| {
            let d = g + wd * *p;
            *b = d;
            *p -= lr * d;
        }),
        (true, true) => it.for_each(|((p, &g), b)| {
            let d = g + wd * *p;
            *b = d;
            *p -= lr * (d + mom * d);
        }),
        (false, false) => it.for_each(|((p, &g), b)| {
            let d = g + wd * *p;
            *b = mom * *b + damp * d;
            *p -= lr * *b;
        }),
        (false, true) => it.for_each(|((p, &g), b)| {
            let d = g + wd * *p;
            *b = mom * *b + damp * d;
            *p -= lr * (d + mom * *b);
        }),
    }
}
}

crate::multiversion! {
fn adam<T: Float>(sc: StepScalars<T>, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let one = T::ONE;
    let (b1c, b2, b2c) = (one - sc.a, sc.b, one - sc.b);
    let (step, bc2, eps) = (sc.c, sc.d, sc.eps);
    let it = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
    if sc.flag {
        // AdamW: decoupled decay, then the Adam step on the raw gradient.
        let shrink = one - sc.lr * sc.wd;
        it.for_each(|(((p, &d), m), v)| {
            *p *= shrink;
            // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
            *m += b1c * (d - *m);
            *v = *v * b2 + b2c * d * d;
            *p -= step * (*m / ((*v).sqrt() / bc2 + eps));
        });
    } else {
        let wd = sc.wd;
        it.for_each(|(((p, &g), m), v)| {
            let d = g + wd * *p;
            *m += b1c * (d - *m);
            *v = *v * b2 + b2c * d * d;
            *p -= step * (*m / ((*v).sqrt() / bc2 + eps));
        });
    }
}
}

crate::multiversion! {
fn rmsprop<T: Float>(
    sc: StepScalars<T>,
    has_m: bool,
    centered: bool,
    p: &mut [T],
    g: &[T],
    v: &mut [T],
    buf: &mut [T],
    ga: &mut [T],
) {
    let one = T::ONE;
    let (lr, wd, alpha, ac, mom, eps) = (sc.lr, sc.wd, sc.a, one - sc.a, sc.b, sc.eps);
    for (i, (p, &g)) in p.iter_mut().zip(g).enumerate() {
        let d = g + wd * *p;
        v[i] = v[i] * alpha + ac * d * d;
        let avg = if centered {
            ga[i] += ac * (d - ga[i]);
            (v[i] - ga[i] * ga[i]).sqrt() + eps
        } else {
            v[i].sqrt() + eps
        };
        if has_m {
            buf[i] = buf[i] * mom + d / avg;
            *p -= lr * buf[i];
        } else {
            *p -= lr * (d / avg);
        }
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
}
