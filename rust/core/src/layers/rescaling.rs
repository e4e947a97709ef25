//! `y = x * scale + offset`, like Keras' `Rescaling`: lets uint8 images go
//! into the model as they are (`Rescaling(1/255)`), converted per batch.

use super::{Ctx, Layer};
use crate::error::Result;
use crate::float::Float;
use crate::kernels::par_elems;

/// Affine rescaling with fixed (not trained) scale and offset.
#[derive(Clone, Debug)]
pub struct Rescaling {
    pub scale: f64,
    pub offset: f64,
}

impl<T: Float> Layer<T> for Rescaling {
    fn name(&self) -> &'static str {
        "Rescaling"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn forward(&self, _ctx: Ctx, _p: &[T], x: &[T], y: &mut [T], _n: usize, _shape: &[usize]) {
        let (s, o) = (T::from_f64(self.scale), T::from_f64(self.offset));
        par_elems(&mut y[..x.len()], 1, |off, c| {
            for (v, &xi) in c.iter_mut().zip(&x[off..]) {
                *v = xi * s + o;
            }
        });
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
            let s = T::from_f64(self.scale);
            par_elems(&mut dx[..x.len()], 1, |off, c| {
                for (v, &g) in c.iter_mut().zip(&dy[off..]) {
                    *v = g * s;
                }
            });
        }
    }
}
