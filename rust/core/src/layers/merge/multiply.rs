//! `Multiply`: the elementwise product of its inputs (gating).

use super::{same_shapes, Merge, MergeBackward, MergeForward};
use crate::error::Result;
use crate::float::Float;

/// `y = x0 * x1 * ...`.
pub struct Multiply;

impl<T: Float> Merge<T> for Multiply {
    fn name(&self) -> &'static str {
        "Multiply"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        same_shapes("Multiply", inputs, 2, usize::MAX)
    }

    fn forward(&self, f: MergeForward<'_, T>) {
        let (first, rest) = f.xs.split_first().expect("two inputs or more");
        f.y.copy_from_slice(first);
        for x in rest {
            f.y.iter_mut().zip(x.iter()).for_each(|(y, &v)| *y *= v);
        }
    }

    /// `dx_i = dy * prod_{j != i} x_j`, the product taken in input order.
    fn backward(&self, b: MergeBackward<'_, T>) {
        let others: Vec<&[T]> =
            b.xs.iter().enumerate().filter(|&(j, _)| j != b.input).map(|(_, x)| *x).collect();
        for (e, d) in b.dx.iter_mut().enumerate() {
            let mut g = b.dy[e];
            for x in &others {
                g *= x[e];
            }
            if b.accumulate {
                *d += g;
            } else {
                *d = g;
            }
        }
    }
}
