//! Merge layers: several inputs, one output, no parameters (`Add`,
//! `Subtract`, `Multiply`, `Average`, `Concatenate`). Each is one file;
//! [`MergeSpec`] is the list they are registered in.
//!
//! The graph engine calls single-input [`super::Layer`]s as they are; a
//! merge gets all its inputs at once in the forward pass, and computes the
//! gradient of one input at a time in the backward pass (so an input that
//! appears twice, `Add()([x, x])`, is simply summed twice).

mod add;
mod average;
mod concatenate;
mod multiply;
mod subtract;

pub use add::Add;
pub use average::Average;
pub use concatenate::Concatenate;
pub use multiply::Multiply;
pub use subtract::Subtract;

use crate::error::{Error, Result};
use crate::float::Float;
use serde::{Deserialize, Serialize};

/// A merge layer's configuration (the JSON `"type"` is the Python class's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MergeSpec {
    Add,
    Subtract,
    Multiply,
    Average,
    /// `torch.cat` along `axis`, which counts the batch dimension (`1` is
    /// the first per-sample dimension; negative values count from the end).
    Concatenate {
        axis: i64,
    },
}

impl MergeSpec {
    /// The JSON tags of the merge layers.
    pub const TAGS: [&'static str; 5] = ["Add", "Subtract", "Multiply", "Average", "Concatenate"];

    /// The layer's name, as in Python.
    pub fn display_name(&self) -> &'static str {
        match self {
            MergeSpec::Add => "Add",
            MergeSpec::Subtract => "Subtract",
            MergeSpec::Multiply => "Multiply",
            MergeSpec::Average => "Average",
            MergeSpec::Concatenate { .. } => "Concatenate",
        }
    }

    /// Builds the merge layer.
    pub fn build<T: Float>(&self) -> Box<dyn Merge<T>> {
        match *self {
            MergeSpec::Add => Box::new(Add),
            MergeSpec::Subtract => Box::new(Subtract),
            MergeSpec::Multiply => Box::new(Multiply),
            MergeSpec::Average => Box::new(Average),
            MergeSpec::Concatenate { axis } => Box::new(Concatenate { axis }),
        }
    }
}

/// Everything one merge forward call sees.
pub struct MergeForward<'a, T> {
    /// The inputs, `n x numel(in_shapes[i])` each, in the same layout.
    pub xs: &'a [&'a [T]],
    /// The output to write, `n x numel(out_shape)`.
    pub y: &'a mut [T],
    pub n: usize,
    pub in_shapes: &'a [&'a [usize]],
    pub out_shape: &'a [usize],
}

/// Everything one merge backward call sees: the gradient of input `input`.
pub struct MergeBackward<'a, T> {
    /// Which input's gradient to compute.
    pub input: usize,
    /// The forward pass's inputs.
    pub xs: &'a [&'a [T]],
    /// `dL/dy`.
    pub dy: &'a [T],
    /// `dL/dx[input]`: added into when `accumulate`, else overwritten.
    pub dx: &'a mut [T],
    pub accumulate: bool,
    pub n: usize,
    pub in_shapes: &'a [&'a [usize]],
    pub out_shape: &'a [usize],
}

/// A layer with several inputs and no parameters.
pub trait Merge<T: Float>: Send + Sync {
    /// The layer's type name.
    fn name(&self) -> &'static str;
    /// Per-sample output shape for the inputs' per-sample shapes, or why
    /// they do not fit (the model names the layers feeding it).
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;
    /// Elementwise merges work in any layout (all inputs and the output in
    /// the same one); others read and write planar buffers.
    fn elementwise(&self) -> bool {
        true
    }
    /// `y = f(xs)`.
    fn forward(&self, f: MergeForward<'_, T>);
    /// `dL/dx[input]` from `dL/dy`.
    fn backward(&self, b: MergeBackward<'_, T>);
}

/// Checks that every input has the first one's shape (elementwise merges);
/// `min`/`max`: how many inputs the merge takes.
pub(crate) fn same_shapes(what: &str, inputs: &[&[usize]], min: usize, max: usize) -> Result<Vec<usize>> {
    if inputs.len() < min || inputs.len() > max {
        let want = if min == max { format!("exactly {min}") } else { format!("at least {min}") };
        return Err(Error::value(format!("{what} takes {want} inputs, got {}", inputs.len())));
    }
    let first = inputs[0];
    if inputs.iter().any(|s| *s != first) {
        return Err(Error::shape(format!("{what} needs inputs of the same shape, got {inputs:?}")));
    }
    Ok(first.to_vec())
}

/// `dx = s * dy` or `dx += s * dy` (`s` is `1` or `-1`, exact).
pub(crate) fn copy_grad<T: Float>(dx: &mut [T], dy: &[T], negate: bool, accumulate: bool) {
    match (accumulate, negate) {
        (false, false) => dx.copy_from_slice(dy),
        (false, true) => dx.iter_mut().zip(dy).for_each(|(d, &g)| *d = -g),
        (true, false) => dx.iter_mut().zip(dy).for_each(|(d, &g)| *d += g),
        (true, true) => dx.iter_mut().zip(dy).for_each(|(d, &g)| *d -= g),
    }
}

#[cfg(test)]
mod tests;
