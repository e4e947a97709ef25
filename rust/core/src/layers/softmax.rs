//! Softmax over the last dimension, like `torch.nn.Softmax(dim=-1)`.

use super::{numel, Backward, Forward, Layer, LayerConfig};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_rows;
use serde::{Deserialize, Serialize};

/// `Softmax`'s configuration (it has no arguments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoftmaxSpec {}

impl LayerConfig for SoftmaxSpec {
    const NAME: &'static str = "Softmax";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Softmax))
    }
}

/// `y_i = exp(x_i) / sum_j exp(x_j)` along the last dimension.
#[derive(Clone, Debug)]
pub struct Softmax;

/// Row-wise stable softmax of `x` into `y` (`cols` per row).
pub fn softmax_rows<T: Float>(x: &[T], y: &mut [T], cols: usize) {
    par_rows(y, cols, 8 * cols, 1, |r0, yc| {
        for (i, row) in yc.chunks_exact_mut(cols).enumerate() {
            let xr = &x[(r0 + i) * cols..(r0 + i + 1) * cols];
            let m = xr.iter().copied().fold(xr[0], T::max);
            let mut s = T::ZERO;
            for (v, &xi) in row.iter_mut().zip(xr) {
                *v = (xi - m).exp();
                s += *v;
            }
            let inv = T::ONE / s;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

impl<T: Float> Layer<T> for Softmax {
    fn name(&self) -> &'static str {
        "Softmax"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::shape(
                "Softmax needs at least one feature dimension, got a scalar per sample",
            ));
        }
        Ok(input.to_vec())
    }

    fn acts_on_last_dim(&self) -> bool {
        true
    }

    fn forward(&self, f: Forward<'_, T>) {
        let cols = f.in_shape.last().copied().unwrap_or(1);
        let len = f.n * numel(f.in_shape);
        softmax_rows(&f.x[..len], &mut f.y[..len], cols);
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let cols = b.in_shape.last().copied().unwrap_or(1);
        let len = b.n * numel(b.in_shape);
        let (y, dy) = (b.y, &*b.dy);
        par_rows(&mut dx[..len], cols, 4 * cols, 1, |r0, dc| {
            for (i, row) in dc.chunks_exact_mut(cols).enumerate() {
                let o = (r0 + i) * cols;
                let (yr, gr) = (&y[o..o + cols], &dy[o..o + cols]);
                let dot: T = yr.iter().zip(gr).map(|(&a, &b)| a * b).sum();
                for ((v, &yi), &gi) in row.iter_mut().zip(yr).zip(gr) {
                    *v = yi * (gi - dot);
                }
            }
        });
    }
}
