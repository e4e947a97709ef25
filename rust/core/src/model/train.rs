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
/// A graph with several inputs or outputs takes the first input and target
/// in `x`, `shape` and `y`, the others in `more_x` and `more_y`.
#[derive(Clone, Copy, Debug)]
pub struct Data<'a, T> {
    pub x: Features<'a>,
    pub n: usize,
    pub shape: &'a [usize],
    pub y: Target<'a, T>,
    pub weights: Option<&'a [T]>,
    /// Inputs after the first: features and per-sample shape.
    pub more_x: &'a [(Features<'a>, &'a [usize])],
    /// Targets of the outputs after the first.
    pub more_y: &'a [Target<'a, T>],
}

impl<'a, T: Copy> Data<'a, T> {
    /// `n` samples without sample weights.
    pub fn new(x: Features<'a>, n: usize, shape: &'a [usize], y: Target<'a, T>) -> Self {
        Data { x, n, shape, y, weights: None, more_x: &[], more_y: &[] }
    }

    /// Input `i`: features and per-sample shape.
    pub fn input(&self, i: usize) -> (Features<'a>, &'a [usize]) {
        if i == 0 {
            (self.x, self.shape)
        } else {
            self.more_x[i - 1]
        }
    }

    /// The targets of output `k`.
    pub fn target(&self, k: usize) -> Target<'a, T> {
        if k == 0 {
            self.y
        } else {
            self.more_y[k - 1]
        }
    }

    /// Every input's features and per-sample shape.
    pub fn inputs(&self) -> Vec<(Features<'a>, &'a [usize])> {
        (0..=self.more_x.len()).map(|i| self.input(i)).collect()
    }

    /// Every input's per-sample shape.
    pub fn shapes(&self) -> Vec<&'a [usize]> {
        (0..=self.more_x.len()).map(|i| self.input(i).1).collect()
    }
}

/// The loss of each output and its weight in the total (Keras's
/// `loss_weights`): `L = sum_k w_k L_k`.
#[derive(Clone, Debug, PartialEq)]
pub struct Losses {
    pub specs: Vec<LossSpec>,
    /// One per loss; empty means all 1.
    pub weights: Vec<f64>,
}

impl Losses {
    /// A loss name or JSON configuration, or a JSON list of them (one per
    /// output), with per-output weights (empty: all 1).
    pub fn from_json(text: &str, weights: Vec<f64>) -> Result<Losses> {
        let specs = if text.trim_start().starts_with('[') {
            let items: Vec<serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| Error::value(format!("invalid list of losses: {e}")))?;
            items
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => LossSpec::from_json(s),
                    other => LossSpec::from_json(&other.to_string()),
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![LossSpec::from_json(text)?]
        };
        Ok(Losses { specs, weights })
    }

    /// Output `k`'s loss (the last one given for outputs beyond it).
    pub fn spec(&self, k: usize) -> &LossSpec {
        &self.specs[k.min(self.specs.len() - 1)]
    }

    /// Output `k`'s weight.
    pub fn weight(&self, k: usize) -> f64 {
        self.weights.get(k).copied().unwrap_or(1.0)
    }

    /// Checks the losses against a model of `outputs` outputs.
    pub fn check(&self, outputs: usize) -> Result<()> {
        if self.specs.len() != outputs {
            return Err(Error::value(format!(
                "the model has {outputs} outputs, got {} losses",
                self.specs.len()
            )));
        }
        if !self.weights.is_empty() && self.weights.len() != outputs {
            return Err(Error::value(format!(
                "the model has {outputs} outputs, got {} loss weights",
                self.weights.len()
            )));
        }
        if let Some(w) = self.weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(Error::value(format!("loss weights must be finite and >= 0, got {w}")));
        }
        Ok(())
    }
}

impl From<LossSpec> for Losses {
    fn from(s: LossSpec) -> Self {
        Losses { specs: vec![s], weights: Vec::new() }
    }
}

impl From<Loss> for Losses {
    fn from(l: Loss) -> Self {
        LossSpec::from(l).into()
    }
}

/// Loss totals per output, and the weighted total.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub outputs: Vec<LossTotals>,
    pub weights: Vec<f64>,
}

impl Totals {
    /// Zero totals for `loss`'s outputs (keeps the allocation).
    pub fn reset(&mut self, loss: &Losses) {
        let k = loss.specs.len();
        self.outputs.clear();
        self.outputs.resize(k, LossTotals::default());
        self.weights.clear();
        self.weights.extend((0..k).map(|i| loss.weight(i)));
    }

    /// Adds another batch's totals.
    pub fn add(&mut self, o: &Totals) {
        if self.outputs.len() != o.outputs.len() {
            self.outputs.resize(o.outputs.len(), LossTotals::default());
            self.weights = o.weights.clone();
        }
        for (a, b) in self.outputs.iter_mut().zip(&o.outputs) {
            a.add(b);
        }
    }

    /// The weighted total of the outputs' mean losses (the mean loss of
    /// a one-output model).
    pub fn mean(&self) -> f64 {
        match self.outputs.as_slice() {
            [one] if self.weights.first().is_none_or(|&w| w == 1.0) => one.mean(),
            outs => outs.iter().zip(&self.weights).map(|(t, w)| w * t.mean()).sum(),
        }
    }

    /// The first output's accuracy.
    pub fn accuracy(&self) -> f64 {
        self.outputs.first().map_or(0.0, LossTotals::accuracy)
    }
}

/// How one training epoch runs.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochOptions {
    /// The loss of each output, with its weight.
    pub loss: Losses,
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
    pub fn new(loss: impl Into<Losses>, batch_size: usize) -> Self {
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
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// Samples seen in this epoch.
    pub samples: usize,
    /// Running totals (loss, accuracy) over this epoch so far.
    pub totals: Totals,
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
    /// Each output's loss denominator in data-parallel steps (see
    /// [`Grad::Over`]), reused.
    denoms: Vec<f64>,
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
    /// model's outputs for `loss`.
    fn check_target(&mut self, loss: &Losses, data: &Data<'_, T>) -> Result<()> {
        loss.check(self.outs.len())?;
        if data.more_y.len() + 1 != self.outs.len() {
            return Err(Error::value(format!(
                "the model has {} outputs, got {} targets",
                self.outs.len(),
                data.more_y.len() + 1
            )));
        }
        for k in 0..self.outs.len() {
            let out = self.out_shape(k).to_vec();
            let cols = numel(&out);
            let spec = loss.spec(k);
            let at = |e: Error| {
                if self.outs.len() == 1 {
                    e
                } else {
                    let name = &self.graph.layers
                        [self.graph.nodes[self.graph.outputs[k] - self.num_inputs()].layer]
                        .name;
                    Error { message: format!("output {name:?}: {}", e.message), ..e }
                }
            };
            if spec.kind == Loss::CrossEntropy && out.len() != 1 {
                return Err(at(Error::shape(format!(
                    "cross_entropy expects a model output of shape (N, C), got per-sample shape {out:?}"
                ))));
            }
            spec.check_cols(cols).map_err(at)?;
            validate_target(spec.kind, data.target(k), data.n, cols).map_err(at)?;
        }
        if let Some(w) = data.weights {
            check_sample_weights(w, data.n)?;
        }
        Ok(())
    }

    /// Checks features, targets and sample weights against the model and
    /// `loss` without computing anything.
    pub fn validate_data(&mut self, data: Data<'_, T>, loss: &Losses) -> Result<()> {
        self.check_inputs(&data.inputs(), data.n, "X")?;
        self.check_target(loss, &data)
    }

    /// The team size for training steps of `bs` samples: the thread count
    /// when a step's work is in the range where a team pays.
    fn team_size(&self, bs: usize) -> usize {
        let per_sample: usize = self
            .ops
            .iter()
            .skip(self.prefix)
            .map(|op| op.layer().map_or(0, |l| l.flops(&self.ws.shapes[op.inputs[0]])))
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
    ) -> Result<Totals> {
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
    ) -> Result<Totals> {
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
        let mut run = Run { data: &data, opts, order: &order, tune: team > 1, reduce, denoms: Vec::new() };
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
        let (n, weights) = (data.n, data.weights);
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
        } else if let Some((x, shape)) =
            data.inputs().into_iter().find(|(x, shape)| n == 0 || x.len() != n * numel(shape))
        {
            return Err(Error::shape(format!(
                "X has {} elements, expected {n} samples of shape {shape:?}",
                x.len()
            )));
        } else {
            opts.loss.check(self.outs.len())?;
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
        let shapes = data.shapes();
        self.plan(&shapes, 1, false)?;
        let bs = opts.batch_size.min(n);
        // This process's largest part of a batch, and every part's size.
        let parts = |m: usize| par.map_or_else(|| vec![m], |p| p.part_sizes(m));
        let local = parts(bs).into_iter().max().unwrap_or(bs).max(1);
        self.plan(&shapes, local, true)?;
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
    ) -> Result<Totals> {
        let (n, opts, par) = (run.data.n, run.opts, run.opts.parallel);
        let bs = opts.batch_size.min(n);
        let steps = opts.steps_for(n);
        let mut totals = Totals::default();
        totals.reset(&opts.loss);
        let mut step_totals = totals.clone();
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
            self.train_step(run, opt, rows, step, &mut step_totals)?;
            tuner.after_step(began.elapsed());
            totals.add(&step_totals);
            if opts.every_step || last_report.elapsed() >= self.report_every || step + 1 == steps {
                last_report = Instant::now();
                let done = step * bs + if par.is_some() { batch.len() } else { rows.idx.len() };
                let report = Progress { step: step + 1, steps, samples: done.min(n), totals: totals.clone() };
                if progress(&report)? == Flow::Stop {
                    break;
                }
            }
        }
        Ok(totals)
    }

    /// One training step on this process's samples `rows.idx` of the batch
    /// `rows.batch`: gather, forward, loss, backward, the gradient hook and
    /// the update; the step's loss totals (this process's) into `t`.
    fn train_step(
        &mut self,
        run: &mut Run<'_, '_, T>,
        opt: &mut Optimizer<T>,
        rows: StepRows<'_>,
        step: usize,
        t: &mut Totals,
    ) -> Result<()> {
        let (data, opts) = (run.data, run.opts);
        let m = rows.idx.len();
        // Data-parallel parts divide each output's loss by the whole batch's
        // denominator (split) or make the sum over ranks the mean of their
        // means (shard).
        run.denoms.clear();
        for k in 0..self.outs.len() {
            let (spec, y, cols) = (opts.loss.spec(k), data.target(k), self.out_len(k));
            run.denoms.extend(match opts.parallel {
                Some(Parallel::Split { .. }) => Some(mean_denom(spec, y, rows.batch, cols)),
                Some(Parallel::Shard { ranks, .. }) => {
                    Some(mean_denom(spec, y, rows.idx, cols) * ranks as f64)
                }
                None => None,
            });
        }
        let grad = if opts.parallel.is_some() { Grad::Over(&run.denoms) } else { Grad::Mean };
        // A split part draws the masks of its place in the whole batch.
        let first = match opts.parallel {
            Some(p @ Parallel::Split { .. }) => p.part(rows.batch.len()).start,
            _ => 0,
        };
        let pass = Pass { first, ..Pass::train(self.rng.next_u64()) };
        if m > 0 {
            self.load_batch(data, Rows::Index(rows.idx));
            // Small batches: start loading the next one while this one computes
            // (a large batch would only push the weights out of cache).
            for i in 0..self.num_inputs() {
                let in_len = self.in_len(i);
                if let Some(next) = rows.next.filter(|_| opts.batch_size * in_len <= PREFETCH_MAX_ELEMS) {
                    data.input(i).0.prefetch(Rows::Index(next), in_len);
                }
            }
            self.forward_loss(m, pass, &opts.loss, data, data.weights.is_some(), grad, t)?;
        } else {
            t.reset(&opts.loss); // a rank without samples in a small last batch
        }
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
        Ok(())
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
    /// elements), in evaluation mode; changes no state. One input, one output.
    pub fn predict_into(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        batch_size: usize,
        out: &mut [T],
    ) -> Result<()> {
        self.predict_outputs(&[(*x, shape)], n, batch_size, &mut [out])
    }

    /// Inference on every input (features and per-sample shape) into one
    /// buffer per output (`n x` its elements), in batches of `batch_size`,
    /// in evaluation mode; changes no state.
    pub fn predict_outputs(
        &mut self,
        inputs: &[(Features<'_>, &[usize])],
        n: usize,
        batch_size: usize,
        outs: &mut [&mut [T]],
    ) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        let shapes = self.check_inputs(inputs, n, "X")?;
        let bs = batch_size.min(n);
        self.plan(&shapes, bs, false)?;
        if outs.len() != self.outs.len() {
            return Err(Error::value(format!(
                "{} output buffers for a model with {} outputs",
                outs.len(),
                self.outs.len()
            )));
        }
        for (k, out) in outs.iter().enumerate() {
            let len = self.out_len(k);
            if out.len() != n * len {
                return Err(Error::shape(format!(
                    "output buffer has {} elements, expected {}",
                    out.len(),
                    n * len
                )));
            }
        }
        self.cache = None;
        let mut start = 0;
        while start < n {
            let m = bs.min(n - start);
            for (i, (x, _)) in inputs.iter().enumerate() {
                self.load(i, x, Rows::Range(start, m));
            }
            self.run_layers(m, Pass::EVAL);
            for (k, out) in outs.iter_mut().enumerate() {
                let len = self.out_len(k);
                let v = self.outs[k];
                out[start * len..(start + m) * len].copy_from_slice(&self.ws.acts[v][..m * len]);
            }
            start += m;
        }
        Ok(())
    }

    /// Loss and accuracy totals over a dataset, in batches, in evaluation
    /// mode (sample weights, when given, weigh the loss); changes no state.
    pub fn evaluate(&mut self, data: Data<'_, T>, loss: &Losses, batch_size: usize) -> Result<Totals> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        self.validate_data(data, loss)?;
        let n = data.n;
        let bs = batch_size.min(n);
        self.plan(&data.shapes(), bs, false)?;
        self.cache = None;
        let mut totals = Totals::default();
        totals.reset(loss);
        let mut batch = totals.clone();
        let mut start = 0;
        while start < n {
            let m = bs.min(n - start);
            self.load_batch(&data, Rows::Range(start, m));
            self.forward_loss(m, Pass::EVAL, loss, &data, data.weights.is_some(), Grad::No, &mut batch)?;
            totals.add(&batch);
            start += m;
        }
        Ok(totals)
    }
}
