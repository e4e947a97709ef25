//! Gradient clipping's arithmetic for `ferrograd.clip_grad_norm_`.

use crate::errors::to_py;
use ferrograd::clip::{total_norm, ClipNorm};
use pyo3::prelude::*;

/// Checks `max_norm` and `norm_type`; raises `ValueError` naming the bad one.
#[pyfunction]
pub fn check_clip(max_norm: f64, norm_type: f64) -> PyResult<()> {
    ClipNorm::new(max_norm, norm_type).map(drop).map_err(to_py)
}

/// `(total, coef)`: the total norm of per-parameter norms and the factor
/// the gradients are multiplied by.
#[pyfunction]
pub fn clip_coef(norms: Vec<f64>, max_norm: f64, norm_type: f64) -> PyResult<(f64, f64)> {
    let clip = ClipNorm::new(max_norm, norm_type).map_err(to_py)?;
    let total = total_norm(&norms, norm_type).map_err(to_py)?;
    Ok((total, clip.coef(total)))
}
