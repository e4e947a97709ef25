//! `Average`: the elementwise mean of its inputs.

use super::{same_shapes, Merge, MergeBackward, MergeForward};
use crate::error::Result;
use crate::float::Float;

/// `y = (x0 + x1 + ...) / k`.
pub struct Average;

impl<T: Float> Merge<T> for Average {
    fn name(&self) -> &'static str {
        "Average"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        same_shapes("Average", inputs, 2, usize::MAX)
    }

    fn forward(&self, f: MergeForward<'_, T>) {
        let (first, rest) = f.xs.split_first().expect("two inputs or more");
        let k = T::from_f64(f.xs.len() as f64);
        f.y.copy_from_slice(first);
        for x in rest {
            f.y.iter_mut().zip(x.iter()).for_each(|(y, &v)| *y += v);
        }
        f.y.iter_mut().for_each(|y| *y /= k);
    }

    fn backward(&self, b: MergeBackward<'_, T>) {
        let k = T::from_f64(b.xs.len() as f64);
        if b.accumulate {
            b.dx.iter_mut().zip(b.dy).for_each(|(d, &g)| *d += g / k);
        } else {
            b.dx.iter_mut().zip(b.dy).for_each(|(d, &g)| *d = g / k);
        }
    }
}
