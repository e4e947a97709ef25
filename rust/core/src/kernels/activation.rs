//! Elementwise activation functions and their derivatives.

use super::par_elems;
use crate::float::Float;

/// An elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Identity,
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    /// Exact GELU, `x * Phi(x)` with the erf form (torch's default).
    Gelu,
}

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

impl Act {
    /// `true` when the derivative can be computed from the output alone,
    /// which lets a dense layer fuse the activation and skip storing its input.
    pub fn derivative_from_output(self) -> bool {
        match self {
            Act::Identity | Act::Relu | Act::Sigmoid | Act::Tanh => true,
            Act::LeakyRelu(s) => s > 0.0,
            Act::Gelu => false,
        }
    }

    /// The cost of one evaluation, relative to an add (for parallel thresholds).
    fn cost(self) -> usize {
        match self {
            Act::Identity | Act::Relu | Act::LeakyRelu(_) => 1,
            Act::Sigmoid | Act::Tanh => 16,
            Act::Gelu => 24,
        }
    }

    #[inline(always)]
    pub fn apply<T: Float>(self, x: T) -> T {
        match self {
            Act::Identity => x,
            Act::Relu => {
                if x > T::ZERO {
                    x
                } else {
                    T::ZERO
                }
            }
            Act::LeakyRelu(s) => {
                if x > T::ZERO {
                    x
                } else {
                    x * T::from_f64(s)
                }
            }
            Act::Sigmoid => sigmoid(x),
            Act::Tanh => x.tanh(),
            Act::Gelu => T::from_f64(0.5) * x * (T::ONE + (x * T::from_f64(FRAC_1_SQRT_2)).erf()),
        }
    }

    /// d act / dx at input `x` with output `y`.
    #[inline(always)]
    pub fn derivative<T: Float>(self, x: T, y: T) -> T {
        match self {
            Act::Identity => T::ONE,
            Act::Relu => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Act::LeakyRelu(s) => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::from_f64(s)
                }
            }
            Act::Sigmoid => y * (T::ONE - y),
            Act::Tanh => T::ONE - y * y,
            Act::Gelu => {
                let cdf = T::from_f64(0.5) * (T::ONE + (x * T::from_f64(FRAC_1_SQRT_2)).erf());
                let pdf = T::from_f64(INV_SQRT_2PI) * (T::from_f64(-0.5) * x * x).exp();
                cdf + x * pdf
            }
        }
    }

    /// d act / dx from the output alone; valid when
    /// [`Act::derivative_from_output`] is true.
    #[inline(always)]
    pub fn derivative_at_output<T: Float>(self, y: T) -> T {
        match self {
            Act::Relu => {
                if y > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Act::LeakyRelu(s) => {
                if y > T::ZERO {
                    T::ONE
                } else {
                    T::from_f64(s)
                }
            }
            Act::Sigmoid => y * (T::ONE - y),
            Act::Tanh => T::ONE - y * y,
            Act::Identity | Act::Gelu => T::ONE,
        }
    }
}

crate::multiversion! {
    /// `y = act(y)` in place, on the calling thread (one `match` for the
    /// whole slice, so the loop vectorizes).
    fn forward_serial_body<T: Float>(act: Act, y: &mut [T]) {
        match act {
            Act::Identity => {}
            Act::Relu => y.iter_mut().for_each(|v| *v = Act::Relu.apply(*v)),
            a => y.iter_mut().for_each(|v| *v = a.apply(*v)),
        }
    }
}

/// `y = act(y)` in place, serially.
#[inline]
pub fn forward_serial<T: Float>(act: Act, y: &mut [T]) {
    if act != Act::Identity {
        forward_serial_body(act, y);
    }
}

crate::multiversion! {
    /// `out = dy * act'(y)` from the output alone (serial; valid when
    /// [`Act::derivative_from_output`]).
    fn grad_at_output_body<T: Float>(act: Act, y: &[T], dy: &[T], out: &mut [T]) {
        let it = out.iter_mut().zip(y).zip(dy);
        match act {
            Act::Identity => it.for_each(|((o, _), &g)| *o = g),
            Act::Relu => it.for_each(|((o, &yi), &g)| *o = if yi > T::ZERO { g } else { T::ZERO }),
            a => it.for_each(|((o, &yi), &g)| *o = g * a.derivative_at_output(yi)),
        }
    }
}

/// `out = dy * act'(y)`, serially, for `act` whose derivative is a function
/// of its output.
#[inline]
pub fn grad_at_output<T: Float>(act: Act, y: &[T], dy: &[T], out: &mut [T]) {
    grad_at_output_body(act, y, dy, out);
}

/// `y = act(y)` in place.
pub fn forward_inplace<T: Float>(act: Act, y: &mut [T]) {
    if act == Act::Identity {
        return;
    }
    par_elems(y, act.cost(), |_, c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
}

/// `y = act(x)`.
pub fn forward<T: Float>(act: Act, x: &[T], y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    par_elems(y, act.cost(), |off, c| {
        let end = off + c.len();
        for (v, &xi) in c.iter_mut().zip(&x[off..end]) {
            *v = act.apply(xi);
        }
    });
}

/// `dx = dy * act'(x)`.
pub fn backward<T: Float>(act: Act, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    debug_assert!(x.len() == dx.len() && y.len() == dx.len() && dy.len() == dx.len());
    par_elems(dx, act.cost() + 1, |off, c| {
        let end = off + c.len();
        for (((v, &xi), &yi), &gi) in c.iter_mut().zip(&x[off..end]).zip(&y[off..end]).zip(&dy[off..end]) {
            *v = gi * act.derivative(xi, yi);
        }
    });
}

/// `dy *= act'(y)` in place, from the output alone.
pub fn backward_at_output_inplace<T: Float>(act: Act, y: &[T], dy: &mut [T]) {
    if act == Act::Identity {
        return;
    }
    par_elems(dy, 2, |off, c| {
        let end = off + c.len();
        for (g, &yi) in c.iter_mut().zip(&y[off..end]) {
            *g *= act.derivative_at_output(yi);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        let acts = [Act::Relu, Act::LeakyRelu(0.1), Act::Sigmoid, Act::Tanh, Act::Gelu, Act::Identity];
        for act in acts {
            for &x in &[-3.0f64, -0.7, -0.01, 0.2, 1.3, 4.0] {
                let h = 1e-6;
                let fd = (act.apply(x + h) - act.apply(x - h)) / (2.0 * h);
                let y = act.apply(x);
                let d = act.derivative(x, y);
                assert!((fd - d).abs() < 1e-7, "{act:?} at {x}: {fd} vs {d}");
                if act.derivative_from_output() {
                    assert!((act.derivative_at_output(y) - d).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn gelu_known_values() {
        // torch.nn.functional.gelu(torch.tensor([1.0, -1.0], dtype=torch.float64))
        assert!((Act::Gelu.apply(1.0f64) - 0.841_344_746_068_542_9).abs() < 1e-12);
        assert!((Act::Gelu.apply(-1.0f64) + 0.158_655_253_931_457_05).abs() < 1e-12);
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(Act::Sigmoid.apply(-1000.0f32), 0.0);
        assert_eq!(Act::Sigmoid.apply(1000.0f32), 1.0);
    }
}
