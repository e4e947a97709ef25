//! Input data as the caller holds it (uint8, float32 or float64), converted
//! to the model's element type one batch at a time, so a uint8 dataset is
//! never copied whole.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_rows;
use rayon::prelude::*;

/// A borrowed, contiguous, batch-first feature array.
#[derive(Clone, Copy, Debug)]
pub enum Features<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// Which rows to take.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// Rows `start..start + len` in order.
    Range(usize, usize),
    /// The listed rows, in that order.
    Index(&'a [usize]),
}

impl Rows<'_> {
    pub fn len(&self) -> usize {
        match *self {
            Rows::Range(_, n) => n,
            Rows::Index(ix) => ix.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline(always)]
    pub fn get(&self, i: usize) -> usize {
        match *self {
            Rows::Range(s, _) => s + i,
            Rows::Index(ix) => ix[i],
        }
    }
}

#[inline(always)]
fn convert_row<S: Copy, T: Float>(src: &[S], dst: &mut [T], f: impl Fn(S) -> T) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

impl Features<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Features::U8(v) => v.len(),
            Features::F32(v) => v.len(),
            Features::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// numpy's name for the element type.
    pub fn dtype(&self) -> &'static str {
        match self {
            Features::U8(_) => "uint8",
            Features::F32(_) => "float32",
            Features::F64(_) => "float64",
        }
    }

    /// Fails, naming the first bad element, if any value is NaN or infinite.
    pub fn check_finite(&self, what: &str, row_len: usize) -> Result<()> {
        let bad = match self {
            Features::U8(_) => None,
            Features::F32(v) => v.par_iter().position_first(|x| !x.is_finite()),
            Features::F64(v) => v.par_iter().position_first(|x| !x.is_finite()),
        };
        match bad {
            None => Ok(()),
            Some(i) => Err(Error::non_finite(format!(
                "{what} contains NaN or inf (first at sample {}, feature {})",
                i / row_len.max(1),
                i % row_len.max(1)
            ))),
        }
    }

    /// Fails if float64 values are too large for float32 (they would become inf).
    pub fn check_fits_f32(&self, what: &str, row_len: usize) -> Result<()> {
        if let Features::F64(v) = self {
            let max = f32::MAX as f64;
            if let Some(i) = v.par_iter().position_first(|x| x.abs() > max) {
                return Err(Error::non_finite(format!(
                    "{what} has a value ({:e}) at sample {}, feature {} that overflows float32 (becomes inf); \
                     rescale the data or use a float64 model",
                    v[i],
                    i / row_len.max(1),
                    i % row_len.max(1)
                )));
            }
        }
        Ok(())
    }

    /// Copies the selected rows (`row_len` elements each), converted to `T`,
    /// into `out` (which must hold `rows.len() * row_len` elements).
    pub fn gather<T: Float>(&self, rows: Rows<'_>, row_len: usize, out: &mut [T]) {
        let out = &mut out[..rows.len() * row_len];
        par_rows(out, row_len, row_len / 4 + 1, 1, |r0, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
                let s = rows.get(r0 + i) * row_len;
                match self {
                    Features::U8(v) => convert_row(&v[s..s + row_len], dst, T::from_u8),
                    Features::F32(v) => convert_row(&v[s..s + row_len], dst, |x| T::from_f64(x as f64)),
                    Features::F64(v) => convert_row(&v[s..s + row_len], dst, T::from_f64),
                }
            }
        });
    }
}
