//! Elementwise activation layers (ReLU, LeakyReLU, Sigmoid, Tanh, GELU).

use super::{Backward, Forward, Layer, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::{self, Act};

/// An elementwise activation as a layer of its own.
#[derive(Clone, Debug)]
pub struct Activation {
    pub act: Act,
    name: &'static str,
}

impl Activation {
    pub fn new(act: Act, name: &'static str) -> Result<Self> {
        if let Act::LeakyRelu(s) = act {
            if !s.is_finite() {
                return Err(Error::value(format!("LeakyReLU: negative_slope must be finite, got {s}")));
            }
        }
        Ok(Activation { act, name })
    }
}

impl<T: Float> Layer<T> for Activation {
    fn name(&self) -> &'static str {
        self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn acts_on_last_dim(&self) -> bool {
        true
    }

    fn layouts(&self) -> Layouts {
        Layouts::Preserve
    }

    fn forward(&self, f: Forward<'_, T>) {
        activation::forward(self.act, f.x, &mut f.y[..f.x.len()]);
    }

    fn backward(&self, b: Backward<'_, T>) {
        if let Some(dx) = b.dx {
            let len = b.x.len();
            activation::backward(self.act, b.x, &b.y[..len], &b.dy[..len], &mut dx[..len]);
        }
    }
}
