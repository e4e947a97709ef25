//! `ferrograd._core.loss_value`: a loss and its gradient for a model output.

use crate::arrays::{new_array, slice_err, target_array};
use crate::errors::{compute, to_py, ShapeError};
use crate::model::totals_tuple;
use ferrograd::loss::{loss_grad, validate_target, RowStat};
use ferrograd::{Error, Float, Loss};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn loss_impl<'py, T: Element + Float>(
    py: Python<'py>,
    loss: Loss,
    out: &Bound<'py, PyArrayDyn<T>>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let o = out.readonly();
    let shape = o.shape().to_vec();
    if shape.is_empty() {
        return Err(ShapeError::new_err("the output must have a batch dimension, got a 0-d array"));
    }
    if loss == Loss::CrossEntropy && shape.len() != 2 {
        return Err(ShapeError::new_err(format!(
            "cross_entropy expects outputs of shape (N, C), got {shape:?}"
        )));
    }
    let n = shape[0];
    if n == 0 {
        return Err(PyValueError::new_err("the output is empty (0 samples)"));
    }
    let cols: usize = shape[1..].iter().product();
    let xs = o.as_slice().map_err(|_| slice_err("the output"))?;
    let ya = target_array::<T>(y)?;
    let target = ya.target(n, &shape[1..])?;
    let mut grad = if with_grad { vec![T::ZERO; xs.len()] } else { Vec::new() };
    let t = compute(py, || {
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("the output contains NaN or inf (flat index {i})")));
        }
        validate_target(loss, target, n, cols)?;
        let mut stats = vec![RowStat::default(); n];
        loss_grad(loss, xs, n, cols, target, if with_grad { Some(&mut grad) } else { None }, &mut stats)
    })?;
    let g = if with_grad { Some(new_array(py, &grad, &shape)?) } else { None };
    let (m, acc) = totals_tuple(&t, loss);
    Ok((m, acc, g))
}

/// `(mean loss, accuracy or None, gradient or None)` of `loss` for model
/// output `out` (float32 or float64) and targets `y`.
#[pyfunction]
#[pyo3(signature = (loss, out, y, with_grad=true))]
pub fn loss_value<'py>(
    py: Python<'py>,
    loss: &str,
    out: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let loss = Loss::parse(loss).map_err(to_py)?;
    if let Ok(a) = out.cast::<PyArrayDyn<f32>>() {
        return loss_impl(py, loss, a, y, with_grad);
    }
    if let Ok(a) = out.cast::<PyArrayDyn<f64>>() {
        return loss_impl(py, loss, a, y, with_grad);
    }
    Err(PyTypeError::new_err("the output must be a float32 or float64 numpy array"))
}
