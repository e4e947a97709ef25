//! Matrix transposes between channel planes and channels-last rows: the
//! copies the convolution kernels read and write. 4-byte elements go
//! through 16x16 in-register transposes on AVX-512 CPUs (a transpose only
//! moves bits); others element by element.

use crate::float::Float;

/// `dst[c * dst_rs + r] = src[r * src_rs + c]` for `r < rows`, `c < cols`.
/// Panics if either slice is too short (sizes whose products overflow
/// included: they are computed with checked arithmetic).
pub fn transpose<T: Float>(rows: usize, cols: usize, src: &[T], src_rs: usize, dst: &mut [T], dst_rs: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= src_rs || rows == 1, "transpose: source rows overlap");
    assert!(rows <= dst_rs || cols == 1, "transpose: destination rows overlap");
    // Elements a `lines x len` view with lines `stride` apart spans.
    let span = |lines: usize, stride: usize, len: usize| (lines - 1).checked_mul(stride)?.checked_add(len);
    assert!(span(rows, src_rs, cols).is_some_and(|n| n <= src.len()), "transpose: source too short");
    assert!(span(cols, dst_rs, rows).is_some_and(|n| n <= dst.len()), "transpose: destination too short");
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<T>() == 4 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the asserts above (overflow
        // checked) keep every element `avx512::transpose32` reads inside
        // `src` and writes inside `dst` (which, as a unique borrow, does not
        // overlap `src`); `T` is 4 bytes (f32: `Float` is sealed), and a
        // transpose only copies bits.
        unsafe {
            avx512::transpose32(
                rows,
                cols,
                src.as_ptr() as *const f32,
                src_rs,
                dst.as_mut_ptr() as *mut f32,
                dst_rs,
            )
        };
        return;
    }
    scalar(rows, cols, src, src_rs, dst, dst_rs);
}

fn scalar<T: Copy>(rows: usize, cols: usize, src: &[T], src_rs: usize, dst: &mut [T], dst_rs: usize) {
    // Blocks of 8 x 8 keep both sides' lines in cache.
    for r0 in (0..rows).step_by(8) {
        for c0 in (0..cols).step_by(8) {
            for r in r0..(r0 + 8).min(rows) {
                for c in c0..(c0 + 8).min(cols) {
                    dst[c * dst_rs + r] = src[r * src_rs + c];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Transposes the 16 rows in `r` in place (`r[i][j]` becomes `r[j][i]`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            r[4 * i] = _mm512_shuffle_ps::<0x44>(a, c);
            r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(b, d);
            r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
        }
        for i in 0..2 {
            for j in 0..4 {
                let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
                t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
            }
        }
        for j in 0..8 {
            let (a, b) = (t[j], t[8 + j]);
            r[j] = _mm512_shuffle_f32x4::<0x88>(a, b);
            r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }

    /// [`super::transpose`] on 4-byte elements, in 16 x 16 blocks with
    /// masked loads and stores at the edges.
    ///
    /// # Safety
    /// Needs AVX-512F; `src` must hold `(rows - 1) * src_rs + cols` readable
    /// elements and `dst` `(cols - 1) * dst_rs + rows` writable ones, not
    /// overlapping.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose32(
        rows: usize,
        cols: usize,
        src: *const f32,
        src_rs: usize,
        dst: *mut f32,
        dst_rs: usize,
    ) {
        let mut blk = [_mm512_setzero_ps(); 16];
        for r0 in (0..rows).step_by(16) {
            let nr = (rows - r0).min(16);
            for c0 in (0..cols).step_by(16) {
                let nc = (cols - c0).min(16);
                let load = ((1u32 << nc) - 1) as u16;
                for (i, v) in blk.iter_mut().enumerate() {
                    *v = if i < nr {
                        // SAFETY: row `r0 + i < rows`, lanes `c0 .. c0 + nc <= cols`
                        // (masked), within `src` (the caller's contract).
                        unsafe { _mm512_maskz_loadu_ps(load, src.add((r0 + i) * src_rs + c0)) }
                    } else {
                        _mm512_setzero_ps()
                    };
                }
                transpose16(&mut blk);
                let store = ((1u32 << nr) - 1) as u16;
                for (j, &v) in blk.iter().enumerate().take(nc) {
                    // SAFETY: column `c0 + j < cols` becomes destination row
                    // `c0 + j`, lanes `r0 .. r0 + nr <= rows` (masked), within
                    // `dst` (the caller's contract).
                    unsafe { _mm512_mask_storeu_ps(dst.add((c0 + j) * dst_rs + r0), store, v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Float>(rows: usize, cols: usize, src_rs: usize, dst_rs: usize) {
        let src: Vec<T> = (0..(rows - 1) * src_rs + cols).map(|i| T::from_usize(i + 1)).collect();
        let sentinel = T::from_f64(-1.0);
        let mut dst = vec![sentinel; (cols - 1) * dst_rs + rows + 3];
        transpose(rows, cols, &src, src_rs, &mut dst, dst_rs);
        for (i, &v) in dst.iter().enumerate() {
            let (c, r) = (i / dst_rs, i % dst_rs);
            if r < rows && c < cols {
                assert_eq!(v, src[r * src_rs + c], "{rows}x{cols} at ({r}, {c})");
            } else {
                assert_eq!(v, sentinel, "{rows}x{cols}: wrote outside the block at {i}");
            }
        }
    }

    #[test]
    fn transposes_every_shape() {
        for &(rows, cols, src_rs, dst_rs) in &[
            (1, 1, 1, 1),
            (16, 16, 16, 16),
            (14, 32, 32, 196),
            (32, 14, 14, 40),
            (3, 17, 20, 5),
            (33, 31, 40, 33),
            (1, 40, 40, 1),
            (40, 1, 1, 41),
        ] {
            check::<f32>(rows, cols, src_rs, dst_rs);
            check::<f64>(rows, cols, src_rs, dst_rs);
        }
    }
}
