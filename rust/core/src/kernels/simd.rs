//! Runtime CPU-feature dispatch for the elementwise kernels.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so wheels run anywhere.
//! [`multiversion!`](crate::multiversion) compiles a loop body for AVX-512
//! and AVX2+FMA as well and picks the widest the CPU supports at run time. Rust never contracts `a * b + c`
//! into an FMA on its own, and IEEE add, mul, div and sqrt are exact to the
//! last bit at any width, so every tier gives bitwise identical results.

/// Defines a function whose body is compiled three times (AVX-512, AVX2+FMA,
/// baseline) and dispatched at run time, for elementwise loops that should
/// vectorize for the CPU at hand. Arguments are listed with their types; the
/// function is generic over one `Float` type parameter, optionally followed
/// by more type parameters with one bound each (`<T: Float, O: Watch<T>>`).
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: Float $(, $G:ident: $B:path)* $(,)?>
        ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: $crate::float::Float $(, $G: $B)*>($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<$T: $crate::float::Float $(, $G: $B)*>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4<$T: $crate::float::Float $(, $G: $B)*>($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3<$T: $crate::float::Float $(, $G: $B)*>($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::kernels::simd::level() {
                    // SAFETY: `level` reported AVX-512F/VL support on this CPU.
                    2 => return unsafe { v4($($arg),*) },
                    // SAFETY: `level` reported AVX2 and FMA support on this CPU.
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// 2: AVX-512, 1: AVX2+FMA, 0: baseline (cached by std's detection).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn level() -> u8 {
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
        2
    } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    crate::multiversion! {
        fn kernel<T: Float>(x: &[T], out: &mut [T]) {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (v * v + T::ONE).sqrt() / (v.abs() + T::from_f64(0.5));
            }
        }
    }

    #[test]
    fn dispatched_matches_scalar_bitwise() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut out = vec![0.0f32; x.len()];
        kernel(&x, &mut out);
        for (o, &v) in out.iter().zip(&x) {
            assert_eq!(o.to_bits(), ((v * v + 1.0).sqrt() / (v.abs() + 0.5)).to_bits());
        }
    }
}
