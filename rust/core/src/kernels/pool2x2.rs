//! 2x2, stride-2 pooling of one pair of rows, vectorized with AVX-512 for
//! float32: each window's four inputs are de-interleaved into four vectors
//! (and the gradient interleaved back) with two-source permutes. The
//! portable loops in `layers/pool.rs` do the same element by element.

use crate::float::Float;

/// Whether [`forward`] and [`backward`] can run for `T` on this CPU.
pub fn available<T: Float>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::mem::size_of::<T>() == 4 && T::NAME == "float32" && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i] = max (or mean) of r0[2i], r0[2i+1], r1[2i], r1[2i+1]`.
/// Panics unless [`available`] and the rows hold `2 * out.len()` elements.
pub fn forward<T: Float>(max: bool, r0: &[T], r1: &[T], out: &mut [T]) {
    assert!(available::<T>(), "pool2x2: needs AVX-512 and float32");
    let n = out.len();
    assert!(r0.len() >= 2 * n && r1.len() >= 2 * n, "pool2x2: rows too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present and `T` is f32 (checked above; `Float`
    // is sealed, so a 4-byte `Float` is f32); every pointer covers `2 n`
    // (inputs) or `n` (output) elements (`2 n` cannot overflow: `n` f32s fit
    // in `isize::MAX` bytes).
    unsafe {
        avx512::forward(
            max,
            r0.as_ptr() as *const f32,
            r1.as_ptr() as *const f32,
            out.as_mut_ptr() as *mut f32,
            n,
        )
    }
}

/// The gradient of [`forward`]: each window's `g` to its first maximum in
/// scan order (found by comparing with the output `y`), or a quarter to
/// each input for the mean. Panics unless [`available`] and the sizes fit.
pub fn backward<T: Float>(max: bool, r0: &[T], r1: &[T], y: &[T], g: &[T], d0: &mut [T], d1: &mut [T]) {
    assert!(available::<T>(), "pool2x2: needs AVX-512 and float32");
    let n = g.len();
    assert!(
        r0.len() >= 2 * n && r1.len() >= 2 * n && y.len() >= n && d0.len() >= 2 * n && d1.len() >= 2 * n,
        "pool2x2: sizes do not fit"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `forward`; the two outputs are distinct unique borrows.
    unsafe {
        avx512::backward(
            max,
            r0.as_ptr() as *const f32,
            r1.as_ptr() as *const f32,
            y.as_ptr() as *const f32,
            g.as_ptr() as *const f32,
            d0.as_mut_ptr() as *mut f32,
            d1.as_mut_ptr() as *mut f32,
            n,
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn idx(v: [i32; 16]) -> __m512i {
        // SAFETY: reads 16 i32s from a local array.
        unsafe { _mm512_loadu_si512(v.as_ptr() as *const __m512i) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn masks(k: usize) -> (u16, u16, u16) {
        // Lanes of the output, of the first and of the second input vector.
        let m = |c: usize| ((1u32 << c.min(16)) - 1) as u16;
        (m(k), m(2 * k), m((2 * k).saturating_sub(16)))
    }

    const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
    const LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
    const HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

    /// Even and odd elements of `p[0 .. 2k]` (`k <= 16`), masked loads.
    ///
    /// # Safety
    /// `2 k` readable elements at `p`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn split(p: *const f32, k: usize) -> (__m512, __m512) {
        let (_, m0, m1) = masks(k);
        // SAFETY: the masks keep the loads within `2 k` elements.
        let (a, b) = unsafe { (_mm512_maskz_loadu_ps(m0, p), _mm512_maskz_loadu_ps(m1, p.add(16))) };
        (_mm512_permutex2var_ps(a, idx(EVEN), b), _mm512_permutex2var_ps(a, idx(ODD), b))
    }

    /// Interleaves `e` and `o` into `p[0 .. 2k]`, masked stores.
    ///
    /// # Safety
    /// `2 k` writable elements at `p`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn join(p: *mut f32, k: usize, e: __m512, o: __m512) {
        let (_, m0, m1) = masks(k);
        let lo = _mm512_permutex2var_ps(e, idx(LO), o);
        let hi = _mm512_permutex2var_ps(e, idx(HI), o);
        // SAFETY: the masks keep the stores within `2 k` elements.
        unsafe {
            _mm512_mask_storeu_ps(p, m0, lo);
            _mm512_mask_storeu_ps(p.add(16), m1, hi);
        }
    }

    /// # Safety
    /// AVX-512F; `2 n` elements at `r0`, `r1`, `n` at `out`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(max: bool, r0: *const f32, r1: *const f32, out: *mut f32, n: usize) {
        let quarter = _mm512_set1_ps(0.25);
        for i in (0..n).step_by(16) {
            let k = (n - i).min(16);
            // SAFETY: windows `i .. i + k` are within the rows (the caller's contract).
            unsafe {
                let (a0, a1) = split(r0.add(2 * i), k);
                let (b0, b1) = split(r1.add(2 * i), k);
                let v = if max {
                    _mm512_max_ps(_mm512_max_ps(a0, a1), _mm512_max_ps(b0, b1))
                } else {
                    _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), b0), b1), quarter)
                };
                _mm512_mask_storeu_ps(out.add(i), masks(k).0, v);
            }
        }
    }

    /// # Safety
    /// AVX-512F; `2 n` elements at `r0`, `r1`, `d0`, `d1`, `n` at `y`, `g`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(
        max: bool,
        r0: *const f32,
        r1: *const f32,
        y: *const f32,
        g: *const f32,
        d0: *mut f32,
        d1: *mut f32,
        n: usize,
    ) {
        let quarter = _mm512_set1_ps(0.25);
        for i in (0..n).step_by(16) {
            let k = (n - i).min(16);
            let mk = masks(k).0;
            // SAFETY: windows `i .. i + k` are within every row (the caller's contract).
            unsafe {
                let gv = _mm512_maskz_loadu_ps(mk, g.add(i));
                let (e0, o0, e1, o1) = if max {
                    let m = _mm512_maskz_loadu_ps(mk, y.add(i));
                    let (a0, a1) = split(r0.add(2 * i), k);
                    let (b0, _) = split(r1.add(2 * i), k);
                    // The first input equal to the maximum, in scan order
                    // (the last one gets what the others do not take).
                    let k0 = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a0, m);
                    let k1 = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a1, m) & !k0;
                    let k2 = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(b0, m) & !(k0 | k1);
                    let k3 = !(k0 | k1 | k2);
                    (
                        _mm512_maskz_mov_ps(k0, gv),
                        _mm512_maskz_mov_ps(k1, gv),
                        _mm512_maskz_mov_ps(k2, gv),
                        _mm512_maskz_mov_ps(k3, gv),
                    )
                } else {
                    let s = _mm512_mul_ps(gv, quarter);
                    (s, s, s, s)
                };
                join(d0.add(2 * i), k, e0, o0);
                join(d1.add(2 * i), k, e1, o1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_window_definition() {
        if !available::<f32>() {
            return;
        }
        for n in [1, 7, 14, 16, 17, 33] {
            let r0: Vec<f32> = (0..2 * n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let r1: Vec<f32> = (0..2 * n).map(|i| ((i * 53) % 7) as f32 - 3.0).collect();
            let g: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            for max in [true, false] {
                let mut y = vec![0.0f32; n];
                forward(max, &r0, &r1, &mut y);
                let (mut d0, mut d1) = (vec![f32::NAN; 2 * n], vec![f32::NAN; 2 * n]);
                backward(max, &r0, &r1, &y, &g, &mut d0, &mut d1);
                for i in 0..n {
                    let w = [r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]];
                    let got = [d0[2 * i], d0[2 * i + 1], d1[2 * i], d1[2 * i + 1]];
                    if max {
                        let m = w.iter().copied().fold(f32::MIN, f32::max);
                        assert_eq!(y[i], m);
                        let first = w.iter().position(|&v| v == m).unwrap_or(0);
                        for (j, &d) in got.iter().enumerate() {
                            assert_eq!(d, if j == first { g[i] } else { 0.0 }, "n {n} window {i}");
                        }
                    } else {
                        assert_eq!(y[i], (w[0] + w[1] + w[2] + w[3]) * 0.25);
                        assert!(got.iter().all(|&d| d == g[i] * 0.25));
                    }
                }
            }
        }
    }
}
