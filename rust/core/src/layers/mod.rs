//! Layers. Each layer is one file, registered by one line in the
//! `layer_registry!` list below, which defines [`LayerSpec`]: the enum a
//! model is built from, its JSON (`{"type": "Dense", ...}`, what the Python
//! classes send and saved models record), its `build`, display names and
//! argument lists. Python asks the core for parameter counts and shapes
//! ([`LayerSpec::info`]), so no layer's knowledge is repeated there.
//!
//! # Adding a layer
//!
//! 1. Write `layers/my_layer.rs` (copy `dropout.rs` for a layer without
//!    parameters, `dense.rs` for one with them): the layer (a struct
//!    implementing [`Layer`]: its parameters and shapes in
//!    [`Layer::params`], forward, backward) and its configuration, a plain
//!    serde struct `MyLayerSpec` whose fields are the Python constructor's
//!    arguments in the same order, implementing [`LayerConfig`] (`NAME`,
//!    the JSON `"type"` and Python class name; `build`, which checks the
//!    values and returns the layer).
//! 2. Declare the module (`mod my_layer;`) and add one line,
//!    `MyLayer: my_layer::MyLayerSpec,`, to the `layer_registry!` list
//!    below (the name must equal `NAME`: checked at compile time).
//! 3. Give it a Python class in `python/ferrograd/layers.py` (`kind =
//!    "MyLayer"`, a docstring, an `__init__` with the same arguments that
//!    checks their types and ends with `self._check()`; its JSON, parameter
//!    count and `from_spec` come from the base class and the core).
//!    `tests/test_layer_registry.py` checks that both sides agree.
//! 4. Test it: a float64 finite-difference gradient check (a case in
//!    `tests/test_gradients.py`, or `tests/test_conv_gradients.py` for
//!    image layers), and an example with its parameter count and output
//!    shape in `tests/test_layer_registry.py` (which asks for one of each
//!    registered layer).
//!
//! Layers own no buffers. The model hands each call a context: the layer's
//! parameters, gradients and buffers (non-trainable state such as running
//! statistics), the activation buffers of the current batch, and the
//! layer's own scratch, sized by [`Layer::scratch_len`] and kept from a
//! training forward pass to its backward pass. All tensors are batch-first
//! and contiguous; shapes passed to layers are per sample (`(C, H, W)` for
//! images, as in PyTorch).

mod activation;
mod batchnorm;
mod conv;
mod conv_transpose;
mod dense;
mod dropout;
mod flatten;
mod identity;
mod merge;
mod pool;
mod rescaling;
mod softmax;
mod upsample;
#[macro_use]
mod spec;

pub use activation::Activation;
pub use batchnorm::BatchNorm;
pub use conv::Conv;
pub use conv_transpose::ConvTranspose;
pub use dense::{Dense, Init};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use identity::Identity;
pub use merge::{
    Add, Average, Concatenate, Merge, MergeBackward, MergeForward, MergeSpec, Multiply, Subtract,
};
pub use pool::{GlobalAvgPool, Pool, PoolKind};
pub use rescaling::Rescaling;
pub use softmax::Softmax;
pub(crate) use spec::{float as de_float, opt_float as de_opt_float, opt_floats as de_opt_floats};
pub use spec::{LayerConfig, LayerInfo, Padding};
pub use upsample::{Upsample, UpsampleMode};

layer_registry! {
    Dense: dense::DenseSpec,
    ReLU: activation::ReLUSpec,
    LeakyReLU: activation::LeakyReLUSpec,
    Sigmoid: activation::SigmoidSpec,
    Tanh: activation::TanhSpec,
    GELU: activation::GELUSpec,
    Softmax: softmax::SoftmaxSpec,
    Dropout: dropout::DropoutSpec,
    Flatten: flatten::FlattenSpec,
    Rescaling: rescaling::RescalingSpec,
    Conv2D: conv::Conv2DSpec,
    Conv1D: conv::Conv1DSpec,
    ConvTranspose2D: conv_transpose::ConvTranspose2DSpec,
    Upsample2D: upsample::Upsample2DSpec,
    Identity: identity::IdentitySpec,
    MaxPool2D: pool::MaxPool2DSpec,
    AvgPool2D: pool::AvgPool2DSpec,
    MaxPool1D: pool::MaxPool1DSpec,
    AvgPool1D: pool::AvgPool1DSpec,
    GlobalAvgPool2D: pool::GlobalAvgPool2DSpec,
    BatchNorm1D: batchnorm::BatchNorm1DSpec,
    BatchNorm2D: batchnorm::BatchNorm2DSpec,
}

// The buffer orders live below both the kernels and the layers (the
// convolution kernels read and write them); layers re-export them.
pub use crate::layout::{at, Layout};

use crate::error::Result;
use crate::float::Float;
use crate::kernels::activation::Act;
use crate::rng::Rng;

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

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// Values in the model's float type (`running_mean`, `running_var`).
    Float,
    /// A 64-bit integer counter (`num_batches_tracked`).
    Count,
}

/// Non-trainable state a layer declares, saved in `state_dict` with the
/// weights but never seen by optimizers or gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferDecl {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub kind: BufferKind,
}

impl BufferDecl {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Which buffer layouts a layer reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layouts {
    /// Planar only (on inputs of rank > 1).
    Planar,
    /// Either, the output in the input's layout (elementwise layers,
    /// pooling, BatchNorm).
    Preserve,
    /// Reads either, writes either (the model picks; convolutions).
    Convert,
    /// Reads either, writes a rank-1 sample (Flatten, global pooling).
    Flatten,
}

/// A layer's buffers during a forward pass: read-only, or writable in a
/// training pass that is allowed to update running statistics.
pub enum Buffers<'a, T> {
    /// Evaluation, or a training-mode pass that must leave the state as it
    /// is (finite-difference checks).
    Frozen { values: &'a [T], counts: &'a [i64] },
    /// A training pass: the layer may update its buffers.
    Update { values: &'a mut [T], counts: &'a mut [i64] },
}

impl<T> Buffers<'_, T> {
    /// The float buffers, for reading.
    pub fn values(&self) -> &[T] {
        match self {
            Buffers::Frozen { values, .. } => values,
            Buffers::Update { values, .. } => values,
        }
    }
}

/// Everything one forward call sees.
pub struct Forward<'a, T> {
    /// The layer's parameters, laid out as [`Layer::params`] declares.
    pub params: &'a [T],
    pub buffers: Buffers<'a, T>,
    /// Input, `n x numel(in_shape)`.
    pub x: &'a [T],
    /// Output to write, `n x numel(out_shape)`.
    pub y: &'a mut [T],
    /// The layer's scratch, [`Layer::scratch_len`] for at least `n` samples;
    /// what a training pass leaves here is there for its backward pass.
    pub scratch: &'a mut [T],
    pub n: usize,
    pub in_shape: &'a [usize],
    pub out_shape: &'a [usize],
    /// How `x` and `y` are ordered (see [`Layer::layouts`]).
    pub in_layout: Layout,
    pub out_layout: Layout,
    /// Training mode (dropout active, batch statistics).
    pub training: bool,
    /// Random stream for this pass (dropout masks).
    pub key: u64,
    /// Where this batch's first sample stands in the step's whole batch:
    /// 0, except for a data-parallel process's part of a larger batch.
    /// Random draws are made by a sample's place in the whole batch, so
    /// every process draws what one process would.
    pub first: usize,
}

/// Everything one backward call sees (always after a training-mode forward
/// pass on the same batch).
pub struct Backward<'a, T> {
    pub params: &'a [T],
    /// `dL/dparams`: added into when `accumulate`, else overwritten.
    pub grads: &'a mut [T],
    pub accumulate: bool,
    pub buffers: &'a [T],
    /// The forward pass's input and output.
    pub x: &'a [T],
    pub y: &'a [T],
    /// `dL/dy`; the layer may overwrite it.
    pub dy: &'a mut [T],
    /// Where to write `dL/dx`, when it is needed (not for the first layer
    /// with parameters).
    pub dx: Option<&'a mut [T]>,
    /// The scratch the forward pass used, as it left it.
    pub scratch: &'a mut [T],
    pub n: usize,
    pub in_shape: &'a [usize],
    pub out_shape: &'a [usize],
    /// The forward pass's layouts; `dy` is in `out_layout`, `dx` in `in_layout`.
    pub in_layout: Layout,
    pub out_layout: Layout,
    /// The forward pass's random stream.
    pub key: u64,
    /// The forward pass's [`Forward::first`].
    pub first: usize,
}

/// A differentiable layer.
pub trait Layer<T: Float>: Send + Sync {
    /// The layer's type name (`"Dense"`, `"Conv2D"`, ...).
    fn name(&self) -> &'static str;
    /// Parameters, in `state_dict` order and layout.
    fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }
    /// Buffers, in `state_dict` order (after the parameters, as in torch).
    fn buffers(&self) -> Vec<BufferDecl> {
        Vec::new()
    }
    /// Fills the parameters (laid out as [`Layer::params`]) with initial values.
    fn init_params(&self, _params: &mut [T], _rng: &mut Rng) {}
    /// Fills the buffers with their initial values.
    fn init_buffers(&self, _values: &mut [T], _counts: &mut [i64]) {}
    /// Per-sample output shape for a per-sample input shape, or why it does not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;
    /// Whether the layer acts elementwise or on the last dimension only, so
    /// that leading dimensions pass through: such layers can be checked
    /// against each other before any input shape is known.
    fn acts_on_last_dim(&self) -> bool {
        false
    }
    /// Which buffer layouts the layer can read and write; the model keeps
    /// channels-last buffers between layers that support them.
    fn layouts(&self) -> Layouts {
        Layouts::Planar
    }
    /// Refuses a batch the layer cannot process (BatchNorm in training with
    /// one value per channel). Called before any layer runs, so a refusal
    /// leaves the model untouched.
    fn check_batch(&self, _n: usize, _in_shape: &[usize], _training: bool) -> Result<()> {
        Ok(())
    }
    /// Scratch elements this layer needs for a batch of `n` samples: for
    /// forward passes only, or (`training`) also for backward passes. Must
    /// not decrease as `n` grows.
    fn scratch_len(&self, _n: usize, _in_shape: &[usize], _training: bool) -> usize {
        0
    }
    /// Floating-point operations of a forward and backward pass per sample,
    /// for the threading decision.
    fn flops(&self, in_shape: &[usize]) -> usize {
        2 * numel(in_shape)
    }
    /// `y = f(x)`.
    fn forward(&self, f: Forward<'_, T>);
    /// Given `dL/dy`, computes `dL/dparams` and (when asked for) `dL/dx`.
    fn backward(&self, b: Backward<'_, T>);
    /// Folds a following activation into this layer; returns `false` when it
    /// cannot (the model then keeps the activation as its own layer).
    fn fuse_activation(&mut self, _act: Act) -> bool {
        false
    }
}

/// Per-sample element count of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
