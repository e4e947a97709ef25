//! Gradient clipping by the total norm, as `torch.nn.utils.clip_grad_norm_`:
//! the norm of the per-parameter gradient norms, and a scale factor
//! `max_norm / (total + 1e-6)` applied when it is below 1.

use crate::error::{Error, Result};
use crate::kernels::norms::norm_of;

/// Added to the total norm before dividing, as torch does.
pub const CLIP_EPS: f64 = 1e-6;

/// Clip gradients to a total `norm_type`-norm of at most `max_norm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipNorm {
    pub max_norm: f64,
    pub norm_type: f64,
}

impl ClipNorm {
    /// Checks `max_norm` (finite, > 0) and `norm_type` (> 0, or infinity).
    pub fn new(max_norm: f64, norm_type: f64) -> Result<Self> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(Error::value(format!("max_norm must be a finite value > 0, got {max_norm}")));
        }
        check_norm_type(norm_type)?;
        Ok(ClipNorm { max_norm, norm_type })
    }

    /// The factor the gradients are multiplied by for a total norm `total`:
    /// `min(max_norm / (total + 1e-6), 1)`; NaN when `total` is NaN (torch
    /// multiplies by it too).
    pub fn coef(&self, total: f64) -> f64 {
        let c = self.max_norm / (total + CLIP_EPS);
        if c.is_nan() {
            c
        } else {
            c.min(1.0)
        }
    }
}

/// Checks a norm order: a value > 0, or infinity (the largest magnitude).
pub fn check_norm_type(p: f64) -> Result<()> {
    if p == f64::INFINITY || (p.is_finite() && p > 0.0) {
        Ok(())
    } else {
        Err(Error::value(format!("norm_type must be a value > 0 or inf, got {p}")))
    }
}

/// The total norm of a list of per-parameter norms (`torch.linalg.vector_norm`
/// of the stacked norms); 0 for none.
pub fn total_norm(norms: &[f64], norm_type: f64) -> Result<f64> {
    check_norm_type(norm_type)?;
    Ok(norm_of(norms, norm_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coef_and_checks() {
        let c = ClipNorm::new(1.0, 2.0).expect("valid");
        assert_eq!(c.coef(0.5), 1.0);
        assert!((c.coef(4.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
        assert!(c.coef(f64::NAN).is_nan());
        assert_eq!(c.coef(f64::INFINITY), 0.0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(ClipNorm::new(bad, 2.0).is_err(), "{bad}");
        }
        for bad in [0.0, -2.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(ClipNorm::new(1.0, bad).is_err(), "{bad}");
        }
        assert_eq!(total_norm(&[3.0, 4.0], 2.0).expect("norm"), 5.0);
        assert_eq!(total_norm(&[3.0, -4.0], f64::INFINITY).expect("norm"), 4.0);
        assert_eq!(total_norm(&[3.0, 4.0], 1.0).expect("norm"), 7.0);
        assert_eq!(total_norm(&[], 2.0).expect("norm"), 0.0);
    }
}
