//! Layers. Each layer is one file; [`LayerSpec`] and [`LayerSpec::build`] are
//! the one list a new layer is registered in.
//!
//! Layers own no buffers: the model hands each one its parameter and gradient
//! slices and the activation buffers of the current batch. All tensors are
//! batch-first and contiguous; shapes passed to layers are per sample.

mod activation;
mod dense;
mod dropout;
mod flatten;
mod rescaling;
mod softmax;

pub use activation::Activation;
pub use dense::{Dense, Init};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use rescaling::Rescaling;
pub use softmax::Softmax;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::Act;
use crate::rng::Rng;

/// Per-call facts a layer may need.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Training mode (dropout active).
    pub training: bool,
    /// Random stream for this forward pass (dropout masks).
    pub key: u64,
}

/// A parameter a layer declares: its name suffix (`"weight"`, `"bias"`) and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: &'static str,
    pub shape: Vec<usize>,
}

impl ParamDecl {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A differentiable layer.
pub trait Layer<T: Float>: Send + Sync {
    /// The layer's type name, as in torch (`"Linear"` is called `"Dense"` here).
    fn name(&self) -> &'static str;
    /// Parameters, in `state_dict` order and layout.
    fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }
    /// Fills the parameters (laid out as [`Layer::params`]) with initial values.
    fn init_params(&self, _params: &mut [T], _rng: &mut Rng) {}
    /// Per-sample output shape for a per-sample input shape, or why it does not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;
    /// `y = f(x)` for `n` samples with per-sample input shape `shape`.
    fn forward(&self, ctx: Ctx, p: &[T], x: &[T], y: &mut [T], n: usize, shape: &[usize]);
    /// Given `dy = dL/dy` (which the layer may overwrite), adds `dL/dp` into
    /// `g` (or overwrites it when `!accumulate`) and writes `dL/dx` into `dx`
    /// when asked for.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        ctx: Ctx,
        p: &[T],
        g: &mut [T],
        x: &[T],
        y: &[T],
        dy: &mut [T],
        dx: Option<&mut [T]>,
        n: usize,
        shape: &[usize],
        accumulate: bool,
    );
    /// Folds a following activation into this layer; returns `false` when it
    /// cannot (the model then keeps the activation as its own layer).
    fn fuse_activation(&mut self, _act: Act) -> bool {
        false
    }
}

/// A layer's configuration, as the Python side describes it.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    Dense { in_features: usize, out_features: usize, bias: bool, init: Init },
    ReLU,
    LeakyReLU { negative_slope: f64 },
    Sigmoid,
    Tanh,
    GELU,
    Softmax,
    Dropout { p: f64 },
    Flatten,
    Rescaling { scale: f64, offset: f64 },
}

impl LayerSpec {
    /// The activation this spec is, if it is one.
    pub fn activation(&self) -> Option<Act> {
        match *self {
            LayerSpec::ReLU => Some(Act::Relu),
            LayerSpec::LeakyReLU { negative_slope } => Some(Act::LeakyRelu(negative_slope)),
            LayerSpec::Sigmoid => Some(Act::Sigmoid),
            LayerSpec::Tanh => Some(Act::Tanh),
            LayerSpec::GELU => Some(Act::Gelu),
            _ => None,
        }
    }

    /// Checks the configuration's values.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LayerSpec::Dense { in_features, out_features, .. } if in_features == 0 || out_features == 0 => {
                return Err(Error::value(format!(
                    "Dense: in_features and out_features must be >= 1, got ({in_features}, {out_features})"
                )));
            }
            LayerSpec::LeakyReLU { negative_slope } if !negative_slope.is_finite() => {
                return Err(Error::value(format!(
                    "LeakyReLU: negative_slope must be finite, got {negative_slope}"
                )));
            }
            LayerSpec::Dropout { p } if !(0.0..1.0).contains(&p) => {
                return Err(Error::value(format!("Dropout: p must be in [0, 1), got {p}")));
            }
            LayerSpec::Rescaling { scale, offset } if !scale.is_finite() || !offset.is_finite() => {
                return Err(Error::value(format!(
                    "Rescaling: scale and offset must be finite, got ({scale}, {offset})"
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// Builds the layer.
    pub fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        self.validate()?;
        Ok(match *self {
            LayerSpec::Dense { in_features, out_features, bias, init } => {
                Box::new(Dense::new(in_features, out_features, bias, init))
            }
            LayerSpec::Softmax => Box::new(Softmax),
            LayerSpec::Dropout { p } => Box::new(Dropout::new(p)),
            LayerSpec::Flatten => Box::new(Flatten),
            LayerSpec::Rescaling { scale, offset } => Box::new(Rescaling { scale, offset }),
            ref s => match s.activation() {
                Some(act) => Box::new(Activation::new(act, s.display_name())),
                None => return Err(Error::value(format!("unknown layer {s:?}"))),
            },
        })
    }

    /// The torch-style class name.
    pub fn display_name(&self) -> &'static str {
        match self {
            LayerSpec::Dense { .. } => "Dense",
            LayerSpec::ReLU => "ReLU",
            LayerSpec::LeakyReLU { .. } => "LeakyReLU",
            LayerSpec::Sigmoid => "Sigmoid",
            LayerSpec::Tanh => "Tanh",
            LayerSpec::GELU => "GELU",
            LayerSpec::Softmax => "Softmax",
            LayerSpec::Dropout { .. } => "Dropout",
            LayerSpec::Flatten => "Flatten",
            LayerSpec::Rescaling { .. } => "Rescaling",
        }
    }
}

/// Per-sample element count of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
