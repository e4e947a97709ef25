//! Elementwise activation layers (ReLU, LeakyReLU, Sigmoid, Tanh, GELU).

use super::{Ctx, Layer};
use crate::error::Result;
use crate::float::Float;
use crate::kernels::activation::{self, Act};

/// An elementwise activation as a layer of its own.
#[derive(Clone, Debug)]
pub struct Activation {
    pub act: Act,
    name: &'static str,
}

impl Activation {
    pub fn new(act: Act, name: &'static str) -> Self {
        Activation { act, name }
    }
}

impl<T: Float> Layer<T> for Activation {
    fn name(&self) -> &'static str {
        self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn forward(&self, _ctx: Ctx, _p: &[T], x: &[T], y: &mut [T], _n: usize, _shape: &[usize]) {
        activation::forward(self.act, x, &mut y[..x.len()]);
    }

    fn backward(
        &self,
        _ctx: Ctx,
        _p: &[T],
        _g: &mut [T],
        x: &[T],
        y: &[T],
        dy: &mut [T],
        dx: Option<&mut [T]>,
        _n: usize,
        _shape: &[usize],
        _accumulate: bool,
    ) {
        if let Some(dx) = dx {
            let len = x.len();
            activation::backward(self.act, x, &y[..len], &dy[..len], &mut dx[..len]);
        }
    }
}
