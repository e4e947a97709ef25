//! The fused training epoch, evaluation and inference.

use super::parallel::{GradHook, Parallel};
use super::workspace::{Grad, Pass};
use super::Sequential;
use crate::clip::ClipNorm;
use crate::data::{Features, Rows};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::team;
use crate::layers::numel;
use crate::loss::{check_sample_weights, mean_denom, validate_target, Loss, LossSpec, LossTotals, Target};
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

    /// Batches of `batch_size` in `n` samples.
    pub fn steps(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size.max(1))
    }

    /// Steps an epoch over `n` samples takes (a shard epoch may take fewer).
    pub fn steps_for(&self, n: usize) -> usize {
        let steps = self.steps(n);
        self.parallel.map_or(steps, |p| p.steps(steps))
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

/// An epoch's fixed inputs, shared by its steps.
struct Run<'a, 'h, T> {
    data: &'a Data<'a, T>,
    opts: &'a EpochOptions,
    /// The epoch's sample order (the same on every process).
    order: &'a [usize],
    /// A team runs the steps (see [`team::Tuner`]).
    tune: bool,
    reduce: Option<GradHook<'h, T>>,
}

/// One step's samples: the batch, this process's part of it, and the next
/// step's part (to prefetch).
#[derive(Clone, Copy)]
struct StepRows<'a> {
    batch: &'a [usize],
    idx: &'a [usize],
    next: Option<&'a [usize]>,
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
        reduce: Option<GradHook<'_, T>>,
    ) -> Result<LossTotals> {
        let local = self.check_epoch(&data, opt, opts, reduce.is_some())?;
        opt.prepare()?;
        if opts.diagnostics {
            self.diag_begin()?;
        } else {
            self.diag.stop();
        }
        let mut order = std::mem::take(&mut self.ws.order);
        order.clear();
        order.extend(0..data.n);
        if opts.shuffle {
            self.rng.shuffle(&mut order);
        }
        let saved = opt.config.clone();
        let team = self.team_size(local);
        let mut run = Run { data: &data, opts, order: &order, tune: team > 1, reduce };
        let result = team::with_team(team, || self.run_steps(&mut run, opt, progress));
        self.ws.order = order;
        self.cache = None;
        if opts.lrs.is_some() || opts.momenta.is_some() {
            opt.config = saved;
        }
        if opts.diagnostics {
            let d = self.diag_end();
            self.last_diagnostics = (d.steps > 0).then_some(d);
        }
        result
    }

    /// Everything that could refuse an epoch, checked before its first step:
    /// the options, the data, the workspace for its batches and each batch
    /// size the layers must accept (every rank's part of them in
    /// data-parallel training, which needs a gradient hook: `hooked`), the
    /// per-step schedules. Returns the largest batch this process computes.
    fn check_epoch(
        &mut self,
        data: &Data<'_, T>,
        opt: &Optimizer<T>,
        opts: &EpochOptions,
        hooked: bool,
    ) -> Result<usize> {
        let Data { x, n, shape, weights, .. } = *data;
        if opts.batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        if opt.ranges().last().is_some_and(|r| r.end > self.params.len()) {
            return Err(Error::value("the optimizer was built for a different model"));
        }
        if opts.check {
            self.validate_data(*data, &opts.loss)?;
        } else if weights.is_some_and(|w| w.len() != n) {
            return Err(Error::shape(format!("sample_weight must have {n} entries")));
        } else if n == 0 || x.len() != n * numel(shape) {
            return Err(Error::shape(format!(
                "X has {} elements, expected {n} samples of shape {shape:?}",
                x.len()
            )));
        }
        let par = opts.parallel;
        if let Some(p) = par {
            p.check()?;
            if !hooked {
                return Err(Error::value(
                    "parallel training needs a gradient hook to sum the ranks' gradients",
                ));
            }
        }
        self.plan(shape, 1, false)?;
        let bs = opts.batch_size.min(n);
        // This process's largest part of a batch, and every part's size.
        let parts = |m: usize| par.map_or_else(|| vec![m], |p| p.part_sizes(m));
        let local = parts(bs).into_iter().max().unwrap_or(bs).max(1);
        self.plan(shape, local, true)?;
        for m in parts(bs).into_iter().filter(|&m| m > 0) {
            self.check_batch(m, true)?;
        }
        if n % bs != 0 {
            parts(n % bs)
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
        let steps = opts.steps_for(n);
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
        let mut probe = opt.config.clone();
        for &lr in opts.lrs.iter().flatten() {
            probe.set_lr(lr)?;
        }
        for &m in opts.momenta.iter().flatten() {
            probe.set_momentum(m)?;
        }
        Ok(local)
    }

    /// The epoch's steps, with progress reports; stops at the first error.
    fn run_steps(
        &mut self,
        run: &mut Run<'_, '_, T>,
        opt: &mut Optimizer<T>,
        progress: &mut dyn FnMut(&Progress) -> Result<Flow>,
    ) -> Result<LossTotals> {
        let (n, opts, par) = (run.data.n, run.opts, run.opts.parallel);
        let bs = opts.batch_size.min(n);
        let steps = opts.steps_for(n);
        let mut totals = LossTotals::default();
        let mut last_report = Instant::now();
        let mut tuner = team::Tuner::new(run.tune);
        // This process's part of a batch (all of it in one process).
        let part = |batch: &'_ [usize]| -> std::ops::Range<usize> {
            par.map_or(0..batch.len(), |p| p.part(batch.len()))
        };
        for step in 0..steps {
            tuner.before_step();
            let began = Instant::now();
            let batch = &run.order[step * bs..((step + 1) * bs).min(n)];
            let next = run.order.get((step + 1) * bs..((step + 2) * bs).min(n)).filter(|_| step + 1 < steps);
            let rows = StepRows { batch, idx: &batch[part(batch)], next: next.map(|b| &b[part(b)]) };
            let t = self.train_step(run, opt, rows, step)?;
            tuner.after_step(began.elapsed());
            totals.add(&t);
            if opts.every_step || last_report.elapsed() >= self.report_every || step + 1 == steps {
                last_report = Instant::now();
                let done = step * bs + if par.is_some() { batch.len() } else { rows.idx.len() };
                if progress(&Progress { step: step + 1, steps, samples: done.min(n), totals })? == Flow::Stop
                {
                    break;
                }
            }
        }
        Ok(totals)
    }

    /// One training step on this process's samples `rows.idx` of the batch
    /// `rows.batch`: gather, forward, loss, backward, the gradient hook and
    /// the update. Returns the step's loss totals (this process's).
    fn train_step(
        &mut self,
        run: &mut Run<'_, '_, T>,
        opt: &mut Optimizer<T>,
        rows: StepRows<'_>,
        step: usize,
    ) -> Result<LossTotals> {
        let (data, opts) = (run.data, run.opts);
        let m = rows.idx.len();
        // Data-parallel parts divide by the whole batch's denominator (split)
        // or make the sum over ranks the mean of their means (shard).
        let grad = match opts.parallel {
            Some(Parallel::Split { .. }) => {
                Grad::Over(mean_denom(&opts.loss, data.y, rows.batch, self.out_len()))
            }
            Some(Parallel::Shard { ranks, .. }) => {
                Grad::Over(mean_denom(&opts.loss, data.y, rows.idx, self.out_len()) * ranks as f64)
            }
            None => Grad::Mean,
        };
        // A split part draws the masks of its place in the whole batch.
        let first = match opts.parallel {
            Some(p @ Parallel::Split { .. }) => p.part(rows.batch.len()).start,
            _ => 0,
        };
        let pass = Pass { first, ..Pass::train(self.rng.next_u64()) };
        let t = if m > 0 {
            self.load_batch(data, Rows::Index(rows.idx));
            // Small batches: start loading the next one while this one computes
            // (a large batch would only push the weights out of cache).
            let in_len = self.in_len();
            if let Some(next) = rows.next.filter(|_| opts.batch_size * in_len <= PREFETCH_MAX_ELEMS) {
                data.x.prefetch(Rows::Index(next), in_len);
            }
            self.forward_loss(m, pass, &opts.loss, data.y, data.weights.is_some(), grad)?
        } else {
            LossTotals::default() // a rank without samples in a small last batch
        };
        let at = |e: Error| Error {
            message: format!(
                "{} at epoch {}, step {} (of {}); try a lower learning rate or check the data",
                e.message,
                opts.epoch,
                step + 1,
                opts.steps_for(data.n)
            ),
            ..e
        };
        // With a hook, every process learns of a non-finite loss after it.
        let finite = t.mean().is_finite();
        if !finite && run.reduce.is_none() {
            return Err(at(Error::non_finite(format!("training loss became {}", t.mean()))));
        }
        // Checked before the first step: these cannot fail.
        if let Some(lrs) = &opts.lrs {
            let _ = opt.config.set_lr(lrs[step]);
        }
        if let Some(m) = &opts.momenta {
            let _ = opt.config.set_momentum(m[step]);
        }
        match run.reduce.as_mut() {
            Some(reduce) => {
                self.backward_reduce(m, pass, finite, reduce)?;
                if self.grads.first().is_some_and(|g| !g.to_f64().is_finite()) {
                    let who = if finite { "another process" } else { "this process" };
                    let e =
                        Error::non_finite(format!("training loss or gradient became non-finite on {who}"));
                    return Err(at(e));
                }
                self.update_all(opt, opts.clip).map_err(at)?;
            }
            None => self.backward_update(opt, opts.clip, m, pass).map_err(at)?,
        }
        opt.finish_step();
        self.diag.end_step();
        Ok(t)
    }

    /// Data-parallel: the whole backward pass (zero gradients for a rank
    /// without samples), then the hook on the flat gradient buffer. A
    /// non-finite loss (`finite` false) poisons the first gradient element,
    /// so every process sees it after the hook and stops at this step.
    fn backward_reduce(
        &mut self,
        m: usize,
        pass: Pass,
        finite: bool,
        reduce: &mut dyn FnMut(&mut [T]) -> Result<()>,
    ) -> Result<()> {
        if m > 0 {
            self.backward_loaded(m, pass, false, |_, _, _| {});
        } else {
            self.grads.fill(T::ZERO);
        }
        if let (false, Some(g)) = (finite, self.grads.first_mut()) {
            *g = T::from_f64(f64::NAN);
        }
        reduce(&mut self.grads)
    }

    /// Backpropagates the loaded batch's loss gradient and updates the
    /// parameters: each layer's update right after its gradients, while they
    /// are still in cache, or (clipping) every gradient first, then the
    /// clipped update.
    fn backward_update(
        &mut self,
        opt: &mut Optimizer<T>,
        clip: Option<ClipNorm>,
        m: usize,
        pass: Pass,
    ) -> Result<()> {
        if clip.is_some() {
            self.backward_loaded(m, pass, false, |_, _, _| {});
            return self.update_all(opt, clip);
        }
        let mut diag = std::mem::take(&mut self.diag);
        let mut updated = Ok(());
        self.backward_loaded(m, pass, false, |p, g, r| {
            if updated.is_ok() {
                updated = if diag.on() { diag.update(opt, p, g, r, None) } else { opt.step_part(p, g, r) };
            }
        });
        self.diag = diag;
        updated
    }

    /// With every gradient computed: clips them (when asked) and updates
    /// all parameters.
    fn update_all(&mut self, opt: &mut Optimizer<T>, clip: Option<ClipNorm>) -> Result<()> {
        let mut norms = None;
        if let Some(clip) = clip {
            self.clip_all(clip)?;
            // The gradient norms before clipping (L2, as clipped).
            norms = Some(&self.clip_norms[..]);
        }
        if self.diag.on() {
            let mut diag = std::mem::take(&mut self.diag);
            let updated = diag.update(opt, &mut self.params, &self.grads, 0..usize::MAX, norms);
            self.diag = diag;
            updated
        } else {
            opt.step_part(&mut self.params, &self.grads, 0..usize::MAX)
        }
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
            self.run_layers(m, Pass::EVAL);
            chunk.copy_from_slice(&self.ws.acts[self.ops.len()][..m * out_len]);
        }
        Ok(())
    }

    /// Loss and accuracy totals over a dataset, in batches, in evaluation
    /// mode (sample weights, when given, weigh the loss); changes no state.
    pub fn evaluate(&mut self, data: Data<'_, T>, loss: &LossSpec, batch_size: usize) -> Result<LossTotals> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        self.validate_data(data, loss)?;
        let n = data.n;
        let bs = batch_size.min(n);
        self.plan(data.shape, bs, false)?;
        self.cache = None;
        let mut totals = LossTotals::default();
        let mut start = 0;
        while start < n {
            let m = bs.min(n - start);
            self.load_batch(&data, Rows::Range(start, m));
            totals.add(&self.forward_loss(m, Pass::EVAL, loss, data.y, data.weights.is_some(), Grad::No)?);
            start += m;
        }
        Ok(totals)
    }
}
