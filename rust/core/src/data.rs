//! Input data as the caller holds it (uint8, float32 or float64), converted
//! to the model's element type one batch at a time, so a uint8 dataset is
//! never copied whole.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_rows;
use rayon::prelude::*;

const SCAN_CHUNK: usize = 1 << 15;

crate::multiversion! {
    /// Whether any element of `v` is NaN or infinite (branch-free, vectorizes).
    fn any_non_finite<T: Float>(v: &[T], out: &mut bool) {
        let mut bad = false;
        for &x in v {
            bad |= !x.is_finite();
        }
        *out = bad;
    }
}

crate::multiversion! {
    /// Whether any element of `v` is beyond float32's range.
    fn any_beyond_f32<T: Float>(v: &[T], out: &mut bool) {
        let max = T::from_f64(f32::MAX as f64);
        let mut bad = false;
        for &x in v {
            bad |= x.abs() > max;
        }
        *out = bad;
    }
}

fn beyond_f32<T: Float>(v: &[T]) -> bool {
    let mut b = false;
    any_beyond_f32(v, &mut b);
    b
}

fn non_finite<T: Float>(v: &[T]) -> bool {
    let mut b = false;
    any_non_finite(v, &mut b);
    b
}

/// Index of the first element of `v` in a chunk for which `chunk_bad` holds
/// and that is itself bad by the same test. Chunks are scanned in parallel
/// with a vectorized test; only a bad chunk is searched element by element.
fn first_where<T: Float>(v: &[T], chunk_bad: fn(&[T]) -> bool) -> Option<usize> {
    let chunk = v.par_chunks(SCAN_CHUNK).position_first(chunk_bad)?;
    let start = chunk * SCAN_CHUNK;
    let c = &v[start..(start + SCAN_CHUNK).min(v.len())];
    c.iter().position(|x| chunk_bad(std::slice::from_ref(x))).map(|i| start + i)
}

/// Index of the first NaN or infinite element of `v`, if any.
pub fn first_non_finite<T: Float>(v: &[T]) -> Option<usize> {
    first_where(v, non_finite)
}

/// Copies the selected rows of `src` (`row_len` elements each, already in
/// the model's element type) into `out` (which must hold `rows.len() *
/// row_len` elements): [`Features::gather`] without a conversion.
pub fn gather_rows<T: Float>(src: &[T], rows: Rows<'_>, row_len: usize, out: &mut [T]) {
    let out = &mut out[..rows.len() * row_len];
    par_rows(out, row_len, row_len / 8 + 1, 1, |r0, chunk| {
        for (i, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
            let s = rows.get(r0 + i) * row_len;
            dst.copy_from_slice(&src[s..s + row_len]);
        }
    });
}

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
/// `dst[i] = f(src[i])`, times `scale` plus `offset` when `affine` is given
/// (two loops, so neither tests `affine` per element).
fn convert_row<S: Copy, T: Float>(src: &[S], dst: &mut [T], affine: Option<(T, T)>, f: impl Fn(S) -> T) {
    let pairs = dst.iter_mut().zip(src);
    match affine {
        None => pairs.for_each(|(d, &s)| *d = f(s)),
        Some((scale, offset)) => pairs.for_each(|(d, &s)| *d = f(s) * scale + offset),
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
            Features::F32(v) => first_non_finite(v),
            Features::F64(v) => first_non_finite(v),
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
            if let Some(i) = first_where(v, beyond_f32) {
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

    /// Hints the CPU to start loading the selected rows into cache (the next
    /// batch's, while this one computes). Has no effect on results.
    pub fn prefetch(&self, rows: Rows<'_>, row_len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            let (base, elem) = match self {
                Features::U8(v) => (v.as_ptr() as *const i8, 1),
                Features::F32(v) => (v.as_ptr() as *const i8, 4),
                Features::F64(v) => (v.as_ptr() as *const i8, 8),
            };
            // A slice spans at most `isize::MAX` bytes, so `total` cannot
            // overflow; the row offsets are checked.
            let total = self.len() * elem;
            let Some(bytes) = row_len.checked_mul(elem) else { return };
            for i in 0..rows.len() {
                let Some(start) = rows.get(i).checked_mul(bytes) else { continue };
                if start > total || bytes > total - start {
                    continue;
                }
                for off in (0..bytes).step_by(64) {
                    // SAFETY: `start + off < start + bytes <= total` lies
                    // inside the borrowed buffer (checked above, without
                    // overflow), and a prefetch never faults or writes.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(base.add(start + off)) };
                }
            }
        }
    }

    /// Copies the selected rows (`row_len` elements each), converted to `T`,
    /// into `out` (which must hold `rows.len() * row_len` elements).
    pub fn gather<T: Float>(&self, rows: Rows<'_>, row_len: usize, out: &mut [T]) {
        self.gather_scaled(rows, row_len, None, out)
    }

    /// [`Features::gather`], then `v * scale + offset` on each converted
    /// value when `affine` is `Some((scale, offset))`, in the same pass (the
    /// same arithmetic as a `Rescaling` layer after the gather).
    pub fn gather_scaled<T: Float>(
        &self,
        rows: Rows<'_>,
        row_len: usize,
        affine: Option<(T, T)>,
        out: &mut [T],
    ) {
        let out = &mut out[..rows.len() * row_len];
        par_rows(out, row_len, row_len / 4 + 1, 1, |r0, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
                let s = rows.get(r0 + i) * row_len;
                match self {
                    Features::U8(v) => convert_row(&v[s..s + row_len], dst, affine, T::from_u8),
                    Features::F32(v) => {
                        convert_row(&v[s..s + row_len], dst, affine, |x| T::from_f64(x as f64))
                    }
                    Features::F64(v) => convert_row(&v[s..s + row_len], dst, affine, T::from_f64),
                }
            }
        });
    }
}
