//! Training diagnostics and gradient clipping over the model's parameters.
//!
//! Per parameter: the L2 norm of its gradient (as backprop computed it,
//! before any clipping), of its weights (before the step's update), and the
//! update-to-weight ratio `||w_new - w_old|| / ||w_old||`. Per activation
//! layer: the fraction of dead ReLU units (a unit, a feature of a vector or
//! a channel of an image or signal, whose output is 0 for every sample and
//! position of the batch), and the fraction of saturated sigmoid or tanh
//! outputs (within [`SATURATION`] of the asymptotes, where the derivative
//! is under 4% of its largest value for sigmoid, 2% for tanh). Every value
//! is per step; an epoch reports the means over its steps.

use super::workspace::{Grad, Pass};
use super::Sequential;
use crate::clip::ClipNorm;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::norms::{self, count_outside, diff_sumsq, sumsq_pair_copy, unit_max, vector_norm};
use crate::layers::{numel, LayerSpec, Layout};
use crate::model::graph::{GraphSpec, NodeSpec, Plan};
use crate::model::train::{Data, Losses, Totals};
use crate::optim::Optimizer;
use std::cmp::Ordering;
use std::ops::Range;

/// Sigmoid outputs below this or above `1 - SATURATION`, and tanh outputs
/// beyond `±(1 - SATURATION)`, count as saturated.
pub const SATURATION: f64 = 0.01;

/// One parameter's diagnostics (means over an epoch's steps).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamStats {
    pub name: String,
    pub grad_norm: f64,
    pub weight_norm: f64,
    /// NaN where there was no update (a one-batch report) or the weights
    /// were all zero at every step.
    pub update_ratio: f64,
}

/// What an activation layer's fraction counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationStat {
    /// ReLU units that are zero for the whole batch.
    Dead,
    /// Sigmoid or tanh outputs in saturation.
    Saturated,
}

/// One activation layer's diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationStats {
    /// The node's index in the model (the layer's, for a `Sequential`).
    pub layer: usize,
    pub stat: ActivationStat,
    pub fraction: f64,
}

/// Diagnostics of an epoch (means over `steps` steps) or of one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics {
    pub steps: usize,
    pub params: Vec<ParamStats>,
    pub activations: Vec<ActivationStats>,
}

#[derive(Clone, Copy, Debug)]
enum Watch {
    Relu,
    Sigmoid,
    Tanh,
}

/// An activation layer whose output sits at op boundary `boundary`.
#[derive(Clone, Copy, Debug)]
struct Monitor {
    boundary: usize,
    layer: usize,
    watch: Watch,
}

/// Sums over an epoch's steps and the buffers the statistics need; kept
/// out of the model while an epoch runs (so the optimizer's per-layer
/// callback can use it) and allocated once, at the epoch's start.
pub(crate) struct DiagState<T> {
    on: bool,
    entries: Vec<(String, Range<usize>)>,
    monitors: Vec<Monitor>,
    /// The weights before the update, for parameters outside the
    /// optimizer's ranges (allocated only for them).
    prev: Vec<T>,
    units: Vec<T>,
    pairs: Vec<[f64; 2]>,
    triples: Vec<[f64; 3]>,
    parts: Vec<f64>,
    grad: Vec<f64>,
    weight: Vec<f64>,
    ratio: Vec<f64>,
    ratio_steps: Vec<usize>,
    act: Vec<f64>,
    steps: usize,
}

impl<T> Default for DiagState<T> {
    fn default() -> Self {
        DiagState {
            on: false,
            entries: Vec::new(),
            monitors: Vec::new(),
            prev: Vec::new(),
            units: Vec::new(),
            pairs: Vec::new(),
            triples: Vec::new(),
            parts: Vec::new(),
            grad: Vec::new(),
            weight: Vec::new(),
            ratio: Vec::new(),
            ratio_steps: Vec::new(),
            act: Vec::new(),
            steps: 0,
        }
    }
}

impl<T: Float> DiagState<T> {
    pub(crate) fn on(&self) -> bool {
        self.on
    }

    pub(crate) fn stop(&mut self) {
        self.on = false;
    }

    /// Counts a step (when collecting).
    pub(crate) fn end_step(&mut self) {
        self.steps += usize::from(self.on);
    }

    /// Adds one parameter's step: its gradient norm, and the squared norms
    /// of its weights and of their update (`None`: no update).
    fn record(&mut self, i: usize, grad_norm: f64, wsq: f64, dsq: Option<f64>) {
        self.grad[i] += grad_norm;
        self.weight[i] += wsq.sqrt();
        if let Some(d) = dsq {
            if wsq > 0.0 {
                self.ratio[i] += (d / wsq).sqrt();
                self.ratio_steps[i] += 1;
            }
        }
    }

    /// Updates the parameters inside `window` with `opt`, one parameter at
    /// a time (the bits of one update), measuring each: in the optimizer's
    /// pass when the parameter lies inside one of its ranges, otherwise
    /// with a copy of the weights. `grad_norms` replaces the measured
    /// gradient norms (the norms before clipping).
    pub(crate) fn update(
        &mut self,
        opt: &mut Optimizer<T>,
        params: &mut [T],
        grads: &[T],
        window: Range<usize>,
        grad_norms: Option<&[f64]>,
    ) -> Result<()> {
        for i in 0..self.entries.len() {
            let r = self.entries[i].1.clone();
            if r.start < window.start || r.end > window.end || r.is_empty() {
                continue;
            }
            let (gn, ws, ds) = match opt.step_part_measured(params, grads, r.clone(), &mut self.triples)? {
                Some([gs, ws, ds]) => (gs.sqrt(), ws, ds),
                None => {
                    if self.prev.len() < params.len() {
                        self.prev = super::workspace::zeros(params.len())?;
                    }
                    let (g, prev) = (&grads[r.clone()], &mut self.prev[r.clone()]);
                    let (gs, ws) = sumsq_pair_copy(g, &params[r.clone()], prev, &mut self.pairs);
                    opt.step_part(params, grads, r.clone())?;
                    (gs.sqrt(), ws, diff_sumsq(&params[r.clone()], &self.prev[r], &mut self.parts))
                }
            };
            self.record(i, grad_norms.map_or(gn, |n| n[i]), ws, Some(ds));
        }
        Ok(())
    }

    /// Records the gradient and weight norms of every parameter, no update.
    fn record_norms(&mut self, params: &[T], grads: &[T]) {
        for i in 0..self.entries.len() {
            let r = self.entries[i].1.clone();
            let gn = vector_norm(&grads[r.clone()], 2.0, &mut self.parts);
            let wn = vector_norm(&params[r], 2.0, &mut self.parts);
            self.record(i, gn, wn * wn, None);
        }
    }

    /// The means so far.
    fn summary(&self, with_update: bool) -> Diagnostics {
        let steps = self.steps.max(1) as f64;
        let params = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (name, _))| ParamStats {
                name: name.clone(),
                grad_norm: self.grad[i] / steps,
                weight_norm: self.weight[i] / steps,
                update_ratio: if with_update && self.ratio_steps[i] > 0 {
                    self.ratio[i] / self.ratio_steps[i] as f64
                } else {
                    f64::NAN
                },
            })
            .collect();
        let activations = self
            .monitors
            .iter()
            .zip(&self.act)
            .map(|(m, &a)| ActivationStats {
                layer: m.layer,
                stat: match m.watch {
                    Watch::Relu => ActivationStat::Dead,
                    Watch::Sigmoid | Watch::Tanh => ActivationStat::Saturated,
                },
                fraction: a / steps,
            })
            .collect();
        Diagnostics { steps: self.steps, params, activations }
    }
}

impl<T: Float> Sequential<T> {
    /// Starts collecting diagnostics (zeroed sums; buffers sized once).
    pub(crate) fn diag_begin(&mut self) -> Result<()> {
        let d = &mut self.diag;
        d.on = true;
        d.entries = self.entries.iter().map(|e| (e.name.clone(), e.range.clone())).collect();
        d.monitors = monitors(&self.graph, &self.plan);
        let k = d.entries.len();
        for v in [&mut d.grad, &mut d.weight, &mut d.ratio] {
            v.clear();
            v.resize(k, 0.0);
        }
        d.ratio_steps.clear();
        d.ratio_steps.resize(k, 0);
        d.act.clear();
        d.act.resize(d.monitors.len(), 0.0);
        d.steps = 0;
        Ok(())
    }

    /// Activation statistics of the batch of `n` samples just forwarded.
    pub(crate) fn diag_activations(&mut self, n: usize) {
        let d = &mut self.diag;
        let ws = &self.ws;
        for (j, m) in d.monitors.iter().enumerate() {
            let shape = &ws.shapes[m.boundary];
            let y = &ws.acts[m.boundary][..n * numel(shape)];
            let frac = match m.watch {
                Watch::Relu => {
                    // Units: features of a vector, channels otherwise.
                    let (rows, units, inner) = match (shape.len(), ws.layouts[m.boundary]) {
                        (0 | 1, _) => (n, numel(shape), 1),
                        (_, Layout::ChannelsLast) => {
                            let c = shape[0];
                            (n * (numel(shape) / c.max(1)), c, 1)
                        }
                        (_, Layout::Planar) => (n, shape[0], numel(&shape[1..])),
                    };
                    if d.units.len() < units {
                        d.units.resize(units, T::ZERO);
                    }
                    let u = &mut d.units[..units];
                    unit_max(y, rows, units, inner, u);
                    // A unit is alive when some output is > 0 (NaN counts as dead).
                    let dead =
                        u.iter().filter(|v| v.partial_cmp(&&T::ZERO) != Some(Ordering::Greater)).count();
                    dead as f64 / units.max(1) as f64
                }
                Watch::Sigmoid => {
                    count_outside(y, SATURATION, 1.0 - SATURATION, &mut d.parts) as f64
                        / y.len().max(1) as f64
                }
                Watch::Tanh => {
                    let h = 1.0 - SATURATION;
                    count_outside(y, -h, h, &mut d.parts) as f64 / y.len().max(1) as f64
                }
            };
            d.act[j] += frac;
        }
    }

    /// Ends an epoch's collection: the means over its steps.
    pub(crate) fn diag_end(&mut self) -> Diagnostics {
        let out = self.diag.summary(true);
        self.diag.on = false;
        out
    }

    /// Diagnostics of the last epoch trained with
    /// [`crate::EpochOptions::diagnostics`] on.
    pub fn last_diagnostics(&self) -> Option<&Diagnostics> {
        self.last_diagnostics.as_ref()
    }

    /// Gradient norms, weight norms and activation statistics of one
    /// training-mode pass over `data` as a single batch (dropout with a
    /// fixed mask, BatchNorm with batch statistics), without an update.
    /// Parameters, gradients, buffers and the random state are left as they
    /// were; `update_ratio` is NaN.
    pub fn diagnose(&mut self, data: Data<'_, T>, loss: &Losses) -> Result<Diagnostics> {
        self.load_whole(&data, loss)?;
        let pass = Pass::frozen(0xd1a6_0f10_77e5_7a11_u64);
        self.diag_begin()?;
        let mut t = Totals::default();
        let result = self.forward_loss(data.n, pass, loss, &data, data.weights.is_some(), Grad::Mean, &mut t);
        if let Err(e) = result {
            self.diag.stop();
            return Err(e);
        }
        let saved = std::mem::take(&mut self.grads);
        self.grads = super::workspace::zeros(saved.len())?;
        self.backward_loaded(data.n, pass, false, |_, _, _| {});
        let mut d = std::mem::take(&mut self.diag);
        d.record_norms(&self.params, &self.grads);
        d.steps = 1;
        let report = d.summary(false);
        d.on = false;
        self.diag = d;
        self.grads = saved;
        self.cache = None;
        Ok(report)
    }

    /// The `norm_type`-norm of each listed parameter's gradient (indices into
    /// [`Sequential::entries`]).
    pub fn grad_norms(&mut self, params: &[usize], norm_type: f64) -> Result<Vec<f64>> {
        crate::clip::check_norm_type(norm_type)?;
        let mut out = Vec::with_capacity(params.len());
        for &i in params {
            let r = self.entry_range(i)?;
            out.push(vector_norm(&self.grads[r], norm_type, &mut self.diag.parts));
        }
        Ok(out)
    }

    /// Multiplies the listed parameters' gradients by `coef`.
    pub fn scale_grads(&mut self, params: &[usize], coef: f64) -> Result<()> {
        let ranges = params.iter().map(|&i| self.entry_range(i)).collect::<Result<Vec<_>>>()?;
        let c = T::from_f64(coef);
        for r in ranges {
            norms::scale(&mut self.grads[r], c);
        }
        Ok(())
    }

    fn entry_range(&self, i: usize) -> Result<Range<usize>> {
        self.entries
            .get(i)
            .map(|e| e.range.clone())
            .ok_or_else(|| Error::value(format!("no parameter {i} (the model has {})", self.entries.len())))
    }

    /// Clips all gradients to a total norm of `clip.max_norm`; returns the
    /// total norm before clipping. A non-finite norm is an error, and the
    /// gradients are left as they were.
    pub(crate) fn clip_all(&mut self, clip: ClipNorm) -> Result<f64> {
        let mut norms = std::mem::take(&mut self.clip_norms);
        norms.clear();
        for e in &self.entries {
            norms.push(vector_norm(&self.grads[e.range.clone()], clip.norm_type, &mut self.diag.parts));
        }
        let total = norms::norm_of(&norms, clip.norm_type);
        self.clip_norms = norms;
        if !total.is_finite() {
            return Err(Error::non_finite(format!("the gradient norm became {total}")));
        }
        let coef = clip.coef(total);
        if coef < 1.0 {
            let c = T::from_f64(coef);
            for e in &self.entries {
                norms::scale(&mut self.grads[e.range.clone()], c);
            }
        }
        Ok(total)
    }
}

/// The activation nodes to watch and the value holding each one's output
/// (a fused activation's is its layer's output).
fn monitors(graph: &GraphSpec, plan: &Plan) -> Vec<Monitor> {
    let k = graph.inputs.len();
    let mut out = Vec::new();
    for (node, nd) in graph.nodes.iter().enumerate() {
        let watch = match &graph.layers[nd.layer].spec {
            NodeSpec::Layer(LayerSpec::ReLU(_)) => Watch::Relu,
            NodeSpec::Layer(LayerSpec::Sigmoid(_)) => Watch::Sigmoid,
            NodeSpec::Layer(LayerSpec::Tanh(_)) => Watch::Tanh,
            _ => continue,
        };
        out.push(Monitor { boundary: plan.value[k + node], layer: node, watch });
    }
    out
}
