//! Inverted dropout: in training each element is zeroed with probability `p`
//! and the survivors are scaled by `1 / (1 - p)`; in evaluation it is the
//! identity. The mask is a pure function of the pass's random key and the
//! element index, so any thread computes any element and backward recomputes
//! it instead of storing it.

use super::{de_float, Backward, Forward, Layer, LayerConfig, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_elems;
use crate::rng::counter_unit;
use serde::{Deserialize, Serialize};

/// `Dropout`'s configuration: the drop probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropoutSpec {
    #[serde(deserialize_with = "de_float")]
    pub p: f64,
}

impl LayerConfig for DropoutSpec {
    const NAME: &'static str = "Dropout";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Dropout::new(self.p)?))
    }
}

/// Dropout with drop probability `p` in `[0, 1)`.
#[derive(Clone, Debug)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::value(format!("Dropout: p must be in [0, 1), got {p}")));
        }
        Ok(Dropout { p })
    }

    /// Multiplier for element `i` under `key`: `0` or `1 / (1 - p)`.
    #[inline(always)]
    fn factor<T: Float>(&self, key: u64, i: usize, scale: T) -> T {
        if counter_unit(key, i as u64) < self.p {
            T::ZERO
        } else {
            scale
        }
    }

    fn apply<T: Float>(&self, training: bool, key: u64, src: &[T], dst: &mut [T]) {
        let len = src.len();
        if !training || self.p == 0.0 {
            dst[..len].copy_from_slice(src);
            return;
        }
        let scale = T::from_f64(1.0 / (1.0 - self.p));
        par_elems(&mut dst[..len], 4, |off, c| {
            for (j, (v, &s)) in c.iter_mut().zip(&src[off..]).enumerate() {
                *v = s * self.factor(key, off + j, scale);
            }
        });
    }
}

impl<T: Float> Layer<T> for Dropout {
    fn name(&self) -> &'static str {
        "Dropout"
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
        self.apply(f.training, f.key, f.x, f.y);
    }

    fn backward(&self, b: Backward<'_, T>) {
        if let Some(dx) = b.dx {
            self.apply(true, b.key, &b.dy[..b.x.len()], dx);
        }
    }
}
