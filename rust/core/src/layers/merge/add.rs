//! `Add`: the elementwise sum of its inputs (a residual connection).

use super::{copy_grad, same_shapes, Merge, MergeBackward, MergeForward};
use crate::error::Result;
use crate::float::Float;

/// `y = x0 + x1 + ...`.
pub struct Add;

impl<T: Float> Merge<T> for Add {
    fn name(&self) -> &'static str {
        "Add"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        same_shapes("Add", inputs, 2, usize::MAX)
    }

    fn forward(&self, f: MergeForward<'_, T>) {
        let (first, rest) = f.xs.split_first().expect("two inputs or more");
        f.y.copy_from_slice(first);
        for x in rest {
            f.y.iter_mut().zip(x.iter()).for_each(|(y, &v)| *y += v);
        }
    }

    fn backward(&self, b: MergeBackward<'_, T>) {
        copy_grad(b.dx, b.dy, false, b.accumulate);
    }
}
