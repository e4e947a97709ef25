//! Elementwise activation layers (ReLU, LeakyReLU, Sigmoid, Tanh, GELU).

use super::{de_float, Backward, Forward, Layer, LayerConfig, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::{self, Act};
use serde::{Deserialize, Serialize};

/// Declares the configuration of an activation without arguments.
macro_rules! plain_activation {
    ($(#[$doc:meta])* $config:ident, $name:literal, $act:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct $config {}

        impl LayerConfig for $config {
            const NAME: &'static str = $name;

            fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
                Ok(Box::new(Activation::new($act, Self::NAME)?))
            }

            fn activation(&self) -> Option<Act> {
                Some($act)
            }
        }
    };
}

plain_activation!(
    /// `ReLU`: `max(x, 0)`.
    ReLUSpec,
    "ReLU",
    Act::Relu
);
plain_activation!(
    /// `Sigmoid`: `1 / (1 + exp(-x))`.
    SigmoidSpec,
    "Sigmoid",
    Act::Sigmoid
);
plain_activation!(
    /// `Tanh`.
    TanhSpec,
    "Tanh",
    Act::Tanh
);
plain_activation!(
    /// `GELU`, exact form `x * Phi(x)`.
    GELUSpec,
    "GELU",
    Act::Gelu
);

/// `LeakyReLU`'s configuration: `x` for `x > 0`, else `negative_slope * x`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakyReLUSpec {
    #[serde(deserialize_with = "de_float")]
    pub negative_slope: f64,
}

impl LayerConfig for LeakyReLUSpec {
    const NAME: &'static str = "LeakyReLU";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Activation::new(Act::LeakyRelu(self.negative_slope), Self::NAME)?))
    }

    fn activation(&self) -> Option<Act> {
        Some(Act::LeakyRelu(self.negative_slope))
    }
}

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
