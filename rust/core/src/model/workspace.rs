//! The workspace: activation, gradient and per-layer scratch buffers sized
//! for one input shape and a batch capacity, reused until either grows; and
//! the forward and backward passes over the layers that use them.

use super::train::Data;
use super::{layer_error, Sequential};
use crate::data::{Features, Rows};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::{numel, Backward, Buffers, Forward, Layout, Layouts};
use crate::loss::{loss_grad_over, LossSpec, LossTotals, RowStat, Target};
use crate::memory;
use crate::rng::mix64;
use std::ops::Range;

/// How a forward pass runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass {
    /// Training mode (dropout active, batch statistics).
    pub(crate) training: bool,
    /// Training-mode layers may update their buffers (running statistics);
    /// off for passes that must leave the model as it was.
    pub(crate) update: bool,
    /// The pass's random stream (dropout masks).
    pub(crate) key: u64,
    /// The batch's first sample's place in the step's whole batch (see
    /// [`crate::layers::Forward::first`]).
    pub(crate) first: usize,
}

impl Pass {
    /// Evaluation mode.
    pub(crate) const EVAL: Pass = Pass { training: false, update: false, key: 0, first: 0 };

    /// A training step's pass.
    pub(crate) fn train(key: u64) -> Pass {
        Pass { training: true, update: true, key, first: 0 }
    }

    /// Training mode with the buffers left as they are (gradient checks,
    /// diagnostics).
    pub(crate) fn frozen(key: u64) -> Pass {
        Pass { training: true, update: false, key, first: 0 }
    }
}

/// Which loss gradient [`Sequential::forward_loss`] computes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grad {
    /// None: the loss only.
    No,
    /// Of the batch's mean loss.
    Mean,
    /// Of the batch's loss sum divided by this (a data-parallel part of a
    /// larger batch; see [`crate::loss::loss_grad_over`]).
    Over(f64),
}

pub(crate) struct Workspace<T> {
    /// Per-sample shape at each op boundary: `shapes[0]` is the input.
    pub(crate) shapes: Vec<Vec<usize>>,
    /// The buffer layout at each op boundary (planar at both ends).
    pub(crate) layouts: Vec<Layout>,
    pub(crate) cap: usize,
    /// The largest batch the scratch is sized to train on (backward
    /// passes need more scratch than evaluation).
    pub(crate) train_cap: usize,
    pub(crate) acts: Vec<Vec<T>>,
    /// Each op's scratch ([`crate::layers::Layer::scratch_len`]).
    pub(crate) scratch: Vec<Vec<T>>,
    pub(crate) d_a: Vec<T>,
    pub(crate) d_b: Vec<T>,
    pub(crate) stats: Vec<RowStat>,
    pub(crate) labels: Vec<i64>,
    pub(crate) targets: Vec<T>,
    /// The batch's sample weights.
    pub(crate) weights: Vec<T>,
    pub(crate) order: Vec<usize>,
}

impl<T> Default for Workspace<T> {
    fn default() -> Self {
        Workspace {
            shapes: Vec::new(),
            layouts: Vec::new(),
            cap: 0,
            train_cap: 0,
            acts: Vec::new(),
            scratch: Vec::new(),
            d_a: Vec::new(),
            d_b: Vec::new(),
            stats: Vec::new(),
            labels: Vec::new(),
            targets: Vec::new(),
            weights: Vec::new(),
            order: Vec::new(),
        }
    }
}

impl<T: Float> Sequential<T> {
    /// Sizes the workspace for `n` samples of per-sample shape `input`, for
    /// evaluation or (`training`) training passes. The growth is checked
    /// against the memory budget ([`memory::reserve`]) before anything
    /// changes; nothing is checked when the buffers are already big enough.
    pub(crate) fn plan(&mut self, input: &[usize], n: usize, training: bool) -> Result<()> {
        let same = self.ws.shapes.first().is_some_and(|s| s == input);
        if same && n <= self.ws.cap && !(training && n > self.ws.train_cap) {
            return Ok(());
        }
        let fresh = if same {
            None
        } else {
            let mut shapes = vec![input.to_vec()];
            for op in &self.ops {
                let prev = shapes.last().map(|v| v.as_slice()).unwrap_or(&[]);
                let next =
                    op.layer.output_shape(prev).map_err(|e| layer_error(op.spec, &self.specs[op.spec], e))?;
                shapes.push(next);
            }
            Some(shapes)
        };
        let ws = &self.ws;
        let shapes = fresh.as_ref().unwrap_or(&ws.shapes);
        let (cap, train_cap) = if same { (n.max(ws.cap), ws.train_cap) } else { (n, 0) };
        let train_cap = if training { train_cap.max(n) } else { train_cap };
        let sized = |s: &[usize]| cap.checked_mul(numel(s)).ok_or_else(too_big);
        // Below the prefix nothing is ever stored (see `load`).
        let mut acts = vec![0; shapes.len()];
        for (a, s) in acts.iter_mut().zip(shapes).skip(self.prefix) {
            *a = sized(s)?;
        }
        let mut scratch = vec![0; self.ops.len()];
        for (i, op) in self.ops.iter().enumerate().skip(self.prefix) {
            let (l, s) = (&op.layer, &shapes[i]);
            scratch[i] = l.scratch_len(cap, s, false).max(l.scratch_len(train_cap, s, true));
        }
        let widest = sized(&[shapes.iter().map(|s| numel(s)).max().unwrap_or(0)])?;
        // Bytes held now, and after growing (the buffers of another input
        // shape are dropped first); the difference is what gets allocated.
        let kept = |v: &[Vec<T>], i: usize| if same { v[i].len() } else { 0 };
        let held: usize = ws.acts.iter().chain(&ws.scratch).chain([&ws.d_a, &ws.d_b]).map(Vec::len).sum();
        let after = acts
            .iter()
            .enumerate()
            .map(|(i, &a)| a.max(kept(&ws.acts, i)))
            .chain(scratch.iter().enumerate().map(|(i, &a)| a.max(kept(&ws.scratch, i))))
            .chain([widest.max(ws.d_a.len()), widest.max(ws.d_b.len())])
            .fold(0usize, usize::saturating_add);
        let bytes =
            memory::bytes_of::<T>(after.saturating_sub(held))
                .saturating_add(memory::bytes_of::<RowStat>(cap.saturating_sub(ws.stats.len())));
        let mode = if training { "training" } else { "evaluation" };
        memory::reserve(
            &format!("a batch of {n} samples of shape {input:?} ({mode} activations and scratch)"),
            bytes,
        )?;
        let ops_len = self.ops.len();
        let ws = &mut self.ws;
        if let Some(shapes) = fresh {
            ws.layouts = plan_layouts(&self.ops, &shapes);
            ws.shapes = shapes;
            ws.cap = 0;
            ws.train_cap = 0;
            ws.acts = vec![Vec::new(); ops_len + 1];
            ws.scratch = vec![Vec::new(); ops_len];
            self.cache = None;
        }
        for (a, &len) in ws.acts.iter_mut().zip(&acts) {
            grow(a, len)?;
        }
        for (a, &len) in ws.scratch.iter_mut().zip(&scratch) {
            grow(a, len)?;
        }
        grow(&mut ws.d_a, widest)?;
        grow(&mut ws.d_b, widest)?;
        ws.stats.try_reserve(cap.saturating_sub(ws.stats.len())).map_err(|_| oom(cap * 16))?;
        ws.stats.resize(cap, RowStat::default());
        ws.cap = cap;
        ws.train_cap = train_cap;
        Ok(())
    }

    /// Asks every layer whether it can take a batch of `n` samples (after
    /// [`Sequential::plan`] for the input shape).
    pub(crate) fn check_batch(&self, n: usize, training: bool) -> Result<()> {
        for (i, op) in self.ops.iter().enumerate() {
            op.layer
                .check_batch(n, &self.ws.shapes[i], training)
                .map_err(|e| layer_error(op.spec, &self.specs[op.spec], e))?;
        }
        Ok(())
    }

    pub(crate) fn in_len(&self) -> usize {
        numel(&self.ws.shapes[0])
    }

    pub(crate) fn out_shape(&self) -> &[usize] {
        self.ws.shapes.last().map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub(crate) fn out_len(&self) -> usize {
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
        self.plan(shape, 1, false)?;
        x.check_finite(what, numel(shape))?;
        if T::NAME == "float32" {
            x.check_fits_f32(what, numel(shape))?;
        }
        Ok(())
    }

    /// Gathers `rows` of `x` (`in_len` elements each) as the next batch,
    /// through the input prefix: into `acts[prefix]`, where the forward
    /// pass starts.
    pub(crate) fn load(&mut self, x: &Features<'_>, rows: Rows<'_>, in_len: usize) {
        x.gather_scaled(rows, in_len, self.affine, &mut self.ws.acts[self.prefix]);
    }

    /// The forward pass over the loaded batch of `n` samples.
    pub(crate) fn run_layers(&mut self, n: usize, pass: Pass) {
        let Pass { training, update, key, first } = pass;
        let ws = &mut self.ws;
        for (i, op) in self.ops.iter().enumerate().skip(self.prefix) {
            let (lo, hi) = ws.acts.split_at_mut(i + 1);
            let (in_shape, out_shape) = (&ws.shapes[i], &ws.shapes[i + 1]);
            let buffers = if update && training {
                Buffers::Update {
                    values: &mut self.buffers[op.brange.clone()],
                    counts: &mut self.counts[op.crange.clone()],
                }
            } else {
                Buffers::Frozen {
                    values: &self.buffers[op.brange.clone()],
                    counts: &self.counts[op.crange.clone()],
                }
            };
            op.layer.forward(Forward {
                params: &self.params[op.prange.clone()],
                buffers,
                x: &lo[i][..n * numel(in_shape)],
                y: &mut hi[0][..n * numel(out_shape)],
                scratch: &mut ws.scratch[i],
                n,
                in_shape,
                out_shape,
                in_layout: ws.layouts[i],
                out_layout: ws.layouts[i + 1],
                training,
                key: key ^ mix64(i as u64),
                first,
            });
        }
    }

    /// Backpropagates `ws.d_a` (holding dL/d output) down to the first layer
    /// with parameters; layers below it need no gradient (e.g. `Flatten` or
    /// `Rescaling` at the input), so none is computed for them.
    /// `after(params, grads, range)` runs after each layer with parameters,
    /// once its gradients are in `grads[range]`.
    pub(crate) fn backward_loaded(
        &mut self,
        n: usize,
        pass: Pass,
        accumulate: bool,
        mut after: impl FnMut(&mut [T], &[T], Range<usize>),
    ) {
        let first = self.ops.iter().position(|op| !op.prange.is_empty()).unwrap_or(self.ops.len());
        for (i, op) in self.ops.iter().enumerate().skip(first).rev() {
            let ws = &mut self.ws;
            let (in_shape, out_shape) = (&ws.shapes[i], &ws.shapes[i + 1]);
            let in_len = n * numel(in_shape);
            let out_len = n * numel(out_shape);
            op.layer.backward(Backward {
                params: &self.params[op.prange.clone()],
                grads: &mut self.grads[op.prange.clone()],
                accumulate,
                buffers: &self.buffers[op.brange.clone()],
                x: &ws.acts[i][..in_len],
                y: &ws.acts[i + 1][..out_len],
                dy: &mut ws.d_a[..out_len],
                dx: if i > first { Some(&mut ws.d_b[..in_len]) } else { None },
                scratch: &mut ws.scratch[i],
                n,
                in_shape,
                out_shape,
                in_layout: ws.layouts[i],
                out_layout: ws.layouts[i + 1],
                key: pass.key ^ mix64(i as u64),
                first: pass.first,
            });
            std::mem::swap(&mut ws.d_a, &mut ws.d_b);
            if !op.prange.is_empty() {
                after(&mut self.params, &self.grads, op.prange.clone());
            }
        }
    }

    /// Loads the batch `rows` of `data`: its features through the input
    /// prefix, its targets and its sample weights into the workspace, where
    /// [`Sequential::forward_loss`] finds them.
    pub(crate) fn load_batch(&mut self, data: &Data<'_, T>, rows: Rows<'_>) {
        let (in_len, cols) = (self.in_len(), self.out_len());
        self.load(&data.x, rows, in_len);
        self.gather_target(data.y, rows, cols);
        if let Some(w) = data.weights {
            self.ws.weights.clear();
            self.ws.weights.extend((0..rows.len()).map(|i| w[rows.get(i)]));
        }
    }

    /// Checks `data` against the model and `loss` and loads all of it as one
    /// training-mode batch (gradient checks and one-batch diagnostics).
    pub(crate) fn load_whole(&mut self, data: &Data<'_, T>, loss: &LossSpec) -> Result<()> {
        self.validate_data(*data, loss)?;
        self.plan(data.shape, data.n, true)?;
        self.check_batch(data.n, true)?;
        self.load_batch(data, Rows::Range(0, data.n));
        Ok(())
    }

    /// The forward pass over the loaded batch of `n` samples (see
    /// [`Sequential::run_layers`]), then the loss against the loaded targets
    /// (`y` gives their kind; `weighted`: with the loaded sample weights);
    /// with a `grad`, `dL/d output` is left in `ws.d_a` for the backward pass.
    /// Activation diagnostics are collected when they are on.
    pub(crate) fn forward_loss(
        &mut self,
        n: usize,
        pass: Pass,
        loss: &LossSpec,
        y: Target<'_, T>,
        weighted: bool,
        grad: Grad,
    ) -> Result<LossTotals> {
        self.run_layers(n, pass);
        if pass.training && self.diag.on() {
            self.diag_activations(n);
        }
        let cols = self.out_len();
        let ws = &mut self.ws;
        let out = &ws.acts[self.ops.len()][..n * cols];
        let target = batch_target(y, &ws.labels, &ws.targets);
        let weights = weighted.then(|| &ws.weights[..n]);
        let (dout, denom) = match grad {
            Grad::No => (None, None),
            Grad::Mean => (Some(&mut ws.d_a[..]), None),
            Grad::Over(d) => (Some(&mut ws.d_a[..]), Some(d)),
        };
        loss_grad_over(loss, out, n, cols, target, weights, dout, &mut ws.stats, denom)
    }

    /// Copies the targets of `rows` into the workspace.
    pub(crate) fn gather_target(&mut self, y: Target<'_, T>, rows: Rows<'_>, cols: usize) {
        let ws = &mut self.ws;
        match y {
            Target::Labels(l) => {
                ws.labels.clear();
                ws.labels.extend((0..rows.len()).map(|i| l[rows.get(i)]));
            }
            Target::Values(v) => {
                ws.targets.resize(ws.cap.max(rows.len()) * cols, T::ZERO);
                crate::data::gather_rows(v, rows, cols, &mut ws.targets);
            }
        }
    }
}

/// The layout of every op boundary: channels-last from a convolution's
/// output through layers that preserve it, when the next layer that is not
/// one of those reads channels-last too (another convolution, `Flatten`,
/// global pooling); planar everywhere else, and for rank-1 samples.
fn plan_layouts<T: Float>(ops: &[super::Op<T>], shapes: &[Vec<usize>]) -> Vec<Layout> {
    let mut out = vec![Layout::Planar; ops.len() + 1];
    for (i, op) in ops.iter().enumerate() {
        out[i + 1] = match op.layer.layouts() {
            Layouts::Preserve => out[i],
            Layouts::Planar | Layouts::Flatten => Layout::Planar,
            Layouts::Convert => {
                let next = ops[i + 1..].iter().map(|o| o.layer.layouts()).find(|l| *l != Layouts::Preserve);
                match next {
                    Some(Layouts::Convert | Layouts::Flatten) => Layout::ChannelsLast,
                    _ => Layout::Planar,
                }
            }
        };
        if shapes[i + 1].len() <= 1 {
            out[i + 1] = Layout::Planar;
        }
    }
    out
}

pub(crate) fn too_big() -> Error {
    Error::value("sizes overflow: the model or batch is too large to address")
}

pub(crate) fn oom(bytes: usize) -> Error {
    Error::memory(format!(
        "cannot allocate {:.1} GB for the model or batch; use smaller layers or batches",
        bytes as f64 / 1e9
    ))
}

/// A zeroed buffer, or an error instead of an abort when memory runs out.
pub(crate) fn zeros<T: Float>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    grow(&mut v, len)?;
    Ok(v)
}

/// Resizes `v` to at least `len` elements (zero-filled), failing cleanly.
pub(crate) fn grow<T: Float>(v: &mut Vec<T>, len: usize) -> Result<()> {
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
pub(crate) fn batch_target<'a, T>(y: Target<'_, T>, labels: &'a [i64], values: &'a [T]) -> Target<'a, T> {
    match y {
        Target::Labels(_) => Target::Labels(labels),
        Target::Values(_) => Target::Values(values),
    }
}
