//! `Subtract`: the difference of exactly two inputs.

use super::{copy_grad, same_shapes, Merge, MergeBackward, MergeForward};
use crate::error::Result;
use crate::float::Float;

/// `y = x0 - x1`.
pub struct Subtract;

impl<T: Float> Merge<T> for Subtract {
    fn name(&self) -> &'static str {
        "Subtract"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        same_shapes("Subtract", inputs, 2, 2)
    }

    fn forward(&self, f: MergeForward<'_, T>) {
        let (a, b) = (f.xs[0], f.xs[1]);
        f.y.iter_mut().zip(a.iter().zip(b.iter())).for_each(|(y, (&u, &v))| *y = u - v);
    }

    fn backward(&self, b: MergeBackward<'_, T>) {
        copy_grad(b.dx, b.dy, b.input == 1, b.accumulate);
    }
}
