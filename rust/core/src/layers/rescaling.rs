//! `y = x * scale + offset`, like Keras' `Rescaling`: lets uint8 images go
//! into the model as they are (`Rescaling(1/255)`), converted per batch.

use super::{de_float, Backward, Forward, Layer, LayerConfig, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_elems;
use serde::{Deserialize, Serialize};

/// `Rescaling`'s configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RescalingSpec {
    #[serde(deserialize_with = "de_float")]
    pub scale: f64,
    #[serde(deserialize_with = "de_float")]
    pub offset: f64,
}

impl LayerConfig for RescalingSpec {
    const NAME: &'static str = "Rescaling";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Rescaling::new(self.scale, self.offset)?))
    }
}

/// Affine rescaling with fixed (not trained) scale and offset.
#[derive(Clone, Debug)]
pub struct Rescaling {
    pub scale: f64,
    pub offset: f64,
}

impl Rescaling {
    pub fn new(scale: f64, offset: f64) -> Result<Self> {
        for (name, v) in [("scale", scale), ("offset", offset)] {
            if !v.is_finite() {
                return Err(Error::value(format!("Rescaling: {name} must be finite, got {v}")));
            }
        }
        Ok(Rescaling { scale, offset })
    }
}

impl<T: Float> Layer<T> for Rescaling {
    fn name(&self) -> &'static str {
        "Rescaling"
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
        let (s, o) = (T::from_f64(self.scale), T::from_f64(self.offset));
        let x = f.x;
        par_elems(&mut f.y[..x.len()], 1, |off, c| {
            for (v, &xi) in c.iter_mut().zip(&x[off..]) {
                *v = xi * s + o;
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        if let Some(dx) = b.dx {
            let s = T::from_f64(self.scale);
            let dy = &*b.dy;
            par_elems(&mut dx[..b.x.len()], 1, |off, c| {
                for (v, &g) in c.iter_mut().zip(&dy[off..]) {
                    *v = g * s;
                }
            });
        }
    }
}
