//! ferrograd's core: a CPU backpropagation engine with no Python in it.
//!
//! - [`kernels`]: matrix products, activations and reductions over slices,
//!   parallel over disjoint output chunks, deterministic for any thread count.
//! - [`layers`]: one file per layer, registered by one line in the list
//!   that defines [`layers::LayerSpec`].
//! - [`layout`]: how a sample's values are ordered in a buffer (planar or
//!   channels-last), shared by the kernels and the layers.
//! - [`loss`]: MSE, softmax cross-entropy and binary cross-entropy from logits.
//! - [`optim`]: SGD, Adam, AdamW and RMSprop with torch's update equations.
//! - [`clip`]: gradient clipping by the total norm, as torch's `clip_grad_norm_`.
//! - [`memory`]: the memory budget checked before every large allocation.
//! - [`persist`]: safetensors files (checked as untrusted input) and atomic writes.
//! - [`model`]: [`Sequential`], which owns the parameters, the layers'
//!   buffers and the workspace, and runs the fused training step.
//!
//! ```
//! use ferrograd::{Data, EpochOptions, Features, Flow, Init, LayerSpec, Loss, Sequential, Target};
//! use ferrograd::layers::{DenseSpec, TanhSpec};
//! use ferrograd::optim::{OptimConfig, Optimizer};
//! let specs: Vec<LayerSpec> = vec![
//!     DenseSpec { in_features: 2, out_features: 8, bias: true, init: Init::He }.into(),
//!     TanhSpec {}.into(),
//!     DenseSpec { in_features: 8, out_features: 2, bias: true, init: Init::Xavier }.into(),
//! ];
//! let mut model = Sequential::<f32>::new(specs, 0).unwrap();
//! let x = [0.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
//! let y = [0i64, 1, 1, 0];
//! let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
//! let cfg = OptimConfig::Adam { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
//! let mut opt = Optimizer::new(cfg, ranges).unwrap();
//! let data = Data::new(Features::F32(&x), 4, &[2], Target::Labels(&y));
//! let opts = EpochOptions { shuffle: false, ..EpochOptions::new(Loss::CrossEntropy, 4) };
//! for _ in 0..300 {
//!     model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).unwrap();
//! }
//! let t = model.evaluate(data, &Loss::CrossEntropy.into(), 4).unwrap();
//! assert_eq!(t.accuracy(), 1.0);
//! ```

pub mod clip;
pub mod data;
pub mod error;
pub mod float;
pub mod kernels;
pub mod layers;
pub mod layout;
pub mod loss;
pub mod memory;
pub mod model;
pub mod optim;
pub mod persist;
pub mod rng;
pub mod threads;

pub use clip::ClipNorm;
pub use data::{Features, Rows};
pub use error::{Error, ErrorKind, Result};
pub use float::Float;
pub use layers::MergeSpec;
pub use layers::{Init, LayerSpec, Padding};
pub use loss::{Loss, LossSpec, LossTotals, Target};
pub use memory::MemoryLimit;
pub use model::{
    ActivationStat, ActivationStats, Data, Diagnostics, EpochOptions, Flow, GradCheck, GradHook, GraphInput,
    GraphLayer, GraphNode, GraphSpec, Losses, NodeSpec, Parallel, ParamEntry, ParamStats, Progress,
    Sequential, StateEntry, StateKind, StateValues, Totals,
};
pub use optim::{OptimConfig, Optimizer};
