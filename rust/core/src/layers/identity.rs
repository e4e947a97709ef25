//! `y = x`, like `torch.nn.Identity`: a placeholder (a skipped block, a
//! configurable stack). The contract gives every layer its own output
//! buffer, so it copies.

use super::{Backward, Forward, Layer, LayerConfig, Layouts};
use crate::error::Result;
use crate::float::Float;
use crate::kernels::par_elems;
use serde::{Deserialize, Serialize};

/// `Identity`'s configuration: no arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentitySpec {}

impl LayerConfig for IdentitySpec {
    const NAME: &'static str = "Identity";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Identity))
    }
}

/// Passes its input through unchanged.
#[derive(Clone, Debug)]
pub struct Identity;

impl<T: Float> Layer<T> for Identity {
    fn name(&self) -> &'static str {
        "Identity"
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

    fn flops(&self, in_shape: &[usize]) -> usize {
        super::numel(in_shape)
    }

    fn forward(&self, f: Forward<'_, T>) {
        let x = f.x;
        par_elems(&mut f.y[..x.len()], 1, |off, c| c.copy_from_slice(&x[off..off + c.len()]));
    }

    fn backward(&self, b: Backward<'_, T>) {
        if let Some(dx) = b.dx {
            let dy = &*b.dy;
            par_elems(&mut dx[..b.x.len()], 1, |off, c| c.copy_from_slice(&dy[off..off + c.len()]));
        }
    }
}
