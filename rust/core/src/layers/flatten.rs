//! Flattens each sample to one dimension, like `torch.nn.Flatten()`.

use super::{numel, Backward, Forward, Layer};
use crate::error::Result;
use crate::float::Float;

/// `(N, d1, d2, ...) -> (N, d1 * d2 * ...)`, for inputs of any rank.
#[derive(Clone, Debug)]
pub struct Flatten;

impl<T: Float> Layer<T> for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![numel(input)])
    }

    fn flops(&self, _in_shape: &[usize]) -> usize {
        0
    }

    fn forward(&self, f: Forward<'_, T>) {
        f.y[..f.x.len()].copy_from_slice(f.x);
    }

    fn backward(&self, b: Backward<'_, T>) {
        if let Some(dx) = b.dx {
            dx[..b.x.len()].copy_from_slice(&b.dy[..b.x.len()]);
        }
    }
}
