//! Flattens each sample to one dimension, like `torch.nn.Flatten()`.

use super::{numel, Ctx, Layer};
use crate::error::Result;
use crate::float::Float;

/// `(N, d1, d2, ...) -> (N, d1 * d2 * ...)`.
#[derive(Clone, Debug)]
pub struct Flatten;

impl<T: Float> Layer<T> for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![numel(input)])
    }

    fn forward(&self, _ctx: Ctx, _p: &[T], x: &[T], y: &mut [T], _n: usize, _shape: &[usize]) {
        y[..x.len()].copy_from_slice(x);
    }

    fn backward(
        &self,
        _ctx: Ctx,
        _p: &[T],
        _g: &mut [T],
        x: &[T],
        _y: &[T],
        dy: &mut [T],
        dx: Option<&mut [T]>,
        _n: usize,
        _shape: &[usize],
        _accumulate: bool,
    ) {
        if let Some(dx) = dx {
            dx[..x.len()].copy_from_slice(&dy[..x.len()]);
        }
    }
}
