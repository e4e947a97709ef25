//! The fused training epoch, evaluation and inference.

use super::parallel::Parallel;
use super::workspace::batch_target;
use super::Sequential;
use crate::clip::ClipNorm;
use crate::data::{Features, Rows};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::team;
use crate::layers::numel;
use crate::loss::{
    check_sample_weights, loss_grad, loss_grad_over, mean_denom, validate_target, Loss, LossSpec, LossTotals,
    Target,
};
use crate::optim::Optimizer;
use std::time::Instant;

/// Largest training step (floating-point operations, from each layer's
/// [`crate::layers::Layer::flops`]) that runs on a spinning [`team`] rather
/// than the rayon pool: the three benchmark MLPs (20 MFLOP, 0.5 and 2.9
/// GFLOP per step) and the benchmark CNN (4.3 GFLOP). Waking a sleeping
/// rayon worker around each product, pass and update costs more than a
/// team's hand-over, most of all for short steps.
const TEAM_MAX_STEP_FLOPS: usize = 1 << 33;

/// Smallest training step for a team: below it no kernel splits anyway, and
/// starting and stopping the helpers (tens of microseconds per epoch) would
/// dominate the many short epochs of a toy model.
const TEAM_MIN_STEP_FLOPS: usize = 1 << 22;

/// Most threads for a team: measured on 2; the 16-core scaling of the large
/// MLP was measured with the gemm crate's own split, which a team replaces.
const TEAM_MAX_THREADS: usize = 4;

/// Largest batch (in input elements) whose successor is prefetched.
const PREFETCH_MAX_ELEMS: usize = 1 << 16;

/// A dataset: `n` samples of per-sample shape `shape` (batch first), their
/// targets and, optionally, a weight per sample (Keras's `sample_weight`).
#[derive(Clone, Copy, Debug)]
pub struct Data<'a, T> {
    pub x: Features<'a>,
    pub n: usize,
    pub shape: &'a [usize],
    pub y: Target<'a, T>,
    pub weights: Option<&'a [T]>,
}

impl<'a, T> Data<'a, T> {
    /// `n` samples without sample weights.
    pub fn new(x: Features<'a>, n: usize, shape: &'a [usize], y: Target<'a, T>) -> Self {
        Data { x, n, shape, y, weights: None }
    }
}

/// How one training epoch runs.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochOptions {
    pub loss: LossSpec,
    pub batch_size: usize,
    pub shuffle: bool,
    /// The epoch's number (messages only).
    pub epoch: usize,
    /// Check the data first; later epochs over the same data may skip it.
    pub check: bool,
    /// The learning rate of each step (a schedule evaluated per step), one
    /// per step of the epoch. The optimizer's own value is put back after
    /// the epoch (a schedule sets it to the value for the step after).
    pub lrs: Option<Vec<f64>>,
    /// The momentum (SGD, RMSprop) or beta1 (Adam) of each step, likewise.
    pub momenta: Option<Vec<f64>>,
    /// Report progress after every step, not about every
    /// [`Sequential::report_every`] (for per-batch callbacks).
    pub every_step: bool,
    /// Clip the gradients' total norm before each update (torch's
    /// `clip_grad_norm_` over all parameters).
    pub clip: Option<ClipNorm>,
    /// Collect [`Diagnostics`](super::Diagnostics) (means over the epoch's steps), read with
    /// [`Sequential::last_diagnostics`].
    pub diagnostics: bool,
    /// Data-parallel training: this process's part of each step (see
    /// [`Sequential::train_epoch_reduced`]).
    pub parallel: Option<Parallel>,
}

impl EpochOptions {
    /// Options for `loss` and `batch_size`: shuffled, checked, epoch 1.
    pub fn new(loss: impl Into<LossSpec>, batch_size: usize) -> Self {
        EpochOptions {
            loss: loss.into(),
            batch_size,
            shuffle: true,
            epoch: 1,
            check: true,
            lrs: None,
            momenta: None,
            every_step: false,
            clip: None,
            diagnostics: false,
            parallel: None,
        }
    }

    /// Steps an epoch of `n` samples takes.
    pub fn steps(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size.max(1))
    }
}

/// What a progress report asks of the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the epoch after this step (a callback asked to stop training);
    /// the totals so far are returned.
    Stop,
}

/// Progress of a training epoch, reported between steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// Samples seen in this epoch.
    pub samples: usize,
    /// Running totals (loss, accuracy) over this epoch so far.
    pub totals: LossTotals,
}

impl<T: Float> Sequential<T> {
    /// Checks that targets (and sample weights) fit `n` samples of this
    /// model's output for `loss`.
    fn check_target(&mut self, loss: &LossSpec, data: &Data<'_, T>) -> Result<usize> {
        let out = self.out_shape().to_vec();
        let cols = numel(&out);
        if loss.kind == Loss::CrossEntropy && out.len() != 1 {
            return Err(Error::shape(format!(
                "cross_entropy expects a model output of shape (N, C), got per-sample shape {out:?}"
            )));
        }
        loss.check_cols(cols)?;
        validate_target(loss.kind, data.y, data.n, cols)?;
        if let Some(w) = data.weights {
            check_sample_weights(w, data.n)?;
        }
        Ok(cols)
    }

    /// Checks features, targets and sample weights against the model and
    /// `loss` without computing anything.
    pub fn validate_data(&mut self, data: Data<'_, T>, loss: &LossSpec) -> Result<()> {
        self.check_input(&data.x, data.n, data.shape, "X")?;
        self.check_target(loss, &data).map(|_| ())
    }

    /// The team size for training steps of `bs` samples: the thread count
    /// when a step's work is in the range where a team pays.
    fn team_size(&self, bs: usize) -> usize {
        let per_sample: usize = self
            .ops
            .iter()
            .enumerate()
            .skip(self.prefix)
            .map(|(i, op)| op.layer.flops(&self.ws.shapes[i]))
            .fold(0, usize::saturating_add);
        let step_flops = bs.saturating_mul(per_sample);
        let threads = rayon::current_num_threads();
        let worth = (TEAM_MIN_STEP_FLOPS..=TEAM_MAX_STEP_FLOPS).contains(&step_flops);
        if threads <= TEAM_MAX_THREADS && worth {
            threads
        } else {
            1
        }
    }

    /// One epoch of minibatch training, fused: gather, forward, loss and its
    /// gradient, backward, optimizer update, with no allocation per step.
    /// `progress` is called about every [`Sequential::report_every`] (every
    /// step with `opts.every_step`) and at the end; [`Flow::Stop`] ends the
    /// epoch early and returns the totals so far, an error from it stops the
    /// epoch with that error (the model stays usable).
    /// With `opts.check` false the data is trusted to have passed
    /// [`Sequential::validate_data`] already (later epochs skip the scan).
    /// Everything that could refuse the epoch is checked before the first
    /// step, so an error leaves the model as it was.
    pub fn train_epoch(
        &mut self,
        data: Data<'_, T>,
        opt: &mut Optimizer<T>,
        opts: &EpochOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<Flow>,
    ) -> Result<LossTotals> {
        self.train_epoch_reduced(data, opt, opts, progress, None)
    }

    /// [`Sequential::train_epoch`] with a gradient hook: `reduce` is called
    /// once per step with the flat gradient buffer (every parameter's
    /// gradient, after the whole backward pass, before clipping and the
    /// update), e.g. to sum it in place across processes for data-parallel
    /// training with `opts.parallel`; an error from it ends the epoch with
    /// that error (the model stays usable, updated up to the step before).
    ///
    /// With a hook the step's updates wait for the whole backward pass (as
    /// with clipping) and a non-finite loss on any process ends the epoch
    /// on every process at the same step: the process that sees it makes
    /// the first gradient element NaN before the hook, and every process
    /// checks that element after it.
    pub fn train_epoch_reduced(
        &mut self,
        data: Data<'_, T>,
        opt: &mut Optimizer<T>,
        opts: &EpochOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<Flow>,
        mut reduce: Option<&mut dyn FnMut(&mut [T]) -> Result<()>>,
    ) -> Result<LossTotals> {
        let Data { x, n, shape, y, weights } = data;
        let (loss, epoch) = (&opts.loss, opts.epoch);
        if opts.batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        if opt.ranges().last().is_some_and(|r| r.end > self.params.len()) {
            return Err(Error::value("the optimizer was built for a different model"));
        }
        if opts.check {
            self.validate_data(data, loss)?;
        } else if weights.is_some_and(|w| w.len() != n) {
            return Err(Error::shape(format!("sample_weight must have {n} entries")));
        } else if n == 0 || x.len() != n * numel(shape) {
            return Err(Error::shape(format!(
                "X has {} elements, expected {n} samples of shape {shape:?}",
                x.len()
            )));
        }
        self.plan(shape, 1, false)?;
        let cols = self.out_len();
        let bs = opts.batch_size.min(n);
        let par = opts.parallel;
        if let Some(p) = par {
            p.check()?;
            if reduce.is_none() {
                return Err(Error::value(
                    "parallel training needs a gradient hook to sum the ranks' gradients",
                ));
            }
        }
        // This process's largest part of a batch, and every part's size.
        let part_sizes = |m: usize| par.map_or_else(|| vec![m], |p| p.part_sizes(m));
        let local = part_sizes(bs).into_iter().max().unwrap_or(bs).max(1);
        self.plan(shape, local, true)?;
        for m in part_sizes(bs).into_iter().filter(|&m| m > 0) {
            self.check_batch(m, true)?;
        }
        if n % bs != 0 {
            part_sizes(n % bs)
                .into_iter()
                .filter(|&m| m > 0)
                .try_for_each(|m| self.check_batch(m, true))
                .map_err(|e| Error {
                    message: format!(
                        "{} (the epoch's last batch: {n} samples in batches of {bs}; pick a batch size \
                     that does not leave it so small)",
                        e.message
                    ),
                    ..e
                })?;
        }
        let steps = par.map_or(n.div_ceil(bs), |p| p.steps(n.div_ceil(bs)));
        // Per-step schedules: every value is checked before the first step.
        for (what, values) in [("learning rates", &opts.lrs), ("momenta", &opts.momenta)] {
            if let Some(v) = values {
                if v.len() != steps {
                    return Err(Error::value(format!(
                        "the schedule gives {} {what} for an epoch of {steps} steps",
                        v.len()
                    )));
                }
            }
        }
        let saved = opt.config.clone();
        let mut probe = opt.config.clone();
        for &lr in opts.lrs.iter().flatten() {
            probe.set_lr(lr)?;
        }
        for &m in opts.momenta.iter().flatten() {
            probe.set_momentum(m)?;
        }
        opt.prepare()?;
        if opts.diagnostics {
            self.diag_begin()?;
        } else {
            self.diag.stop();
        }
        let mut order = std::mem::take(&mut self.ws.order);
        order.clear();
        order.extend(0..n);
        if opts.shuffle {
            self.rng.shuffle(&mut order);
        }
        let in_len = self.in_len();
        let mut totals = LossTotals::default();
        let mut last_report = Instant::now();
        let team = self.team_size(local);
        let result = team::with_team(team, || {
            let mut result = Ok(());
            let mut tuner = team::Tuner::new(team > 1);
            for step in 0..steps {
                tuner.before_step();
                let began = Instant::now();
                let batch = &order[step * bs..((step + 1) * bs).min(n)];
                let idx = par.map_or(batch, |p| &batch[p.part(batch.len())]);
                let rows = Rows::Index(idx);
                let m = idx.len();
                // Split: the whole batch's denominator; shard: the mean of the ranks' means.
                let denom = match par {
                    Some(Parallel::Split { .. }) => Some(mean_denom(loss, y, batch, cols)),
                    Some(Parallel::Shard { ranks, .. }) => {
                        Some(mean_denom(loss, y, idx, cols) * ranks as f64)
                    }
                    None => None,
                };
                if m > 0 {
                    self.load(&x, rows, in_len);
                }
                // Small batches: start loading the next one while this one computes
                // (a large batch would only push the weights out of cache).
                if step + 1 < steps && bs * in_len <= PREFETCH_MAX_ELEMS {
                    let next = &order[(step + 1) * bs..((step + 2) * bs).min(n)];
                    let next = par.map_or(next, |p| &next[p.part(next.len())]);
                    x.prefetch(Rows::Index(next), in_len);
                }
                self.gather_target(y, rows, cols);
                if let Some(w) = weights {
                    self.ws.weights.clear();
                    self.ws.weights.extend(idx.iter().map(|&i| w[i]));
                }
                let key = self.rng.next_u64();
                if m > 0 {
                    self.run_layers(m, true, true, key);
                    if opts.diagnostics {
                        self.diag_activations(m);
                    }
                }
                let out = &self.ws.acts[self.ops.len()][..m * cols];
                let bt = batch_target(y, &self.ws.labels, &self.ws.targets);
                let bw = weights.map(|_| &self.ws.weights[..m]);
                let d_a = Some(&mut self.ws.d_a[..]);
                let t = match loss_grad_over(loss, out, m, cols, bt, bw, d_a, &mut self.ws.stats, denom) {
                    Ok(t) => t,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                // With a hook, every process learns of a non-finite loss after it.
                let finite = t.mean().is_finite();
                if !finite && reduce.is_none() {
                    result = Err(Error::non_finite(format!(
                        "training loss became {} at epoch {epoch}, step {} (of {steps}); \
                     try a lower learning rate or check the data",
                        t.mean(),
                        step + 1
                    )));
                    break;
                }
                // Checked above: these cannot fail.
                if let Some(lrs) = &opts.lrs {
                    let _ = opt.config.set_lr(lrs[step]);
                }
                if let Some(m) = &opts.momenta {
                    let _ = opt.config.set_momentum(m[step]);
                }
                let mut updated = Ok(());
                let mut diag = std::mem::take(&mut self.diag);
                if let Some(reduce) = reduce.as_mut() {
                    // The hook (and clipping) need every gradient before the first update.
                    if m > 0 {
                        self.backward_loaded(m, key, false, |_, _, _| {});
                    } else {
                        self.grads.fill(T::ZERO);
                    }
                    if let (false, Some(g)) = (finite, self.grads.first_mut()) {
                        *g = T::from_f64(f64::NAN);
                    }
                    updated = reduce(&mut self.grads);
                    if updated.is_ok() && self.grads.first().is_some_and(|g| !g.to_f64().is_finite()) {
                        updated = Err(Error::non_finite(format!(
                            "training loss or gradient became non-finite at epoch {epoch}, step {} (of \
                             {steps}) on {}; try a lower learning rate or check the data",
                            step + 1,
                            if finite { "another process" } else { "this process" }
                        )));
                    }
                }
                if let (Some(clip), true) = (opts.clip, updated.is_ok()) {
                    // Clipping needs every gradient before the first update.
                    if reduce.is_none() {
                        self.backward_loaded(m, key, false, |_, _, _| {});
                    }
                    updated = self.clip_all(clip).map(drop).map_err(|e| Error {
                        message: format!(
                            "{} at epoch {epoch}, step {} (of {steps}); try a lower learning rate or \
                             check the data",
                            e.message,
                            step + 1
                        ),
                        ..e
                    });
                    if updated.is_ok() {
                        updated = if diag.on() {
                            // The gradient norms before clipping (L2, as clipped).
                            let norms = Some(&self.clip_norms[..]);
                            diag.update(opt, &mut self.params, &self.grads, 0..usize::MAX, norms)
                        } else {
                            opt.step_part(&mut self.params, &self.grads, 0..usize::MAX)
                        };
                    }
                } else if reduce.is_some() {
                    if updated.is_ok() {
                        updated = if diag.on() {
                            diag.update(opt, &mut self.params, &self.grads, 0..usize::MAX, None)
                        } else {
                            opt.step_part(&mut self.params, &self.grads, 0..usize::MAX)
                        };
                    }
                } else {
                    // Each layer's update right after its gradients, while
                    // they are still in cache.
                    self.backward_loaded(m, key, false, |p, g, r| {
                        if updated.is_ok() {
                            updated = if diag.on() {
                                diag.update(opt, p, g, r, None)
                            } else {
                                opt.step_part(p, g, r)
                            };
                        }
                    });
                }
                self.diag = diag;
                if let Err(e) = updated {
                    result = Err(e);
                    break;
                }
                opt.finish_step();
                self.diag.end_step();
                tuner.after_step(began.elapsed());
                totals.add(&t);
                if opts.every_step || last_report.elapsed() >= self.report_every || step + 1 == steps {
                    last_report = Instant::now();
                    let done = step * bs + if par.is_some() { batch.len() } else { m };
                    let p = Progress { step: step + 1, steps, samples: done.min(n), totals };
                    match progress(&p) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            result
        });
        self.ws.order = order;
        self.cache = None;
        if opts.lrs.is_some() || opts.momenta.is_some() {
            opt.config = saved;
        }
        if opts.diagnostics {
            let d = self.diag_end();
            self.last_diagnostics = (d.steps > 0).then_some(d);
        }
        result.map(|_| totals)
    }

    /// Inference in batches of `batch_size` into `out` (`n x` output
    /// elements), in evaluation mode; changes no state.
    pub fn predict_into(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        batch_size: usize,
        out: &mut [T],
    ) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        self.check_input(x, n, shape, "X")?;
        let bs = batch_size.min(n);
        self.plan(shape, bs, false)?;
        let (in_len, out_len) = (self.in_len(), self.out_len());
        if out.len() != n * out_len {
            return Err(Error::shape(format!(
                "output buffer has {} elements, expected {}",
                out.len(),
                n * out_len
            )));
        }
        self.cache = None;
        for (b, chunk) in out.chunks_mut(bs * out_len).enumerate() {
            let m = chunk.len() / out_len;
            self.load(x, Rows::Range(b * bs, m), in_len);
            self.run_layers(m, false, false, 0);
            chunk.copy_from_slice(&self.ws.acts[self.ops.len()][..m * out_len]);
        }
        Ok(())
    }

    /// Loss and accuracy totals over a dataset, in batches, in evaluation
    /// mode (sample weights, when given, weigh the loss); changes no state.
    pub fn evaluate(&mut self, data: Data<'_, T>, loss: &LossSpec, batch_size: usize) -> Result<LossTotals> {
        let Data { x, n, shape, y, weights } = data;
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        self.check_input(&x, n, shape, "X")?;
        let cols = self.check_target(loss, &data)?;
        let bs = batch_size.min(n);
        self.plan(shape, bs, false)?;
        self.cache = None;
        let in_len = self.in_len();
        let mut totals = LossTotals::default();
        let mut start = 0;
        while start < n {
            let m = bs.min(n - start);
            let rows = Rows::Range(start, m);
            self.load(&x, rows, in_len);
            self.gather_target(y, rows, cols);
            self.run_layers(m, false, false, 0);
            let out = &self.ws.acts[self.ops.len()][..m * cols];
            let bt = batch_target(y, &self.ws.labels, &self.ws.targets);
            let bw = weights.map(|w| &w[start..start + m]);
            let t = loss_grad(loss, out, m, cols, bt, bw, None, &mut self.ws.stats)?;
            totals.add(&t);
            start += m;
        }
        Ok(totals)
    }
}
