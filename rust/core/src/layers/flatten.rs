//! Flattens each sample to one dimension, like `torch.nn.Flatten()`.

use super::{numel, Backward, Forward, Layer, LayerConfig, Layout, Layouts};
use crate::error::Result;
use crate::float::Float;
use crate::kernels::par_chunks;
use crate::kernels::transpose::transpose;
use serde::{Deserialize, Serialize};

/// `Flatten`'s configuration (it has no arguments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlattenSpec {}

impl LayerConfig for FlattenSpec {
    const NAME: &'static str = "Flatten";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Flatten))
    }
}

/// `(N, d1, d2, ...) -> (N, d1 * d2 * ...)`, for inputs of any rank.
#[derive(Clone, Debug)]
pub struct Flatten;

impl<T: Float> Layer<T> for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![numel(input)])
    }

    fn flops(&self, _in_shape: &[usize]) -> usize {
        0
    }

    fn layouts(&self) -> Layouts {
        Layouts::Flatten
    }

    /// Channels-last input is put back in torch's order (channel planes),
    /// which is what the flattened features mean to a following Dense.
    fn forward(&self, f: Forward<'_, T>) {
        let len = f.x.len();
        if f.in_layout == Layout::ChannelsLast && f.in_shape.len() > 1 {
            let (c, s) = (f.in_shape[0], numel(&f.in_shape[1..]));
            let x = f.x;
            par_chunks(&mut f.y[..len], c * s, |i, y| transpose(s, c, &x[i * c * s..], c, y, s));
        } else {
            f.y[..len].copy_from_slice(f.x);
        }
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let len = b.x.len();
        if b.in_layout == Layout::ChannelsLast && b.in_shape.len() > 1 {
            let (c, s) = (b.in_shape[0], numel(&b.in_shape[1..]));
            let dy = &*b.dy;
            par_chunks(&mut dx[..len], c * s, |i, d| transpose(c, s, &dy[i * c * s..], s, d, c));
        } else {
            dx[..len].copy_from_slice(&b.dy[..len]);
        }
    }
}
