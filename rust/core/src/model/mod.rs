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
mod graph;
mod parallel;
mod train;
mod workspace;

pub use diagnostics::{ActivationStat, ActivationStats, Diagnostics, ParamStats, SATURATION};
pub use gradcheck::GradCheck;
pub use graph::{GraphInput, GraphLayer, GraphNode, GraphSpec, NodeSpec};
pub use parallel::{GradHook, Parallel};
pub use train::{Data, EpochOptions, Flow, Losses, Progress, Totals};

use crate::data::Features;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::{numel, BufferKind, DenseSpec, Layer, LayerSpec, Merge, RescalingSpec};
use crate::memory;
use crate::optim::Optimizer;
use crate::rng::Rng;
use graph::{OpView, Plan};
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

/// What an op runs: a single-input layer (unchanged by graphs), or a merge.
pub(crate) enum Kind<T: Float> {
    Layer(Box<dyn Layer<T>>),
    Merge(Box<dyn Merge<T>>),
}

pub(crate) struct Op<T: Float> {
    pub(crate) kind: Kind<T>,
    /// Index of the graph layer this op calls (names and messages).
    pub(crate) spec: usize,
    /// Storage values it reads.
    pub(crate) inputs: Vec<usize>,
    pub(crate) prange: Range<usize>,
    /// Its float and integer buffers.
    pub(crate) brange: Range<usize>,
    pub(crate) crange: Range<usize>,
}

impl<T: Float> Op<T> {
    /// The single-input layer, if it is one.
    pub(crate) fn layer(&self) -> Option<&dyn Layer<T>> {
        match &self.kind {
            Kind::Layer(l) => Some(l.as_ref()),
            Kind::Merge(_) => None,
        }
    }
}

/// What the last training-mode forward pass (of the step API) left for
/// `backward`.
#[derive(Clone, Copy, Debug)]
struct Cache {
    n: usize,
    pass: Pass,
}

/// A model: a graph of layers (a chain for `torch.nn.Sequential`'s stack,
/// or any directed acyclic graph of layers and merges, with several inputs
/// and outputs) with one flat parameter buffer, one flat gradient buffer,
/// the layers' buffers and a workspace reused from batch to batch.
pub struct Sequential<T: Float> {
    graph: GraphSpec,
    /// Per graph layer: how messages name it.
    labels: Vec<String>,
    ops: Vec<Op<T>>,
    plan: Plan,
    /// Storage values of the outputs.
    outs: Vec<usize>,
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
/// gradient is computed below the first layer with parameters. Only for a
/// graph with one input whose leading ops form a chain (each op reads the
/// one before and is its only reader, and none is an output).
fn input_prefix<T: Float>(
    graph: &GraphSpec,
    ops: &[Op<T>],
    plan: &Plan,
    outs: &[usize],
) -> (usize, Option<(f64, f64)>) {
    let mut affine = None;
    let mut count = 0;
    if graph.inputs.len() != 1 {
        return (0, None);
    }
    for (j, op) in ops.iter().enumerate() {
        // Op j reads storage value j (the input, or op j-1's output) alone.
        if op.inputs != [j] || plan.consumers[j].len() != 1 || outs.contains(&(j + 1)) {
            break;
        }
        match &graph.layers[op.spec].spec {
            NodeSpec::Layer(LayerSpec::Flatten(_)) => {}
            NodeSpec::Layer(LayerSpec::Rescaling(RescalingSpec { scale, offset })) if affine.is_none() => {
                affine = Some((*scale, *offset))
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
        Self::new_chain(specs, seed, true)
    }

    /// Builds the model with zero parameters and fresh buffers, skipping the
    /// weight initialisation (and its draws from the generator): for loading
    /// weights that replace them all.
    pub fn new_uninit(specs: Vec<LayerSpec>, seed: u64) -> Result<Self> {
        Self::new_chain(specs, seed, false)
    }

    /// Builds and initialises a graph model (parameters named
    /// `"{layer name}.{parameter}"`); `init` false: as
    /// [`Sequential::new_uninit`].
    pub fn from_graph(graph: GraphSpec, seed: u64, init: bool) -> Result<Self> {
        if let Some(specs) = graph.chain_specs() {
            return Self::new_chain(specs, seed, init).map(|mut m| {
                m.graph.inputs = graph.inputs;
                m
            });
        }
        Self::build(graph, seed, init)
    }

    fn new_chain(specs: Vec<LayerSpec>, seed: u64, init: bool) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::value("Sequential needs at least one layer"));
        }
        for (i, s) in specs.iter().enumerate() {
            s.validate().map_err(|e| Error { message: format!("layer {i}: {}", e.message), ..e })?;
        }
        check_chain(&specs)?;
        Self::build(GraphSpec::chain(specs), seed, init)
    }

    fn build(graph: GraphSpec, seed: u64, init: bool) -> Result<Self> {
        graph.check()?;
        let chain = graph.is_chain();
        let labels: Vec<String> = graph
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let ty = l.spec.display_name();
                if chain {
                    format!("layer {i} ({ty})")
                } else {
                    format!("layer {:?} ({ty})", l.name)
                }
            })
            .collect();
        if !chain {
            for (l, label) in graph.layers.iter().zip(&labels) {
                if let NodeSpec::Layer(s) = &l.spec {
                    s.validate().map_err(|e| Error { message: format!("{label}: {}", e.message), ..e })?;
                }
            }
        }
        // Parameters and buffers, per layer in the graph's order.
        let mut entries = Vec::new();
        let mut state = Vec::new();
        let (mut np, mut nb, mut nc) = (0usize, 0usize, 0usize);
        let mut ranges = Vec::with_capacity(graph.layers.len());
        let mut inits: Vec<Option<Box<dyn Layer<T>>>> = Vec::with_capacity(graph.layers.len());
        for l in &graph.layers {
            let (p0, b0, c0) = (np, nb, nc);
            let NodeSpec::Layer(spec) = &l.spec else {
                ranges.push((p0..np, b0..nb, c0..nc));
                inits.push(None);
                continue;
            };
            let layer = spec.build::<T>()?;
            for d in layer.params() {
                let end = np.checked_add(count(&d.shape)?).ok_or_else(workspace::too_big)?;
                let name = format!("{}.{}", l.name, d.name);
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
                    name: format!("{}.{}", l.name, d.name),
                    shape: d.shape,
                    kind,
                    range: *at..end,
                });
                *at = end;
            }
            ranges.push((p0..np, b0..nb, c0..nc));
            inits.push(Some(layer));
        }
        // Ops: one per node, an activation folded into the layer before it
        // when that layer's output has no other reader and is no output.
        let k = graph.inputs.len();
        let mut readers = vec![0usize; graph.num_values()];
        for node in &graph.nodes {
            for &v in &node.inputs {
                readers[v] += 1;
            }
        }
        let mut value: Vec<usize> = (0..k).collect();
        let mut ops: Vec<Op<T>> = Vec::new();
        let mut j = 0;
        while j < graph.nodes.len() {
            let node = &graph.nodes[j];
            let l = node.layer;
            let inputs: Vec<usize> = node.inputs.iter().map(|&v| value[v]).collect();
            let (prange, brange, crange) = ranges[l].clone();
            let kind = match &graph.layers[l].spec {
                NodeSpec::Merge(m) => Kind::Merge(m.build::<T>()),
                NodeSpec::Layer(spec) => {
                    let mut layer = spec.build::<T>()?;
                    let out = k + j;
                    let next = graph.nodes.get(j + 1);
                    let fusable = next.is_some_and(|n| n.inputs == [out])
                        && readers[out] == 1
                        && !graph.outputs.contains(&out);
                    let act = next.and_then(|n| match &graph.layers[n.layer].spec {
                        NodeSpec::Layer(s) => s.activation(),
                        NodeSpec::Merge(_) => None,
                    });
                    if let (true, Some(act)) = (fusable, act) {
                        if layer.fuse_activation(act) {
                            value.push(k + ops.len());
                            j += 1;
                        }
                    }
                    Kind::Layer(layer)
                }
            };
            value.push(k + ops.len());
            ops.push(Op { kind, spec: l, inputs, prange, brange, crange });
            j += 1;
        }
        let outs: Vec<usize> = graph.outputs.iter().map(|&o| value[o]).collect();
        let views: Vec<OpView<'_>> = ops.iter().map(op_view).collect();
        let plan = Plan::new(k, &views, &outs, value);
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
        for (layer, (pr, br, cr)) in inits.iter().zip(&ranges) {
            if let Some(layer) = layer {
                if init {
                    layer.init_params(&mut params[pr.clone()], &mut rng);
                }
                layer.init_buffers(&mut buffers[br.clone()], &mut counts[cr.clone()]);
            }
        }
        let (prefix, affine) = input_prefix(&graph, &ops, &plan, &outs);
        let affine = affine.map(|(s, o)| (T::from_f64(s), T::from_f64(o)));
        let model = Sequential {
            graph,
            labels,
            ops,
            plan,
            outs,
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
        };
        // Shapes declared with the inputs: refuse what does not fit now.
        if let Some(shapes) = model.graph.inputs.iter().map(|i| i.shape.clone()).collect::<Option<Vec<_>>>() {
            model.node_shapes(&shapes)?;
        }
        Ok(model)
    }

    /// The graph, as given (a `Sequential` is a chain).
    pub fn graph(&self) -> &GraphSpec {
        &self.graph
    }

    /// The layer specifications of a chain, as given (empty for other graphs).
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.graph.chain_specs().unwrap_or_default()
    }

    /// The number of inputs.
    pub fn num_inputs(&self) -> usize {
        self.graph.inputs.len()
    }

    /// The number of outputs.
    pub fn num_outputs(&self) -> usize {
        self.outs.len()
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

    /// Per-sample output shape of every graph node for the inputs'
    /// per-sample shapes (of every layer, for a chain).
    pub fn node_shapes(&self, inputs: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::value(format!(
                "the model has {} inputs, got {} shapes",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let mut values: Vec<Vec<usize>> = inputs.to_vec();
        for node in &g.nodes {
            let layer = &g.layers[node.layer];
            let label = &self.labels[node.layer];
            let shape = match &layer.spec {
                NodeSpec::Layer(s) => s
                    .build::<T>()?
                    .output_shape(&values[node.inputs[0]])
                    .map_err(|e| Error { message: format!("{label}: {}", e.message), ..e })?,
                NodeSpec::Merge(m) => {
                    let shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| values[v].as_slice()).collect();
                    m.build::<T>()
                        .output_shape(&shapes)
                        .map_err(|e| merge_error(g, label, node, &values, e))?
                }
            };
            values.push(shape);
        }
        Ok(values.split_off(g.inputs.len()))
    }

    /// Per-sample output shape of every spec (layer) for a per-sample input
    /// shape (a one-input model).
    pub fn layer_shapes(&self, input: &[usize]) -> Result<Vec<Vec<usize>>> {
        self.node_shapes(&[input.to_vec()])
    }

    /// Per-sample shape of every output for the inputs' per-sample shapes.
    pub fn output_shapes(&self, inputs: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let nodes = self.node_shapes(inputs)?;
        let k = self.graph.inputs.len();
        Ok(self.graph.outputs.iter().map(|&o| nodes[o - k].clone()).collect())
    }

    /// Per-sample shape of the first output for a per-sample input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(self.output_shapes(&[input.to_vec()])?.swap_remove(0))
    }

    /// Forward pass on `n` samples of one input; returns the first output
    /// (`n x` its shape). In training mode it updates the layers' running
    /// statistics and keeps what [`Sequential::backward`] needs.
    pub fn forward(&mut self, x: &Features<'_>, n: usize, shape: &[usize], training: bool) -> Result<&[T]> {
        self.forward_inputs(&[(*x, shape)], n, training)?;
        Ok(self.output(0))
    }

    /// Forward pass on `n` samples of every input (features and per-sample
    /// shape, in input order); read the outputs with [`Sequential::output`].
    pub fn forward_inputs(
        &mut self,
        inputs: &[(Features<'_>, &[usize])],
        n: usize,
        training: bool,
    ) -> Result<()> {
        let shapes = self.check_inputs(inputs, n, "input")?;
        self.plan(&shapes, n, training)?;
        self.check_batch(n, training)?;
        for (i, (x, _)) in inputs.iter().enumerate() {
            self.load(i, x, crate::data::Rows::Range(0, n));
        }
        let key = if training { self.rng.next_u64() } else { 0 };
        let pass = if training { Pass::train(key) } else { Pass::EVAL };
        self.run_layers(n, pass);
        self.cache = if training { Some(Cache { n, pass }) } else { None };
        Ok(())
    }

    /// Output `k` of the last forward pass (`n x` its shape).
    pub fn output(&self, k: usize) -> &[T] {
        let n = self.cache.map_or(self.ws.last_n, |c| c.n);
        let v = self.outs[k];
        &self.ws.acts[v][..n * numel(&self.ws.shapes[v])]
    }

    /// Adds the gradients of the last training-mode forward pass, given the
    /// gradient of the loss with respect to its output, of shape `shape`
    /// (which must be the output's, batch first).
    pub fn backward(&mut self, dout: &[T], shape: &[usize]) -> Result<()> {
        self.backward_outputs(&[(dout, shape)])
    }

    /// [`Sequential::backward`] with one gradient per output.
    pub fn backward_outputs(&mut self, douts: &[(&[T], &[usize])]) -> Result<()> {
        let Some(cache) = self.cache else {
            return Err(Error::state("backward() needs a preceding forward(x, training=True) on this model"));
        };
        if douts.len() != self.outs.len() {
            return Err(Error::value(format!(
                "backward() takes one gradient per output: the model has {}, got {}",
                self.outs.len(),
                douts.len()
            )));
        }
        for (k, (dout, shape)) in douts.iter().enumerate() {
            let v = self.outs[k];
            let mut want_shape = vec![cache.n];
            want_shape.extend_from_slice(&self.ws.shapes[v]);
            let want = cache.n * numel(&self.ws.shapes[v]);
            let which = if douts.len() > 1 { format!(" {k}") } else { String::new() };
            if *shape != want_shape.as_slice() || dout.len() != want {
                return Err(Error::shape(format!(
                    "gradient{which} has shape {shape:?}, expected the output's shape {want_shape:?}"
                )));
            }
            if let Some(i) = dout.iter().position(|v| !v.is_finite()) {
                return Err(Error::non_finite(format!(
                    "gradient{which} contains NaN or inf (flat index {i})"
                )));
            }
        }
        for (k, (dout, _)) in douts.iter().enumerate() {
            let v = self.outs[k];
            if let Some(slot) = self.ws.dslot(&self.plan, v) {
                slot[..dout.len()].copy_from_slice(dout);
            }
        }
        self.backward_loaded(cache.n, cache.pass, true, |_, _, _| {});
        Ok(())
    }

    /// Applies one optimizer step to the parameters with the current gradients.
    pub fn optimizer_step(&mut self, opt: &mut Optimizer<T>) -> Result<()> {
        opt.step(&mut self.params, &self.grads)
    }

    /// How messages name graph layer `l`.
    pub(crate) fn label(&self, l: usize) -> &str {
        &self.labels[l]
    }
}

/// How the plan sees an op.
fn op_view<T: Float>(op: &Op<T>) -> OpView<'_> {
    OpView {
        inputs: &op.inputs,
        layer: op.spec,
        has_params: !op.prange.is_empty(),
        layouts: op.layer().map(|l| l.layouts()),
        elementwise_merge: matches!(&op.kind, Kind::Merge(m) if m.elementwise()),
    }
}

/// A merge's shape error, naming the layers that feed it and their shapes.
fn merge_error(g: &GraphSpec, label: &str, node: &GraphNode, values: &[Vec<usize>], e: Error) -> Error {
    let feeds: Vec<String> =
        node.inputs.iter().map(|&v| format!("{} with shape {:?}", g.value_name(v), values[v])).collect();
    Error { message: format!("{label}: {} (fed by {})", e.message, feeds.join(", ")), ..e }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod graph_tests;
