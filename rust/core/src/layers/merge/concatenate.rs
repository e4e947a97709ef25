//! `Concatenate`: inputs joined along one axis, as `torch.cat`.

use super::{Merge, MergeBackward, MergeForward};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::layers::numel;

/// `torch.cat(xs, dim=axis)`; `axis` counts the batch dimension.
pub struct Concatenate {
    pub axis: i64,
}

impl Concatenate {
    /// The per-sample axis for per-sample rank `rank`.
    fn sample_axis(&self, rank: usize) -> Result<usize> {
        let full = rank as i64 + 1;
        let a = if self.axis < 0 { self.axis + full } else { self.axis };
        if a <= 0 || a >= full {
            let why = if a == 0 { " (the batch dimension cannot be concatenated)" } else { "" };
            return Err(Error::value(format!(
                "Concatenate axis {} is out of range for inputs of {full} dimensions (batch \
                 included){why}",
                self.axis
            )));
        }
        Ok(a as usize - 1)
    }

    /// The rows of a sample (`outer`) and each input's row length.
    fn split(&self, in_shapes: &[&[usize]]) -> (usize, Vec<usize>) {
        let a = self.sample_axis(in_shapes[0].len()).unwrap_or(0);
        let outer = numel(&in_shapes[0][..a]);
        (outer, in_shapes.iter().map(|s| numel(&s[a..])).collect())
    }
}

impl<T: Float> Merge<T> for Concatenate {
    fn name(&self) -> &'static str {
        "Concatenate"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        if inputs.len() < 2 {
            return Err(Error::value(format!("Concatenate takes at least 2 inputs, got {}", inputs.len())));
        }
        let rank = inputs[0].len();
        if rank == 0 || inputs.iter().any(|s| s.len() != rank) {
            return Err(Error::shape(format!(
                "Concatenate needs inputs of the same rank (at least 1 per sample), got {inputs:?}"
            )));
        }
        let a = self.sample_axis(rank)?;
        let mut out = inputs[0].to_vec();
        out[a] = 0;
        for s in inputs {
            let differs = s.iter().zip(inputs[0]).enumerate().any(|(d, (u, v))| d != a && u != v);
            if differs {
                return Err(Error::shape(format!(
                    "Concatenate on axis {} needs inputs that match except on that axis, got {inputs:?}",
                    self.axis
                )));
            }
            out[a] += s[a];
        }
        Ok(out)
    }

    fn elementwise(&self) -> bool {
        false
    }

    fn forward(&self, f: MergeForward<'_, T>) {
        let (outer, lens) = self.split(f.in_shapes);
        let width: usize = lens.iter().sum();
        let mut offset = 0;
        for (x, &len) in f.xs.iter().zip(&lens) {
            for (r, src) in x.chunks_exact(len.max(1)).take(f.n * outer).enumerate() {
                f.y[r * width + offset..r * width + offset + len].copy_from_slice(src);
            }
            offset += len;
        }
    }

    fn backward(&self, b: MergeBackward<'_, T>) {
        let (outer, lens) = self.split(b.in_shapes);
        let width: usize = lens.iter().sum();
        let offset: usize = lens[..b.input].iter().sum();
        let len = lens[b.input];
        for (r, dst) in b.dx.chunks_exact_mut(len.max(1)).take(b.n * outer).enumerate() {
            let src = &b.dy[r * width + offset..r * width + offset + len];
            if b.accumulate {
                dst.iter_mut().zip(src).for_each(|(d, &g)| *d += g);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}
