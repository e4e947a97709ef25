//! The scalar types the engine computes in: `f32` (default) and `f64`.
//!
//! [`Float`] is sealed: the SIMD kernels pick lane counts, masks and
//! instructions from `size_of::<T>()` and assume an IEEE `f32` or `f64`
//! underneath, so an implementation for any other type would let safe code
//! read and write out of bounds. This module imports nothing from the rest
//! of the crate: everything else builds on it.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

mod sealed {
    /// Implemented for `f32` and `f64` only, and not nameable outside this
    /// crate, so nothing else can implement [`super::Float`].
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type: `f32` or `f64`, and nothing else.
///
/// Sealed (the kernels rely on the size and bit layout of these two types
/// for their unsafe vector code): its supertrait `sealed::Sealed` lives in
/// a private module, so no other crate can implement it, nor therefore
/// `Float`:
///
/// ```compile_fail,E0603
/// struct Half(u16);
/// impl ferrograd::float::sealed::Sealed for Half {}
/// ```
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + PartialOrd
    + PartialEq
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + 'static
{
    /// Name as numpy spells it.
    const NAME: &'static str;
    const ZERO: Self;
    const ONE: Self;
    /// The smallest positive normal value.
    const MIN_POSITIVE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_u8(v: u8) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// `self * a + b` with one rounding (a fused multiply-add where the
    /// CPU has one; slow in software elsewhere: use it in kernels that are
    /// compiled with FMA enabled).
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn is_finite(self) -> bool;
    #[inline]
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }

    /// `C = alpha * A * B + beta * C` over strided views, on the calling
    /// thread (`threads <= 1`) or split by the gemm crate over `threads`
    /// workers of the current rayon pool.
    ///
    /// # Safety
    /// The pointers and strides must describe valid `m x k`, `k x n` and
    /// `m x n` views; `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
        threads: usize,
    );
}

macro_rules! impl_float {
    ($t:ty, $name:expr, $erf:path) => {
        impl Float for $t {
            const NAME: &'static str = $name;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const MIN_POSITIVE: Self = <$t>::MIN_POSITIVE;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_u8(v: u8) -> Self {
                v as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                if self > other {
                    self
                } else {
                    other
                }
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
                threads: usize,
            ) {
                // SAFETY: forwarded from the caller's contract. `gemm` computes
                // dst = alpha' * dst + beta' * lhs * rhs, reading dst only
                // when `read_dst`, so ours maps to alpha' = beta, beta' = alpha.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c,
                        csc,
                        rsc,
                        beta != 0.0,
                        a,
                        csa,
                        rsa,
                        b,
                        csb,
                        rsb,
                        beta,
                        alpha,
                        false,
                        false,
                        false,
                        if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
                    )
                }
            }
        }
    };
}

impl_float!(f32, "float32", libm::erff);
impl_float!(f64, "float64", libm::erf);
