//! The workspace: activation, gradient and per-layer scratch buffers sized
//! for one input shape and a batch capacity, reused until either grows; and
//! the forward and backward passes over the layers that use them.

use super::graph::Plan;
use super::train::{Data, Losses, Totals};
use super::{Kind, Sequential};
use crate::data::{Features, Rows};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::{numel, Backward, Buffers, Forward, Layout, MergeBackward, MergeForward};
use crate::loss::{loss_grad_over, RowStat, Target};
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
pub(crate) enum Grad<'a> {
    /// None: the loss only.
    No,
    /// Of the batch's mean loss (each output's).
    Mean,
    /// Of each output's loss sum divided by its entry here (a data-parallel
    /// part of a larger batch; see [`crate::loss::loss_grad_over`]).
    Over(&'a [f64]),
}

pub(crate) struct Workspace<T> {
    /// Per-sample shape of every storage value: the inputs first.
    pub(crate) shapes: Vec<Vec<usize>>,
    /// The buffer layout of every storage value (planar at the inputs and outputs).
    pub(crate) layouts: Vec<Layout>,
    pub(crate) cap: usize,
    /// The largest batch the scratch is sized to train on (backward
    /// passes need more scratch than evaluation).
    pub(crate) train_cap: usize,
    /// One activation buffer per storage value.
    pub(crate) acts: Vec<Vec<T>>,
    /// Each op's scratch ([`crate::layers::Layer::scratch_len`]).
    pub(crate) scratch: Vec<Vec<T>>,
    /// The gradient slots (see [`super::graph::Plan::slot`]); a chain
    /// ping-pongs between two.
    pub(crate) dslots: Vec<Vec<T>>,
    /// Where a layer writes an input gradient that is then added to its slot.
    pub(crate) dtmp: Vec<T>,
    pub(crate) stats: Vec<RowStat>,
    /// Per output: the batch's labels or target values.
    pub(crate) labels: Vec<Vec<i64>>,
    pub(crate) targets: Vec<Vec<T>>,
    /// The batch's sample weights.
    pub(crate) weights: Vec<T>,
    pub(crate) order: Vec<usize>,
    /// Samples of the last evaluation-mode forward pass.
    pub(crate) last_n: usize,
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
            dslots: Vec::new(),
            dtmp: Vec::new(),
            stats: Vec::new(),
            labels: Vec::new(),
            targets: Vec::new(),
            weights: Vec::new(),
            order: Vec::new(),
            last_n: 0,
        }
    }
}

impl<T> Workspace<T> {
    /// The gradient slot of storage value `v`, if it has one.
    pub(crate) fn dslot(&mut self, plan: &Plan, v: usize) -> Option<&mut Vec<T>> {
        let s = plan.slot[v];
        self.dslots.get_mut(s)
    }
}

/// Mutable references to two different elements of `v`.
fn two<X>(v: &mut [X], a: usize, b: usize) -> (&mut X, &mut X) {
    assert_ne!(a, b, "two slots of one value");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

impl<T: Float> Sequential<T> {
    /// Sizes the workspace for `n` samples of per-sample shapes `inputs`,
    /// for evaluation or (`training`) training passes. The growth is checked
    /// against the memory budget ([`memory::reserve`]) before anything
    /// changes; nothing is checked when the buffers are already big enough.
    pub(crate) fn plan(&mut self, inputs: &[&[usize]], n: usize, training: bool) -> Result<()> {
        let k = inputs.len();
        let same = self.ws.shapes.len() > k && self.ws.shapes[..k].iter().zip(inputs).all(|(a, b)| a == b);
        if same && n <= self.ws.cap && !(training && n > self.ws.train_cap) {
            return Ok(());
        }
        let fresh = if same {
            None
        } else {
            let mut shapes: Vec<Vec<usize>> = inputs.iter().map(|s| s.to_vec()).collect();
            for op in &self.ops {
                let next = match &op.kind {
                    Kind::Layer(l) => l.output_shape(&shapes[op.inputs[0]]),
                    Kind::Merge(m) => {
                        let ins: Vec<&[usize]> = op.inputs.iter().map(|&v| shapes[v].as_slice()).collect();
                        m.output_shape(&ins)
                    }
                };
                let next = match next {
                    Ok(s) => s,
                    Err(_) => {
                        // The graph's own shape pass names the layers feeding a merge.
                        let all: Vec<Vec<usize>> = inputs.iter().map(|s| s.to_vec()).collect();
                        self.node_shapes(&all)?;
                        return Err(Error::shape(format!("{}: shapes do not fit", self.label(op.spec))));
                    }
                };
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
        let kk = self.graph.inputs.len();
        let mut scratch = vec![0; self.ops.len()];
        for (i, op) in self.ops.iter().enumerate().skip(self.prefix) {
            if let Some(l) = op.layer() {
                let s = &shapes[op.inputs[0]];
                scratch[i] = l.scratch_len(cap, s, false).max(l.scratch_len(train_cap, s, true));
            }
        }
        let mut slots = vec![0; self.plan.slots];
        let mut widest = 0;
        for (v, s) in shapes.iter().enumerate() {
            let len = sized(s)?;
            if let Some(d) = slots.get_mut(self.plan.slot[v]) {
                *d = len.max(*d);
            }
            // Only a value read twice (or an output also read) gets a gradient added.
            let readers = self.plan.consumers[v].len() + usize::from(self.outs.contains(&v));
            if readers > 1 {
                widest = widest.max(len);
            }
        }
        // Bytes held now, and after growing (the buffers of another input
        // shape are dropped first); the difference is what gets allocated.
        let kept = |v: &[Vec<T>], i: usize| if same { v[i].len() } else { 0 };
        let held: usize =
            ws.acts.iter().chain(&ws.scratch).chain(&ws.dslots).chain([&ws.dtmp]).map(Vec::len).sum();
        let grown = |want: &[usize], have: &[Vec<T>]| -> usize {
            want.iter()
                .enumerate()
                .map(|(i, &a)| a.max(have.get(i).map_or(0, Vec::len)))
                .fold(0usize, usize::saturating_add)
        };
        let after = acts
            .iter()
            .enumerate()
            .map(|(i, &a)| a.max(kept(&ws.acts, i)))
            .chain(scratch.iter().enumerate().map(|(i, &a)| a.max(kept(&ws.scratch, i))))
            .fold(0usize, usize::saturating_add)
            .saturating_add(grown(&slots, &ws.dslots))
            .saturating_add(widest.max(ws.dtmp.len()));
        let bytes =
            memory::bytes_of::<T>(after.saturating_sub(held))
                .saturating_add(memory::bytes_of::<RowStat>(cap.saturating_sub(ws.stats.len())));
        let mode = if training { "training" } else { "evaluation" };
        let what = if k == 1 { format!("{:?}", inputs[0]) } else { format!("{inputs:?}") };
        memory::reserve(
            &format!("a batch of {n} samples of shape {what} ({mode} activations and scratch)"),
            bytes,
        )?;
        let ops_len = self.ops.len();
        if let Some(shapes) = fresh {
            let views: Vec<_> = self.ops.iter().map(super::op_view).collect();
            self.ws.layouts = super::graph::plan_layouts(kk, &views, &self.plan, &shapes, &self.outs);
            self.ws.shapes = shapes;
            self.ws.cap = 0;
            self.ws.train_cap = 0;
            self.ws.acts = vec![Vec::new(); kk + ops_len];
            self.ws.scratch = vec![Vec::new(); ops_len];
            self.cache = None;
        }
        let ws = &mut self.ws;
        for (a, &len) in ws.acts.iter_mut().zip(&acts) {
            grow(a, len)?;
        }
        for (a, &len) in ws.scratch.iter_mut().zip(&scratch) {
            grow(a, len)?;
        }
        ws.dslots.resize_with(slots.len(), Vec::new);
        for (a, &len) in ws.dslots.iter_mut().zip(&slots) {
            grow(a, len)?;
        }
        grow(&mut ws.dtmp, widest)?;
        ws.stats.try_reserve(cap.saturating_sub(ws.stats.len())).map_err(|_| oom(cap * 16))?;
        ws.stats.resize(cap, RowStat::default());
        ws.cap = cap;
        ws.train_cap = train_cap;
        Ok(())
    }

    /// Asks every layer whether it can take a batch of `n` samples (after
    /// [`Sequential::plan`] for the input shapes).
    pub(crate) fn check_batch(&self, n: usize, training: bool) -> Result<()> {
        for op in &self.ops {
            if let Some(l) = op.layer() {
                l.check_batch(n, &self.ws.shapes[op.inputs[0]], training)
                    .map_err(|e| Error { message: format!("{}: {}", self.label(op.spec), e.message), ..e })?;
            }
        }
        Ok(())
    }

    /// Per-sample elements of input `i`.
    pub(crate) fn in_len(&self, i: usize) -> usize {
        numel(&self.ws.shapes[i])
    }

    /// Per-sample shape of output `k`.
    pub(crate) fn out_shape(&self, k: usize) -> &[usize] {
        &self.ws.shapes[self.outs[k]]
    }

    /// Per-sample elements of output `k`.
    pub(crate) fn out_len(&self, k: usize) -> usize {
        numel(self.out_shape(k))
    }

    /// Checks an input array against the model: its size, that it is finite,
    /// and that float64 values fit a float32 model.
    pub fn check_input(&mut self, x: &Features<'_>, n: usize, shape: &[usize], what: &str) -> Result<()> {
        self.check_inputs(&[(*x, shape)], n, what).map(drop)
    }

    /// [`Sequential::check_input`] for every input (features and per-sample
    /// shape, in input order); returns the shapes. `what` names the data.
    pub fn check_inputs<'s>(
        &mut self,
        inputs: &[(Features<'_>, &'s [usize])],
        n: usize,
        what: &str,
    ) -> Result<Vec<&'s [usize]>> {
        let k = self.graph.inputs.len();
        if inputs.len() != k {
            return Err(Error::value(format!("the model has {k} inputs, got {} arrays", inputs.len())));
        }
        if n == 0 {
            return Err(Error::value(format!("{what} is empty (0 samples)")));
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| *s).collect();
        for (i, (x, shape)) in inputs.iter().enumerate() {
            let name =
                if k == 1 { what.to_string() } else { format!("{what} {:?}", self.graph.inputs[i].name) };
            if x.len() != n * numel(shape) {
                return Err(Error::shape(format!(
                    "{name} has {} elements, expected {} for {n} samples of shape {shape:?}",
                    x.len(),
                    n * numel(shape)
                )));
            }
        }
        self.plan(&shapes, 1, false)?;
        for (i, (x, shape)) in inputs.iter().enumerate() {
            let name =
                if k == 1 { what.to_string() } else { format!("{what} {:?}", self.graph.inputs[i].name) };
            x.check_finite(&name, numel(shape))?;
            if T::NAME == "float32" {
                x.check_fits_f32(&name, numel(shape))?;
            }
        }
        Ok(shapes)
    }

    /// Gathers `rows` of input `i` as the next batch, through the input
    /// prefix (one input only): into the value where the forward pass starts.
    pub(crate) fn load(&mut self, i: usize, x: &Features<'_>, rows: Rows<'_>) {
        let in_len = self.in_len(i);
        let at = if i == 0 { self.prefix } else { i };
        x.gather_scaled(rows, in_len, self.affine, &mut self.ws.acts[at]);
    }

    /// The forward pass over the loaded batch of `n` samples.
    pub(crate) fn run_layers(&mut self, n: usize, pass: Pass) {
        let Pass { training, update, key, first } = pass;
        let k = self.graph.inputs.len();
        let ws = &mut self.ws;
        ws.last_n = n;
        for (i, op) in self.ops.iter().enumerate().skip(self.prefix) {
            let out = k + i;
            let (lo, hi) = ws.acts.split_at_mut(out);
            let out_shape = &ws.shapes[out];
            let y = &mut hi[0][..n * numel(out_shape)];
            match &op.kind {
                Kind::Layer(layer) => {
                    let v = op.inputs[0];
                    let in_shape = &ws.shapes[v];
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
                    layer.forward(Forward {
                        params: &self.params[op.prange.clone()],
                        buffers,
                        x: &lo[v][..n * numel(in_shape)],
                        y,
                        scratch: &mut ws.scratch[i],
                        n,
                        in_shape,
                        out_shape,
                        in_layout: ws.layouts[v],
                        out_layout: ws.layouts[out],
                        training,
                        key: key ^ mix64(i as u64),
                        first,
                    });
                }
                Kind::Merge(merge) => {
                    let shapes = &ws.shapes;
                    let xs: Vec<&[T]> = op.inputs.iter().map(|&v| &lo[v][..n * numel(&shapes[v])]).collect();
                    let in_shapes: Vec<&[usize]> = op.inputs.iter().map(|&v| shapes[v].as_slice()).collect();
                    merge.forward(MergeForward { xs: &xs, y, n, in_shapes: &in_shapes, out_shape });
                }
            }
        }
    }

    /// Backpropagates the gradients in the output values' slots (dL/d
    /// output) down to the first layers with parameters; ops below them
    /// need no gradient (e.g. `Flatten` or `Rescaling` at the input), so
    /// none is computed for them. `after(params, grads, range)` runs after
    /// the last gradient of each layer with parameters, once its gradients
    /// are in `grads[range]`.
    pub(crate) fn backward_loaded(
        &mut self,
        n: usize,
        pass: Pass,
        accumulate: bool,
        mut after: impl FnMut(&mut [T], &[T], Range<usize>),
    ) {
        let k = self.graph.inputs.len();
        let plan = &self.plan;
        for (i, op) in self.ops.iter().enumerate().rev() {
            let out = k + i;
            if !plan.needs_grad[out] {
                continue;
            }
            let ws = &mut self.ws;
            let out_shape = &ws.shapes[out];
            let out_len = n * numel(out_shape);
            match &op.kind {
                Kind::Layer(layer) => {
                    let v = op.inputs[0];
                    let in_shape = &ws.shapes[v];
                    let in_len = n * numel(in_shape);
                    let acc = plan.accumulate_dx[i][0];
                    let (dy, dx) = if plan.needs_grad[v] {
                        let (dy, dx) = two(&mut ws.dslots, plan.slot[out], plan.slot[v]);
                        (dy, Some(if acc { &mut ws.dtmp[..in_len] } else { &mut dx[..in_len] }))
                    } else {
                        (&mut ws.dslots[plan.slot[out]], None)
                    };
                    layer.backward(Backward {
                        params: &self.params[op.prange.clone()],
                        grads: &mut self.grads[op.prange.clone()],
                        accumulate: accumulate || plan.shared_grad[i],
                        buffers: &self.buffers[op.brange.clone()],
                        x: &ws.acts[v][..in_len],
                        y: &ws.acts[out][..out_len],
                        dy: &mut dy[..out_len],
                        dx,
                        scratch: &mut ws.scratch[i],
                        n,
                        in_shape,
                        out_shape,
                        in_layout: ws.layouts[v],
                        out_layout: ws.layouts[out],
                        key: pass.key ^ mix64(i as u64),
                        first: pass.first,
                    });
                    if plan.needs_grad[v] && acc {
                        let d = &mut ws.dslots[plan.slot[v]][..in_len];
                        d.iter_mut().zip(&ws.dtmp[..in_len]).for_each(|(d, &t)| *d += t);
                    }
                }
                Kind::Merge(merge) => {
                    let shapes = &ws.shapes;
                    let xs: Vec<&[T]> =
                        op.inputs.iter().map(|&v| &ws.acts[v][..n * numel(&shapes[v])]).collect();
                    let in_shapes: Vec<&[usize]> = op.inputs.iter().map(|&v| shapes[v].as_slice()).collect();
                    for (j, &v) in op.inputs.iter().enumerate() {
                        if !plan.needs_grad[v] {
                            continue;
                        }
                        let (dy, dx) = two(&mut ws.dslots, plan.slot[out], plan.slot[v]);
                        merge.backward(MergeBackward {
                            input: j,
                            xs: &xs,
                            dy: &dy[..out_len],
                            dx: &mut dx[..n * numel(&shapes[v])],
                            accumulate: plan.accumulate_dx[i][j],
                            n,
                            in_shapes: &in_shapes,
                            out_shape,
                        });
                    }
                }
            }
            if !op.prange.is_empty() && plan.last_grad[i] {
                after(&mut self.params, &self.grads, op.prange.clone());
            }
        }
    }

    /// Loads the batch `rows` of `data`: its features through the input
    /// prefix, its targets and its sample weights into the workspace, where
    /// [`Sequential::forward_loss`] finds them.
    pub(crate) fn load_batch(&mut self, data: &Data<'_, T>, rows: Rows<'_>) {
        for i in 0..self.graph.inputs.len() {
            let (x, _) = data.input(i);
            self.load(i, &x, rows);
        }
        for k in 0..self.outs.len() {
            let cols = self.out_len(k);
            self.gather_target(k, data.target(k), rows, cols);
        }
        if let Some(w) = data.weights {
            self.ws.weights.clear();
            self.ws.weights.extend((0..rows.len()).map(|i| w[rows.get(i)]));
        }
    }

    /// Checks `data` against the model and `loss` and loads all of it as one
    /// training-mode batch (gradient checks and one-batch diagnostics).
    pub(crate) fn load_whole(&mut self, data: &Data<'_, T>, loss: &Losses) -> Result<()> {
        self.validate_data(*data, loss)?;
        self.plan(&data.shapes(), data.n, true)?;
        self.check_batch(data.n, true)?;
        self.load_batch(data, Rows::Range(0, data.n));
        Ok(())
    }

    /// The forward pass over the loaded batch of `n` samples (see
    /// [`Sequential::run_layers`]), then the loss of each output against its
    /// loaded targets (`data` gives their kinds; `weighted`: with the loaded
    /// sample weights), into `totals`; with a `grad`, `dL/d output` (times the
    /// output's loss weight) is left in its gradient slot for the backward
    /// pass. Activation diagnostics are collected when they are on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_loss(
        &mut self,
        n: usize,
        pass: Pass,
        loss: &Losses,
        data: &Data<'_, T>,
        weighted: bool,
        grad: Grad<'_>,
        totals: &mut Totals,
    ) -> Result<()> {
        self.run_layers(n, pass);
        if pass.training && self.diag.on() {
            self.diag_activations(n);
        }
        totals.reset(loss);
        for k in 0..self.outs.len() {
            let v = self.outs[k];
            let cols = numel(&self.ws.shapes[v]);
            let ws = &mut self.ws;
            let out = &ws.acts[v][..n * cols];
            let target = batch_target(data.target(k), &ws.labels[k], &ws.targets[k]);
            let weights = weighted.then(|| &ws.weights[..n]);
            let slot = self.plan.slot[v];
            let denom = match grad {
                Grad::Over(d) => Some(d[k]),
                Grad::No | Grad::Mean => None,
            };
            let dout = match grad {
                Grad::No => None,
                Grad::Mean | Grad::Over(_) => ws.dslots.get_mut(slot).map(|d| &mut d[..n * cols]),
            };
            let w = loss.weight(k);
            let t = match dout {
                Some(d) => {
                    let t = loss_grad_over(
                        loss.spec(k),
                        out,
                        n,
                        cols,
                        target,
                        weights,
                        Some(&mut *d),
                        &mut ws.stats,
                        denom,
                    )?;
                    if w != 1.0 {
                        let c = T::from_f64(w);
                        d.iter_mut().for_each(|g| *g *= c);
                    }
                    t
                }
                None => {
                    loss_grad_over(loss.spec(k), out, n, cols, target, weights, None, &mut ws.stats, denom)?
                }
            };
            totals.outputs[k] = t;
        }
        Ok(())
    }

    /// Copies output `k`'s targets of `rows` into the workspace.
    pub(crate) fn gather_target(&mut self, k: usize, y: Target<'_, T>, rows: Rows<'_>, cols: usize) {
        let ws = &mut self.ws;
        if ws.labels.len() <= k {
            ws.labels.resize_with(k + 1, Vec::new);
            ws.targets.resize_with(k + 1, Vec::new);
        }
        match y {
            Target::Labels(l) => {
                let labels = &mut ws.labels[k];
                labels.clear();
                labels.extend((0..rows.len()).map(|i| l[rows.get(i)]));
            }
            Target::Values(v) => {
                ws.targets[k].resize(ws.cap.max(rows.len()) * cols, T::ZERO);
                crate::data::gather_rows(v, rows, cols, &mut ws.targets[k]);
            }
        }
    }
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
