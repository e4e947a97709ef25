//! Optimizers, with update equations exactly as `torch.optim` documents them
//! (SGD, Adam, AdamW, RMSprop). An optimizer updates a set of ranges of the
//! model's flat parameter buffer in one parallel, elementwise pass; its
//! per-element state is interleaved in one buffer allocated on the first step.

use crate::error::{Error, Result};
use crate::float::Float;
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

    /// Per-element state slots.
    fn slots(&self) -> usize {
        match *self {
            OptimConfig::Sgd { momentum, .. } => (momentum != 0.0) as usize,
            OptimConfig::Adam { .. } | OptimConfig::AdamW { .. } => 2,
            OptimConfig::RmsProp { momentum, centered, .. } => 1 + (momentum != 0.0) as usize + centered as usize,
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
        let slots = self.config.slots();
        let cfg = self.config.clone();
        let mut state_off = 0;
        for r in &self.ranges {
            let p = &mut params[r.clone()];
            let g = &grads[r.clone()];
            let s = &mut self.state[state_off * slots..(state_off + r.len()) * slots];
            state_off += r.len();
            if p.len() * 8 < crate::kernels::PAR_MIN_WORK || rayon::current_num_threads() <= 1 {
                update(&cfg, sc, slots, p, g, s);
            } else if slots == 0 {
                p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| update(&cfg, sc, 0, p, g, &mut []));
            } else {
                p.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(s.par_chunks_mut(CHUNK * slots))
                    .for_each(|((p, g), s)| update(&cfg, sc, slots, p, g, s));
            }
        }
        self.steps += 1;
        Ok(())
    }
}

/// The update of one chunk. `s` holds `slots` interleaved state values per element.
#[inline]
fn update<T: Float>(cfg: &OptimConfig, sc: StepScalars<T>, slots: usize, p: &mut [T], g: &[T], s: &mut [T]) {
    let one = T::ONE;
    match *cfg {
        OptimConfig::Sgd { momentum, .. } => {
            if momentum == 0.0 {
                for (p, &g) in p.iter_mut().zip(g) {
                    let d = g + sc.wd * *p;
                    *p -= sc.lr * d;
                }
            } else {
                for ((p, &g), buf) in p.iter_mut().zip(g).zip(s.iter_mut()) {
                    let d = g + sc.wd * *p;
                    *buf = if sc.first { d } else { sc.a * *buf + sc.b * d };
                    let d = if sc.flag { d + sc.a * *buf } else { *buf };
                    *p -= sc.lr * d;
                }
            }
        }
        OptimConfig::Adam { .. } | OptimConfig::AdamW { .. } => {
            let decoupled = sc.flag;
            let shrink = one - sc.lr * sc.wd;
            for ((p, &g), st) in p.iter_mut().zip(g).zip(s.chunks_exact_mut(2)) {
                let d = if decoupled {
                    *p *= shrink;
                    g
                } else {
                    g + sc.wd * *p
                };
                // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
                st[0] += (one - sc.a) * (d - st[0]);
                st[1] = st[1] * sc.b + (one - sc.b) * d * d;
                let denom = st[1].sqrt() / sc.d + sc.eps;
                *p -= sc.c * (st[0] / denom);
            }
        }
        OptimConfig::RmsProp { momentum, centered, .. } => {
            let has_mom = momentum != 0.0;
            for ((p, &g), st) in p.iter_mut().zip(g).zip(s.chunks_exact_mut(slots)) {
                let d = g + sc.wd * *p;
                st[0] = st[0] * sc.a + (one - sc.a) * d * d;
                let avg = if centered {
                    let ga = &mut st[slots - 1];
                    *ga += (one - sc.a) * (d - *ga);
                    (st[0] - st[slots - 1] * st[slots - 1]).sqrt() + sc.eps
                } else {
                    st[0].sqrt() + sc.eps
                };
                if has_mom {
                    st[1] = st[1] * sc.b + d / avg;
                    *p -= sc.lr * st[1];
                } else {
                    *p -= sc.lr * (d / avg);
                }
            }
        }
    }
}
