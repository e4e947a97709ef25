//! `Sequential`: a stack of layers with one flat parameter buffer, one flat
//! gradient buffer and activation buffers reused from batch to batch.

use crate::data::{Features, Rows};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::{numel, Ctx, Layer, LayerSpec};
use crate::loss::{loss_grad, validate_target, Loss, LossTotals, RowStat, Target};
use crate::optim::Optimizer;
use crate::rng::{mix64, Rng};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Largest training step (about `6 x parameters x batch` FLOPs) that runs
/// on a spinning [`crate::kernels::team`] rather than the rayon pool: the
/// three benchmark MLPs (20 MFLOP, 0.5 and 2.9 GFLOP per step). Waking a
/// sleeping rayon worker around each product, pass and update costs more
/// than a team's hand-over, most of all for short steps.
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

/// A named parameter: `"<layer index>.<weight|bias>"` as in `torch.nn.Sequential`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Where it lives in the flat parameter and gradient buffers.
    pub range: Range<usize>,
}

struct Op<T: Float> {
    layer: Box<dyn Layer<T>>,
    /// Index of the spec this op came from (for messages).
    spec: usize,
    prange: Range<usize>,
}

/// Buffers sized for one input shape and a batch capacity; reused until
/// either grows.
struct Workspace<T> {
    /// Per-sample shape at each op boundary: `shapes[0]` is the input.
    shapes: Vec<Vec<usize>>,
    cap: usize,
    acts: Vec<Vec<T>>,
    d_a: Vec<T>,
    d_b: Vec<T>,
    stats: Vec<RowStat>,
    labels: Vec<i64>,
    targets: Vec<T>,
    order: Vec<usize>,
}

impl<T> Default for Workspace<T> {
    fn default() -> Self {
        Workspace {
            shapes: Vec::new(),
            cap: 0,
            acts: Vec::new(),
            d_a: Vec::new(),
            d_b: Vec::new(),
            stats: Vec::new(),
            labels: Vec::new(),
            targets: Vec::new(),
            order: Vec::new(),
        }
    }
}

/// What the last training-mode forward pass left for `backward`.
#[derive(Clone, Copy, Debug)]
struct Cache {
    n: usize,
    key: u64,
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

/// One parameter's result of [`Sequential::gradcheck`].
#[derive(Clone, Debug)]
pub struct GradCheck {
    pub name: String,
    /// Worst `|analytic - numeric| / max(|analytic|, |numeric|, f)` over the
    /// parameter's elements, where `f` is `1e-3` times the parameter's
    /// largest gradient element (at least `1e-7`), so elements far below the
    /// gradient's scale do not report rounding noise as error.
    pub max_rel_error: f64,
    /// Worst `|analytic - numeric|`.
    pub max_abs_error: f64,
}

/// A feed-forward stack of layers, like `torch.nn.Sequential`.
pub struct Sequential<T: Float> {
    specs: Vec<LayerSpec>,
    ops: Vec<Op<T>>,
    params: Vec<T>,
    grads: Vec<T>,
    entries: Vec<ParamEntry>,
    rng: Rng,
    ws: Workspace<T>,
    cache: Option<Cache>,
    /// The leading ops that only convert the input ([`input_prefix`]): the
    /// gather applies them, and the forward pass starts after them.
    prefix: usize,
    /// The prefix's `Rescaling` (scale, offset), if it has one.
    affine: Option<(T, T)>,
    /// How often `train_epoch` reports progress.
    pub report_every: Duration,
}

/// How many leading ops only reshape or rescale the input, elementwise and
/// without parameters: any `Flatten`s and at most one `Rescaling` (two would
/// round twice, which one fused pass would not), with that `Rescaling`'s
/// scale and offset. Their forward pass is fused into the gather of each
/// batch, which saves one or two passes over it; nothing is lost, since no
/// gradient is computed below the first layer with parameters.
fn input_prefix(specs: &[LayerSpec], ops: &[Op<impl Float>]) -> (usize, Option<(f64, f64)>) {
    let mut affine = None;
    let mut count = 0;
    for op in ops {
        match specs[op.spec] {
            LayerSpec::Flatten => {}
            LayerSpec::Rescaling { scale, offset } if affine.is_none() => affine = Some((scale, offset)),
            _ => break,
        }
        count += 1;
    }
    (count, affine)
}

impl<T: Float> Sequential<T> {
    /// Builds and initialises the model; `seed` fixes weights, shuffling and dropout.
    pub fn new(specs: Vec<LayerSpec>, seed: u64) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::value("Sequential needs at least one layer"));
        }
        check_chain(&specs)?;
        let mut ops: Vec<Op<T>> = Vec::new();
        let mut entries = Vec::new();
        let mut total = 0usize;
        let mut i = 0;
        while i < specs.len() {
            let mut layer = specs[i].build::<T>()?;
            let start = total;
            for d in layer.params() {
                let len = d.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(too_big)?;
                let end = total.checked_add(len).ok_or_else(too_big)?;
                entries.push(ParamEntry {
                    name: format!("{i}.{}", d.name),
                    shape: d.shape,
                    range: total..end,
                });
                total = end;
            }
            let spec = i;
            i += 1;
            // Fold a following activation into the layer when it supports it.
            if let Some(act) = specs.get(i).and_then(LayerSpec::activation) {
                if layer.fuse_activation(act) {
                    i += 1;
                }
            }
            ops.push(Op { layer, spec, prange: start..total });
        }
        let mut rng = Rng::new(seed);
        let mut params = zeros::<T>(total)?;
        let grads = zeros::<T>(total)?;
        for op in &ops {
            op.layer.init_params(&mut params[op.prange.clone()], &mut rng);
        }
        let (prefix, affine) = input_prefix(&specs, &ops);
        let affine = affine.map(|(s, o)| (T::from_f64(s), T::from_f64(o)));
        Ok(Sequential {
            specs,
            ops,
            params,
            grads,
            entries,
            rng,
            ws: Workspace::default(),
            cache: None,
            prefix,
            affine,
            report_every: Duration::from_millis(100),
        })
    }

    /// The layer specifications, as given.
    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    /// Named parameters in `state_dict` order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of parameter elements.
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// The flat parameter buffer.
    pub fn params(&self) -> &[T] {
        &self.params
    }

    /// The flat gradient buffer.
    pub fn grads(&self) -> &[T] {
        &self.grads
    }

    /// Sets the gradients to zero.
    pub fn zero_grad(&mut self) {
        self.grads.fill(T::ZERO);
    }

    /// The random generator's state (weights init, shuffling, dropout).
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    /// Restores a state from [`Sequential::rng_state`].
    pub fn set_rng_state(&mut self, s: [u64; 4]) {
        self.rng = Rng::from_state(s);
    }

    /// Replaces parameters by name, all or nothing: every entry must name a
    /// parameter, have its element count and be finite, and every parameter
    /// must be given, or nothing changes.
    pub fn load_params(&mut self, values: &[(String, Vec<usize>, Vec<T>)]) -> Result<()> {
        let mut seen = vec![false; self.entries.len()];
        for (name, shape, v) in values {
            let Some(i) = self.entries.iter().position(|e| &e.name == name) else {
                let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
                return Err(Error::value(format!(
                    "unexpected key {name:?} in state_dict; expected keys {names:?}"
                )));
            };
            let e = &self.entries[i];
            if *shape != e.shape || v.len() != e.range.len() {
                return Err(Error::shape(format!(
                    "state_dict entry {name:?} has shape {shape:?}, expected {:?}",
                    e.shape
                )));
            }
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::non_finite(format!(
                    "state_dict entry {name:?} contains NaN or inf (flat index {j})"
                )));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::value(format!("state_dict entry {name:?} given twice")));
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::value(format!("missing key {:?} in state_dict", self.entries[i].name)));
        }
        for (name, _, v) in values {
            if let Some(e) = self.entries.iter().find(|e| &e.name == name) {
                self.params[e.range.clone()].copy_from_slice(v);
            }
        }
        Ok(())
    }

    /// Per-sample output shape of every spec (layer) for a per-sample input shape.
    pub fn layer_shapes(&self, input: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut shape = input.to_vec();
        let mut out = Vec::with_capacity(self.specs.len());
        for (i, s) in self.specs.iter().enumerate() {
            shape = s
                .build::<T>()?
                .output_shape(&shape)
                .map_err(|e| Error::shape(format!("layer {i} ({}): {}", s.display_name(), e.message)))?;
            out.push(shape.clone());
        }
        Ok(out)
    }

    /// Per-sample output shape for a per-sample input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(self.layer_shapes(input)?.pop().unwrap_or_default())
    }

    /// Sizes the workspace for `n` samples of per-sample shape `input`.
    fn plan(&mut self, input: &[usize], n: usize) -> Result<()> {
        let ws = &mut self.ws;
        let same = ws.shapes.first().is_some_and(|s| s == input);
        if !same {
            let mut shapes = vec![input.to_vec()];
            for op in &self.ops {
                let next = op
                    .layer
                    .output_shape(shapes.last().map(|v| v.as_slice()).unwrap_or(&[]))
                    .map_err(|e| {
                        Error::shape(format!(
                            "layer {} ({}): {}",
                            op.spec,
                            self.specs[op.spec].display_name(),
                            e.message
                        ))
                    })?;
                shapes.push(next);
            }
            ws.shapes = shapes;
            ws.cap = 0;
            ws.acts = vec![Vec::new(); self.ops.len() + 1];
            self.cache = None;
        }
        if n > ws.cap {
            let cap = n;
            let sized = |s: &[usize]| cap.checked_mul(numel(s)).ok_or_else(too_big);
            // Below the prefix nothing is ever stored (see `load`).
            for (a, s) in ws.acts.iter_mut().zip(&ws.shapes).skip(self.prefix) {
                grow(a, sized(s)?)?;
            }
            let widest = ws.shapes.iter().map(|s| numel(s)).max().unwrap_or(0);
            grow(&mut ws.d_a, sized(&[widest])?)?;
            grow(&mut ws.d_b, sized(&[widest])?)?;
            ws.stats.try_reserve(cap.saturating_sub(ws.stats.len())).map_err(|_| oom(cap * 16))?;
            ws.stats.resize(cap, RowStat::default());
            ws.cap = cap;
        }
        Ok(())
    }

    fn in_len(&self) -> usize {
        numel(&self.ws.shapes[0])
    }

    fn out_shape(&self) -> &[usize] {
        self.ws.shapes.last().map(|v| v.as_slice()).unwrap_or(&[])
    }

    fn out_len(&self) -> usize {
        numel(self.out_shape())
    }

    /// Checks an input array against the model: its size, that it is finite,
    /// and that float64 values fit a float32 model.
    pub fn check_input(&mut self, x: &Features<'_>, n: usize, shape: &[usize], what: &str) -> Result<()> {
        if n == 0 {
            return Err(Error::value(format!("{what} is empty (0 samples)")));
        }
        if x.len() != n * numel(shape) {
            return Err(Error::shape(format!(
                "{what} has {} elements, expected {} for {n} samples of shape {shape:?}",
                x.len(),
                n * numel(shape)
            )));
        }
        self.plan(shape, 1)?;
        x.check_finite(what, numel(shape))?;
        if T::NAME == "float32" {
            x.check_fits_f32(what, numel(shape))?;
        }
        Ok(())
    }

    /// Gathers `rows` of `x` (`in_len` elements each) as the next batch,
    /// through the input prefix: into `acts[prefix]`, where the forward
    /// pass starts.
    fn load(&mut self, x: &Features<'_>, rows: Rows<'_>, in_len: usize) {
        x.gather_scaled(rows, in_len, self.affine, &mut self.ws.acts[self.prefix]);
    }

    /// Runs the layers on the first `n` samples already loaded ([`Sequential::load`]); in
    /// training mode with a fresh random key, kept for `backward`.
    fn forward_loaded(&mut self, n: usize, training: bool) {
        let key = if training { self.rng.next_u64() } else { 0 };
        self.run_layers(n, training, key);
        self.cache = if training { Some(Cache { n, key }) } else { None };
    }

    /// The forward pass proper, with an explicit random key.
    fn run_layers(&mut self, n: usize, training: bool, key: u64) {
        for (i, op) in self.ops.iter().enumerate().skip(self.prefix) {
            let (lo, hi) = self.ws.acts.split_at_mut(i + 1);
            let shape = &self.ws.shapes[i];
            let x = &lo[i][..n * numel(shape)];
            let y = &mut hi[0][..n * numel(&self.ws.shapes[i + 1])];
            let ctx = Ctx { training, key: key ^ mix64(i as u64) };
            op.layer.forward(ctx, &self.params[op.prange.clone()], x, y, n, shape);
        }
    }

    /// Backpropagates `ws.d_a` (holding dL/d output) down to the first layer
    /// with parameters; layers below it need no gradient (e.g. `Flatten` or
    /// `Rescaling` at the input), so none is computed for them.
    /// `after(params, grads, range)` runs after each layer with parameters,
    /// once its gradients are in `grads[range]`.
    fn backward_loaded(
        &mut self,
        n: usize,
        key: u64,
        accumulate: bool,
        mut after: impl FnMut(&mut [T], &[T], Range<usize>),
    ) {
        let first = self.ops.iter().position(|op| !op.prange.is_empty()).unwrap_or(self.ops.len());
        for (i, op) in self.ops.iter().enumerate().skip(first).rev() {
            let ws = &mut self.ws;
            let shape = &ws.shapes[i];
            let in_len = n * numel(shape);
            let out_len = n * numel(&ws.shapes[i + 1]);
            let ctx = Ctx { training: true, key: key ^ mix64(i as u64) };
            let dx = if i > first { Some(&mut ws.d_b[..in_len]) } else { None };
            op.layer.backward(
                ctx,
                &self.params[op.prange.clone()],
                &mut self.grads[op.prange.clone()],
                &ws.acts[i][..in_len],
                &ws.acts[i + 1][..out_len],
                &mut ws.d_a[..out_len],
                dx,
                n,
                shape,
                accumulate,
            );
            std::mem::swap(&mut ws.d_a, &mut ws.d_b);
            if !op.prange.is_empty() {
                after(&mut self.params, &self.grads, op.prange.clone());
            }
        }
    }

    /// Forward pass on `n` samples; returns the output (`n x` output shape).
    /// In training mode it keeps what [`Sequential::backward`] needs.
    pub fn forward(&mut self, x: &Features<'_>, n: usize, shape: &[usize], training: bool) -> Result<&[T]> {
        self.check_input(x, n, shape, "input")?;
        self.plan(shape, n)?;
        let in_len = self.in_len();
        self.load(x, Rows::Range(0, n), in_len);
        self.forward_loaded(n, training);
        let len = n * self.out_len();
        Ok(&self.ws.acts[self.ops.len()][..len])
    }

    /// Adds the gradients of the last training-mode forward pass, given the
    /// gradient of the loss with respect to its output, of shape `shape`
    /// (which must be the output's, batch first).
    pub fn backward(&mut self, dout: &[T], shape: &[usize]) -> Result<()> {
        let Some(cache) = self.cache else {
            return Err(Error::state("backward() needs a preceding forward(x, training=True) on this model"));
        };
        let mut want_shape = vec![cache.n];
        want_shape.extend_from_slice(self.out_shape());
        let want = cache.n * self.out_len();
        if shape != want_shape.as_slice() || dout.len() != want {
            return Err(Error::shape(format!(
                "gradient has shape {shape:?}, expected the output's shape {want_shape:?}"
            )));
        }
        if let Some(i) = dout.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("gradient contains NaN or inf (flat index {i})")));
        }
        self.ws.d_a[..want].copy_from_slice(dout);
        self.backward_loaded(cache.n, cache.key, true, |_, _, _| {});
        Ok(())
    }

    /// Applies one optimizer step to the parameters with the current gradients.
    pub fn optimizer_step(&mut self, opt: &mut Optimizer<T>) -> Result<()> {
        opt.step(&mut self.params, &self.grads)
    }

    /// Checks that targets fit `n` samples of this model's output for `loss`.
    fn check_target(&mut self, loss: Loss, y: Target<'_, T>, n: usize) -> Result<usize> {
        let out = self.out_shape().to_vec();
        let cols = numel(&out);
        if loss == Loss::CrossEntropy && out.len() != 1 {
            return Err(Error::shape(format!(
                "cross_entropy expects a model output of shape (N, C), got per-sample shape {out:?}"
            )));
        }
        validate_target(loss, y, n, cols)?;
        Ok(cols)
    }

    fn gather_target(&mut self, y: Target<'_, T>, rows: Rows<'_>, cols: usize) {
        let ws = &mut self.ws;
        match y {
            Target::Labels(l) => {
                ws.labels.clear();
                ws.labels.extend((0..rows.len()).map(|i| l[rows.get(i)]));
            }
            Target::Values(v) => {
                ws.targets.resize(ws.cap.max(rows.len()) * cols, T::ZERO);
                T::as_features(v).gather(rows, cols, &mut ws.targets);
            }
        }
    }

    /// Checks features and targets against the model and `loss` without
    /// computing anything.
    pub fn validate_data(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        y: Target<'_, T>,
        loss: Loss,
    ) -> Result<()> {
        self.check_input(x, n, shape, "X")?;
        self.check_target(loss, y, n).map(|_| ())
    }

    /// One epoch of minibatch training, fused: gather, forward, loss and its
    /// gradient, backward, optimizer update, with no allocation per step.
    /// `progress` is called about every [`Sequential::report_every`] and at
    /// the end; an error from it stops the epoch (the model stays usable).
    /// With `check` false the data is trusted to have passed
    /// [`Sequential::validate_data`] already (later epochs skip the scan).
    #[allow(clippy::too_many_arguments)]
    pub fn train_epoch(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        y: Target<'_, T>,
        loss: Loss,
        opt: &mut Optimizer<T>,
        batch_size: usize,
        shuffle: bool,
        epoch: usize,
        check: bool,
        progress: &mut dyn FnMut(&Progress) -> Result<()>,
    ) -> Result<LossTotals> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        if opt.ranges().last().is_some_and(|r| r.end > self.params.len()) {
            return Err(Error::value("the optimizer was built for a different model"));
        }
        if check {
            self.validate_data(x, n, shape, y, loss)?;
        } else if n == 0 || x.len() != n * numel(shape) {
            return Err(Error::shape(format!(
                "X has {} elements, expected {n} samples of shape {shape:?}",
                x.len()
            )));
        }
        self.plan(shape, 1)?;
        let cols = self.out_len();
        let bs = batch_size.min(n);
        self.plan(shape, bs)?;
        opt.prepare();
        let mut order = std::mem::take(&mut self.ws.order);
        order.clear();
        order.extend(0..n);
        if shuffle {
            self.rng.shuffle(&mut order);
        }
        let steps = n.div_ceil(bs);
        let in_len = self.in_len();
        let mut totals = LossTotals::default();
        let mut last_report = Instant::now();
        let threads = rayon::current_num_threads();
        let step_flops = bs.saturating_mul(self.params.len()).saturating_mul(6);
        let worth = (TEAM_MIN_STEP_FLOPS..=TEAM_MAX_STEP_FLOPS).contains(&step_flops);
        let team = if threads <= TEAM_MAX_THREADS && worth { threads } else { 1 };
        let result = crate::kernels::team::with_team(team, || {
            let mut result = Ok(());
            let mut tuner = crate::kernels::team::Tuner::new(team > 1);
            for step in 0..steps {
                tuner.before_step();
                let began = Instant::now();
                let idx = &order[step * bs..((step + 1) * bs).min(n)];
                let rows = Rows::Index(idx);
                let m = idx.len();
                self.load(x, rows, in_len);
                // Small batches: start loading the next one while this one computes
                // (a large batch would only push the weights out of cache).
                if step + 1 < steps && bs * in_len <= PREFETCH_MAX_ELEMS {
                    let next = &order[(step + 1) * bs..((step + 2) * bs).min(n)];
                    x.prefetch(Rows::Index(next), in_len);
                }
                self.gather_target(y, rows, cols);
                self.forward_loaded(m, true);
                let key = self.cache.map(|c| c.key).unwrap_or(0);
                let out = &self.ws.acts[self.ops.len()][..m * cols];
                let bt = batch_target(y, &self.ws.labels, &self.ws.targets);
                let t = match loss_grad(loss, out, m, cols, bt, Some(&mut self.ws.d_a), &mut self.ws.stats) {
                    Ok(t) => t,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                if !t.mean().is_finite() {
                    result = Err(Error::non_finite(format!(
                        "training loss became {} at epoch {epoch}, step {} (of {steps}); \
                     try a lower learning rate or check the data",
                        t.mean(),
                        step + 1
                    )));
                    break;
                }
                // Each layer's update right after its gradients, while they
                // are still in cache.
                let mut updated = Ok(());
                self.backward_loaded(m, key, false, |p, g, r| {
                    if updated.is_ok() {
                        updated = opt.step_part(p, g, r);
                    }
                });
                opt.finish_step();
                if let Err(e) = updated {
                    result = Err(e);
                    break;
                }
                tuner.after_step(began.elapsed());
                totals.add(&t);
                if last_report.elapsed() >= self.report_every || step + 1 == steps {
                    last_report = Instant::now();
                    let p = Progress { step: step + 1, steps, samples: (step * bs + m).min(n), totals };
                    if let Err(e) = progress(&p) {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        });
        self.ws.order = order;
        self.cache = None;
        result.map(|_| totals)
    }

    /// Inference in batches of `batch_size` into `out` (`n x` output elements).
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
        self.plan(shape, bs)?;
        let (in_len, out_len) = (self.in_len(), self.out_len());
        if out.len() != n * out_len {
            return Err(Error::shape(format!(
                "output buffer has {} elements, expected {}",
                out.len(),
                n * out_len
            )));
        }
        for (b, chunk) in out.chunks_mut(bs * out_len).enumerate() {
            let m = chunk.len() / out_len;
            self.load(x, Rows::Range(b * bs, m), in_len);
            self.forward_loaded(m, false);
            chunk.copy_from_slice(&self.ws.acts[self.ops.len()][..m * out_len]);
        }
        Ok(())
    }

    /// Loss and accuracy totals over a dataset, in batches, in inference mode.
    pub fn evaluate(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        y: Target<'_, T>,
        loss: Loss,
        batch_size: usize,
    ) -> Result<LossTotals> {
        if batch_size == 0 {
            return Err(Error::value("batch_size must be >= 1, got 0"));
        }
        self.check_input(x, n, shape, "X")?;
        let cols = self.check_target(loss, y, n)?;
        let bs = batch_size.min(n);
        self.plan(shape, bs)?;
        let in_len = self.in_len();
        let mut totals = LossTotals::default();
        let mut start = 0;
        while start < n {
            let m = bs.min(n - start);
            let rows = Rows::Range(start, m);
            self.load(x, rows, in_len);
            self.gather_target(y, rows, cols);
            self.forward_loaded(m, false);
            let out = &self.ws.acts[self.ops.len()][..m * cols];
            let bt = batch_target(y, &self.ws.labels, &self.ws.targets);
            let t = loss_grad(loss, out, m, cols, bt, None, &mut self.ws.stats)?;
            totals.add(&t);
            start += m;
        }
        Ok(totals)
    }

    /// Mean loss and its gradient of a training-mode pass with a fixed
    /// random key (so dropout masks repeat), on the loaded batch.
    fn loss_at(&mut self, n: usize, key: u64, loss: Loss, y: Target<'_, T>, cols: usize) -> Result<f64> {
        self.run_layers(n, true, key);
        let out = &self.ws.acts[self.ops.len()][..n * cols];
        Ok(loss_grad(loss, out, n, cols, y, None, &mut self.ws.stats)?.mean())
    }

    /// Compares backprop gradients with central finite differences (step
    /// `eps`) for every parameter element. Needs a float64 model. Parameters,
    /// gradients and the random state are left as they were.
    pub fn gradcheck(
        &mut self,
        x: &Features<'_>,
        n: usize,
        shape: &[usize],
        y: Target<'_, T>,
        loss: Loss,
        eps: f64,
    ) -> Result<Vec<GradCheck>> {
        if T::NAME != "float64" {
            return Err(Error::value(format!(
                "gradcheck needs a float64 model, this one is {}: float32 finite differences carry \
                 errors near 1e-3, too coarse to check gradients; build the model with dtype=\"float64\"",
                T::NAME
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::value(format!("eps must be a finite value > 0, got {eps}")));
        }
        self.check_input(x, n, shape, "X")?;
        let cols = self.check_target(loss, y, n)?;
        self.plan(shape, n)?;
        let in_len = self.in_len();
        self.load(x, Rows::Range(0, n), in_len);
        let key = 0x5eed_0f9c_4ec4_ed00_u64;
        let saved_grads = self.grads.clone();
        // Analytic gradient, with the same fixed key (dropout masks) as below.
        self.loss_at(n, key, loss, y, cols)?;
        let out = &self.ws.acts[self.ops.len()][..n * cols];
        loss_grad(loss, out, n, cols, y, Some(&mut self.ws.d_a), &mut self.ws.stats)?;
        self.grads.fill(T::ZERO);
        self.backward_loaded(n, key, true, |_, _, _| {});
        let analytic = std::mem::replace(&mut self.grads, saved_grads);
        let mut report = Vec::new();
        for e in self.entries.clone() {
            let mut numeric = Vec::with_capacity(e.range.len());
            for j in e.range.clone() {
                let orig = self.params[j];
                self.params[j] = T::from_f64(orig.to_f64() + eps);
                let lp = self.loss_at(n, key, loss, y, cols)?;
                self.params[j] = T::from_f64(orig.to_f64() - eps);
                let lm = self.loss_at(n, key, loss, y, cols)?;
                self.params[j] = orig;
                numeric.push((lp - lm) / (2.0 * eps));
            }
            let a = &analytic[e.range.clone()];
            // Elements far smaller than the parameter's largest gradient are
            // judged against 1e-3 of that, not their own size: their finite
            // differences are rounding noise over a tiny value.
            let gmax = a.iter().map(|v| v.to_f64().abs()).fold(0.0f64, f64::max);
            let floor = (1e-3 * gmax).max(1e-7);
            let (mut rel, mut abs) = (0.0f64, 0.0f64);
            for (&av, &num) in a.iter().zip(&numeric) {
                let av = av.to_f64();
                let d = (av - num).abs();
                abs = abs.max(d);
                rel = rel.max(d / av.abs().max(num.abs()).max(floor));
            }
            report.push(GradCheck { name: e.name, max_rel_error: rel, max_abs_error: abs });
        }
        self.cache = None;
        Ok(report)
    }
}

fn too_big() -> Error {
    Error::value("sizes overflow: the model or batch is too large to address")
}

fn oom(bytes: usize) -> Error {
    Error::value(format!(
        "cannot allocate {:.1} GB for the model or batch; use smaller layers or batches",
        bytes as f64 / 1e9
    ))
}

/// A zeroed buffer, or an error instead of an abort when memory runs out.
fn zeros<T: Float>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    grow(&mut v, len)?;
    Ok(v)
}

/// Resizes `v` to at least `len` elements (zero-filled), failing cleanly.
fn grow<T: Float>(v: &mut Vec<T>, len: usize) -> Result<()> {
    if len > v.len() {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if len > isize::MAX as usize / std::mem::size_of::<T>() {
            return Err(oom(bytes));
        }
        v.try_reserve_exact(len - v.len()).map_err(|_| oom(bytes))?;
        v.resize(len, T::ZERO);
    }
    Ok(())
}

/// The gathered batch targets, of the same kind as `y`.
fn batch_target<'a, T>(y: Target<'_, T>, labels: &'a [i64], values: &'a [T]) -> Target<'a, T> {
    match y {
        Target::Labels(_) => Target::Labels(labels),
        Target::Values(_) => Target::Values(values),
    }
}

/// Checks statically known feature counts between consecutive dense layers.
fn check_chain(specs: &[LayerSpec]) -> Result<()> {
    let mut prev: Option<(usize, usize)> = None; // (spec index, out features)
    for (i, s) in specs.iter().enumerate() {
        s.validate().map_err(|e| Error::value(format!("layer {i}: {}", e.message)))?;
        match *s {
            LayerSpec::Dense { in_features, out_features, .. } => {
                if let Some((j, f)) = prev {
                    if f != in_features {
                        return Err(Error::shape(format!(
                            "layer sizes do not chain: layer {i} (Dense({in_features}, {out_features})) expects \
                             {in_features} input features, but layer {j} produces {f}"
                        )));
                    }
                }
                prev = Some((i, out_features));
            }
            LayerSpec::Flatten => prev = None,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimConfig;
    use crate::Init;

    /// The input prefix (Flatten, one Rescaling) fused into the gather gives
    /// the same bits as running those layers: a `Dropout(0)` in front (an
    /// exact copy) keeps the same stack from being fused. Two Rescalings
    /// fuse only the first.
    #[test]
    fn fused_input_prefix_matches_the_layers() {
        fn run<T: Float>(prefix: &[LayerSpec], fused: bool) -> (Vec<T>, Vec<T>) {
            let n = 300;
            let mut r = Rng::new(11);
            let x: Vec<u8> = (0..n * 196).map(|_| (r.next_u64() >> 56) as u8).collect();
            let y: Vec<i64> = (0..n).map(|i| (x[i * 196 + 50] as i64) % 10).collect();
            let mut specs = if fused { vec![] } else { vec![LayerSpec::Dropout { p: 0.0 }] };
            specs.extend_from_slice(prefix);
            specs.extend([
                LayerSpec::Dense { in_features: 196, out_features: 32, bias: true, init: Init::He },
                LayerSpec::ReLU,
                LayerSpec::Dense { in_features: 32, out_features: 10, bias: true, init: Init::Xavier },
            ]);
            let mut model = Sequential::<T>::new(specs, 2).expect("model");
            assert_eq!(model.prefix, if fused { prefix.len().min(2) } else { 0 });
            let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
            let cfg = OptimConfig::Sgd {
                lr: 0.05,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            };
            let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
            let x = Features::U8(&x);
            model
                .train_epoch(
                    &x,
                    n,
                    &[14, 14],
                    Target::Labels(&y),
                    Loss::CrossEntropy,
                    &mut opt,
                    32,
                    true,
                    0,
                    true,
                    &mut |_| Ok(()),
                )
                .expect("epoch");
            let mut out = vec![T::ZERO; n * 10];
            model.predict_into(&x, n, &[14, 14], 64, &mut out).expect("predict");
            (model.params().to_vec(), out)
        }
        let one = [LayerSpec::Flatten, LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: -0.25 }];
        let two = [
            LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 },
            LayerSpec::Flatten,
            LayerSpec::Rescaling { scale: 3.0, offset: -1.0 },
        ];
        for prefix in [&one[..], &one[..1], &two[..]] {
            let (p, out) = run::<f32>(prefix, true);
            assert_eq!((p.clone(), out.clone()), run::<f32>(prefix, false), "{prefix:?}");
            // The model learned something (the comparison is not vacuous).
            assert!(p.iter().all(|v| v.is_finite()) && out.iter().any(|&v| v != 0.0));
            assert_eq!(run::<f64>(prefix, true), run::<f64>(prefix, false), "{prefix:?}, float64");
        }
    }

    /// A short epoch on 1, 2 and 3 threads gives bitwise-equal weights, at
    /// batch sizes that take each split: fixed column blocks (32 rows; the
    /// 160-wide layer would end in a narrow block, summed differently, if its
    /// blocks followed the worker count), column blocks per worker (128 and
    /// 256 rows), row chunks (the weight gradients), all on the team and, in
    /// the tuner's probe steps, without it.
    #[test]
    fn training_independent_of_thread_count() {
        let n = 800;
        let mut r = Rng::new(3);
        let x: Vec<u8> = (0..n * 784).map(|_| (r.next_u64() >> 56) as u8).collect();
        let y: Vec<i64> = (0..n).map(|i| (x[i * 784 + 100] as i64) % 10).collect();
        for batch in [32, 128, 256] {
            let train = |threads: usize| {
                let specs = vec![
                    LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 },
                    LayerSpec::Dense { in_features: 784, out_features: 600, bias: true, init: Init::He },
                    LayerSpec::ReLU,
                    LayerSpec::Dense { in_features: 600, out_features: 160, bias: true, init: Init::He },
                    LayerSpec::ReLU,
                    LayerSpec::Dense { in_features: 160, out_features: 10, bias: true, init: Init::Xavier },
                ];
                let mut model = Sequential::<f32>::new(specs, 5).expect("model");
                let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
                let cfg =
                    OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
                let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                pool.install(|| {
                    model
                        .train_epoch(
                            &Features::U8(&x),
                            n,
                            &[784],
                            Target::Labels(&y),
                            Loss::CrossEntropy,
                            &mut opt,
                            batch,
                            true,
                            0,
                            true,
                            &mut |_| Ok(()),
                        )
                        .expect("epoch")
                });
                model.params().to_vec()
            };
            let one = train(1);
            assert_eq!(one, train(2), "batch {batch}, 2 threads");
            assert_eq!(one, train(3), "batch {batch}, 3 threads");
        }
    }
}
