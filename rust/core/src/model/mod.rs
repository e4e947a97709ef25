//! `Sequential`: a stack of layers with one flat parameter buffer, one flat
//! gradient buffer, the layers' buffers (non-trainable state), and a
//! workspace of activation and scratch buffers reused from batch to batch.
//!
//! - `workspace.rs`: sizing the buffers for a batch, the forward and
//!   backward passes over the layers.
//! - `train.rs`: the fused training epoch, evaluation and inference.
//! - `gradcheck.rs`: backprop against finite differences.
//! - `diagnostics.rs`: gradient and weight norms, update ratios, dead and
//!   saturated units; gradient clipping.

mod diagnostics;
mod gradcheck;
mod parallel;
mod train;
mod workspace;

pub use diagnostics::{ActivationStat, ActivationStats, Diagnostics, ParamStats, SATURATION};
pub use gradcheck::GradCheck;
pub use parallel::{GradHook, Parallel};
pub use train::{Data, EpochOptions, Flow, Progress};

use crate::data::Features;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::{BufferKind, DenseSpec, Layer, LayerSpec, RescalingSpec};
use crate::memory;
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::ops::Range;
use std::time::Duration;
use workspace::{Pass, Workspace};

/// A named parameter: `"<layer index>.<weight|bias>"` as in `torch.nn.Sequential`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Where it lives in the flat parameter and gradient buffers.
    pub range: Range<usize>,
}

/// What a `state_dict` entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// A trainable parameter (in [`Sequential::params`]).
    Param,
    /// A float buffer (in [`Sequential::buffers`]).
    Buffer,
    /// An integer buffer (in [`Sequential::counts`]).
    Count,
}

/// One `state_dict` entry, in torch's order: per layer, its parameters,
/// then its buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: StateKind,
    /// Where it lives in the buffer its kind names.
    pub range: Range<usize>,
}

/// Values for one `state_dict` entry, as [`Sequential::load_state`] takes them.
#[derive(Clone, Debug, PartialEq)]
pub enum StateValues<T> {
    Float(Vec<T>),
    Count(Vec<i64>),
}

pub(crate) struct Op<T: Float> {
    pub(crate) layer: Box<dyn Layer<T>>,
    /// Index of the spec this op came from (names and messages).
    pub(crate) spec: usize,
    pub(crate) prange: Range<usize>,
    /// Its float and integer buffers.
    pub(crate) brange: Range<usize>,
    pub(crate) crange: Range<usize>,
}

/// What the last training-mode forward pass (of the step API) left for
/// `backward`.
#[derive(Clone, Copy, Debug)]
struct Cache {
    n: usize,
    pass: Pass,
}

/// A feed-forward stack of layers, like `torch.nn.Sequential`.
pub struct Sequential<T: Float> {
    specs: Vec<LayerSpec>,
    ops: Vec<Op<T>>,
    params: Vec<T>,
    grads: Vec<T>,
    buffers: Vec<T>,
    counts: Vec<i64>,
    entries: Vec<ParamEntry>,
    state: Vec<StateEntry>,
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
    diag: diagnostics::DiagState<T>,
    last_diagnostics: Option<diagnostics::Diagnostics>,
    /// Per-parameter norms of a clipped step.
    clip_norms: Vec<f64>,
}

/// How many leading ops only reshape or rescale the input, elementwise and
/// without parameters: any `Flatten`s and at most one `Rescaling` (two would
/// round twice, which one fused pass would not), with that `Rescaling`'s
/// scale and offset. Their forward pass is fused into the gather of each
/// batch, which saves one or two passes over it; nothing is lost, since no
/// gradient is computed below the first layer with parameters.
fn input_prefix<T: Float>(specs: &[LayerSpec], ops: &[Op<T>]) -> (usize, Option<(f64, f64)>) {
    let mut affine = None;
    let mut count = 0;
    for op in ops {
        match specs[op.spec] {
            LayerSpec::Flatten(_) => {}
            LayerSpec::Rescaling(RescalingSpec { scale, offset }) if affine.is_none() => {
                affine = Some((scale, offset))
            }
            _ => break,
        }
        count += 1;
    }
    (count, affine)
}

/// Checks, before any input shape is known, that consecutive layers which
/// act on the last dimension only (Dense and elementwise layers) agree on
/// its size: from each Dense layer on, as far as such layers reach.
fn check_chain(specs: &[LayerSpec]) -> Result<()> {
    let layers = specs.iter().map(|s| s.build::<f32>()).collect::<Result<Vec<_>>>()?;
    for (i, s) in specs.iter().enumerate() {
        let LayerSpec::Dense(DenseSpec { in_features, .. }) = *s else { continue };
        let mut shape = vec![in_features];
        for (j, layer) in layers.iter().enumerate().skip(i) {
            if !layer.acts_on_last_dim() {
                break;
            }
            shape = layer.output_shape(&shape).map_err(|e| {
                Error::shape(format!(
                    "layer sizes do not chain: layer {j} ({}): {}",
                    specs[j].display_name(),
                    e.message
                ))
            })?;
        }
    }
    Ok(())
}

/// Element count of a declared shape, or an error when it overflows.
fn count(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(workspace::too_big)
}

impl<T: Float> Sequential<T> {
    /// Builds and initialises the model; `seed` fixes weights, shuffling and dropout.
    pub fn new(specs: Vec<LayerSpec>, seed: u64) -> Result<Self> {
        Self::build(specs, seed, true)
    }

    /// Builds the model with zero parameters and fresh buffers, skipping the
    /// weight initialisation (and its draws from the generator): for loading
    /// weights that replace them all.
    pub fn new_uninit(specs: Vec<LayerSpec>, seed: u64) -> Result<Self> {
        Self::build(specs, seed, false)
    }

    fn build(specs: Vec<LayerSpec>, seed: u64, init: bool) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::value("Sequential needs at least one layer"));
        }
        for (i, s) in specs.iter().enumerate() {
            s.validate().map_err(|e| Error { message: format!("layer {i}: {}", e.message), ..e })?;
        }
        check_chain(&specs)?;
        let mut ops: Vec<Op<T>> = Vec::new();
        let mut entries = Vec::new();
        let mut state = Vec::new();
        let (mut np, mut nb, mut nc) = (0usize, 0usize, 0usize);
        let mut i = 0;
        while i < specs.len() {
            let mut layer = specs[i].build::<T>()?;
            let (p0, b0, c0) = (np, nb, nc);
            for d in layer.params() {
                let end = np.checked_add(count(&d.shape)?).ok_or_else(workspace::too_big)?;
                let name = format!("{i}.{}", d.name);
                entries.push(ParamEntry { name: name.clone(), shape: d.shape.clone(), range: np..end });
                state.push(StateEntry { name, shape: d.shape, kind: StateKind::Param, range: np..end });
                np = end;
            }
            for d in layer.buffers() {
                let (at, kind) = match d.kind {
                    BufferKind::Float => (&mut nb, StateKind::Buffer),
                    BufferKind::Count => (&mut nc, StateKind::Count),
                };
                let end = at.checked_add(count(&d.shape)?).ok_or_else(workspace::too_big)?;
                state.push(StateEntry {
                    name: format!("{i}.{}", d.name),
                    shape: d.shape,
                    kind,
                    range: *at..end,
                });
                *at = end;
            }
            let spec = i;
            i += 1;
            // Fold a following activation into the layer when it supports it.
            if let Some(act) = specs.get(i).and_then(LayerSpec::activation) {
                if layer.fuse_activation(act) {
                    i += 1;
                }
            }
            ops.push(Op { layer, spec, prange: p0..np, brange: b0..nb, crange: c0..nc });
        }
        // Checked before anything is allocated (and its pages touched).
        let bytes = memory::bytes_of::<T>(np)
            .saturating_mul(2)
            .saturating_add(memory::bytes_of::<T>(nb))
            .saturating_add(memory::bytes_of::<i64>(nc));
        memory::reserve(
            &format!("the model's parameters, gradients and buffers ({np} parameters in {})", T::NAME),
            bytes,
        )?;
        let mut rng = Rng::new(seed);
        let mut params = workspace::zeros::<T>(np)?;
        let grads = workspace::zeros::<T>(np)?;
        let mut buffers = workspace::zeros::<T>(nb)?;
        let mut counts = vec![0i64; nc];
        for op in &ops {
            if init {
                op.layer.init_params(&mut params[op.prange.clone()], &mut rng);
            }
            op.layer.init_buffers(&mut buffers[op.brange.clone()], &mut counts[op.crange.clone()]);
        }
        let (prefix, affine) = input_prefix(&specs, &ops);
        let affine = affine.map(|(s, o)| (T::from_f64(s), T::from_f64(o)));
        Ok(Sequential {
            specs,
            ops,
            params,
            grads,
            buffers,
            counts,
            entries,
            state,
            rng,
            ws: Workspace::default(),
            cache: None,
            prefix,
            affine,
            report_every: Duration::from_millis(100),
            diag: Default::default(),
            last_diagnostics: None,
            clip_norms: Vec::new(),
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

    /// Every `state_dict` entry (parameters and buffers), in torch's order.
    pub fn state_entries(&self) -> &[StateEntry] {
        &self.state
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

    /// The flat gradient buffer, writable (e.g. to all-reduce it in place
    /// for data-parallel training with a custom loop).
    pub fn grads_mut(&mut self) -> &mut [T] {
        &mut self.grads
    }

    /// The layers' float buffers (running statistics), flat.
    pub fn buffers(&self) -> &[T] {
        &self.buffers
    }

    /// The layers' integer buffers (`num_batches_tracked`), flat.
    pub fn counts(&self) -> &[i64] {
        &self.counts
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

    /// Replaces parameters and buffers by name, all or nothing: every entry
    /// must name a `state_dict` entry, have its shape and kind and be
    /// finite (counts: non-negative), and every entry must be given, or
    /// nothing changes.
    pub fn load_state(&mut self, values: &[(String, Vec<usize>, StateValues<T>)]) -> Result<()> {
        let mut seen = vec![false; self.state.len()];
        for (name, shape, v) in values {
            let Some(i) = self.state.iter().position(|e| &e.name == name) else {
                let names: Vec<&str> = self.state.iter().map(|e| e.name.as_str()).collect();
                return Err(Error::value(format!(
                    "unexpected key {name:?} in state_dict; expected keys {names:?}"
                )));
            };
            let e = &self.state[i];
            let len = match v {
                StateValues::Float(f) => f.len(),
                StateValues::Count(c) => c.len(),
            };
            if *shape != e.shape || len != e.range.len() {
                return Err(Error::shape(format!(
                    "state_dict entry {name:?} has shape {shape:?}, expected {:?}",
                    e.shape
                )));
            }
            match (v, e.kind) {
                (StateValues::Float(f), StateKind::Param | StateKind::Buffer) => {
                    if let Some(j) = f.iter().position(|x| !x.is_finite()) {
                        return Err(Error::non_finite(format!(
                            "state_dict entry {name:?} contains NaN or inf (flat index {j})"
                        )));
                    }
                }
                (StateValues::Count(c), StateKind::Count) => {
                    if let Some(&bad) = c.iter().find(|&&x| x < 0) {
                        return Err(Error::value(format!(
                            "state_dict entry {name:?} must be a count >= 0, got {bad}"
                        )));
                    }
                }
                _ => {
                    let want = if e.kind == StateKind::Count { "integers" } else { "floats" };
                    return Err(Error::value(format!("state_dict entry {name:?} must hold {want}")));
                }
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::value(format!("state_dict entry {name:?} given twice")));
            }
        }
        let missing: Vec<&str> =
            self.state.iter().zip(&seen).filter(|(_, s)| !**s).map(|(e, _)| e.name.as_str()).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
            let word = if missing.len() == 1 { "key" } else { "keys" };
            return Err(Error::value(format!("missing {word} {list} in state_dict")));
        }
        for (name, _, v) in values {
            if let Some(e) = self.state.iter().find(|e| &e.name == name) {
                match (v, e.kind) {
                    (StateValues::Float(f), StateKind::Param) => {
                        self.params[e.range.clone()].copy_from_slice(f)
                    }
                    (StateValues::Float(f), StateKind::Buffer) => {
                        self.buffers[e.range.clone()].copy_from_slice(f)
                    }
                    (StateValues::Count(c), StateKind::Count) => {
                        self.counts[e.range.clone()].copy_from_slice(c)
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Per-sample output shape of every spec (layer) for a per-sample input shape.
    pub fn layer_shapes(&self, input: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut shape = input.to_vec();
        let mut out = Vec::with_capacity(self.specs.len());
        for (i, s) in self.specs.iter().enumerate() {
            shape = s.build::<T>()?.output_shape(&shape).map_err(|e| layer_error(i, s, e))?;
            out.push(shape.clone());
        }
        Ok(out)
    }

    /// Per-sample output shape for a per-sample input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(self.layer_shapes(input)?.pop().unwrap_or_default())
    }

    /// Forward pass on `n` samples; returns the output (`n x` output shape).
    /// In training mode it updates the layers' running statistics and keeps
    /// what [`Sequential::backward`] needs.
    pub fn forward(&mut self, x: &Features<'_>, n: usize, shape: &[usize], training: bool) -> Result<&[T]> {
        self.check_input(x, n, shape, "input")?;
        self.plan(shape, n, training)?;
        self.check_batch(n, training)?;
        let in_len = self.in_len();
        self.load(x, crate::data::Rows::Range(0, n), in_len);
        let key = if training { self.rng.next_u64() } else { 0 };
        let pass = if training { Pass::train(key) } else { Pass::EVAL };
        self.run_layers(n, pass);
        self.cache = if training { Some(Cache { n, pass }) } else { None };
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
        self.backward_loaded(cache.n, cache.pass, true, |_, _, _| {});
        Ok(())
    }

    /// Applies one optimizer step to the parameters with the current gradients.
    pub fn optimizer_step(&mut self, opt: &mut Optimizer<T>) -> Result<()> {
        opt.step(&mut self.params, &self.grads)
    }
}

/// Prefixes a layer's error with its index and name.
fn layer_error(i: usize, spec: &LayerSpec, e: Error) -> Error {
    Error { message: format!("layer {i} ({}): {}", spec.display_name(), e.message), ..e }
}

#[cfg(test)]
mod tests;
