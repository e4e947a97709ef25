//! Losses for the Python side: `loss_value` (a loss and its gradient for a
//! model output), checks of loss options and class weights.

use crate::arrays::{new_array, slice_err, target_array};
use crate::errors::{compute, guarded, ShapeError};

use ferrograd::loss::{check_sample_weights, loss_grad, validate_target, RowStat};
use ferrograd::{Error, Float, Loss, LossSpec, Totals};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// Parses a loss (a name or its JSON configuration).
pub fn parse_loss(text: &str) -> PyResult<LossSpec> {
    guarded(|| LossSpec::from_json(text))
}

/// `(mean loss, accuracy or None)`: the weighted total of a model with
/// several outputs, and its first output's accuracy.
pub fn totals_tuple(t: &Totals, loss: Loss) -> (f64, Option<f64>) {
    (t.mean(), if loss.has_accuracy() { Some(t.accuracy()) } else { None })
}

/// Borrows optional per-sample weights of the model's dtype.
pub fn sample_weights<'py, T: Element + Float>(
    w: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
    match w {
        None => Ok(None),
        Some(w) => {
            let a = w.cast::<PyArrayDyn<T>>().map_err(|_| {
                PyTypeError::new_err(format!("sample_weight must be a 1-d {} array", T::NAME))
            })?;
            if a.ndim() != 1 {
                return Err(ShapeError::new_err(format!(
                    "sample_weight must be 1-d (one weight per sample), got shape {:?}",
                    a.shape()
                )));
            }
            Ok(Some(a.readonly()))
        }
    }
}

fn loss_impl<'py, T: Element + Float>(
    py: Python<'py>,
    loss: &LossSpec,
    out: &Bound<'py, PyArrayDyn<T>>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
    sample_weight: Option<&Bound<'py, PyAny>>,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let o = out.readonly();
    let shape = o.shape().to_vec();
    if shape.is_empty() {
        return Err(ShapeError::new_err("the output must have a batch dimension, got a 0-d array"));
    }
    if loss.kind == Loss::CrossEntropy && shape.len() != 2 {
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
    let wa = sample_weights::<T>(sample_weight)?;
    let w = match &wa {
        Some(a) => Some(a.as_slice().map_err(|_| slice_err("sample_weight"))?),
        None => None,
    };
    let mut grad = if with_grad { vec![T::ZERO; xs.len()] } else { Vec::new() };
    let t = compute(py, || {
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("the output contains NaN or inf (flat index {i})")));
        }
        loss.check_cols(cols)?;
        validate_target(loss.kind, target, n, cols)?;
        if let Some(w) = w {
            check_sample_weights(w, n)?;
        }
        let mut stats = vec![RowStat::default(); n];
        let g = if with_grad { Some(&mut grad[..]) } else { None };
        loss_grad(loss, xs, n, cols, target, w, g, &mut stats)
    })?;
    let g = if with_grad { Some(new_array(py, &grad, &shape)?) } else { None };
    let acc = if loss.kind.has_accuracy() { Some(t.accuracy()) } else { None };
    let m = t.mean();
    Ok((m, acc, g))
}

/// `(mean loss, accuracy or None, gradient or None)` of `loss` (a name or
/// its JSON configuration) for model output `out` (float32 or float64) and
/// targets `y`, optionally weighted per sample.
#[pyfunction]
#[pyo3(signature = (loss, out, y, with_grad=true, sample_weight=None))]
pub fn loss_value<'py>(
    py: Python<'py>,
    loss: &str,
    out: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
    sample_weight: Option<&Bound<'py, PyAny>>,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let loss = parse_loss(loss)?;
    if let Ok(a) = out.cast::<PyArrayDyn<f32>>() {
        return loss_impl(py, &loss, a, y, with_grad, sample_weight);
    }
    if let Ok(a) = out.cast::<PyArrayDyn<f64>>() {
        return loss_impl(py, &loss, a, y, with_grad, sample_weight);
    }
    Err(PyTypeError::new_err("the output must be a float32 or float64 numpy array"))
}

/// Checks a loss configuration (JSON); raises `ValueError` naming the bad
/// option.
#[pyfunction]
pub fn check_loss(loss: &str) -> PyResult<()> {
    parse_loss(loss).map(drop)
}

/// Keras's `class_weight` for `classes` classes as a full list of weights:
/// `keys` (class indices, or None for a list of every class's weight) and
/// their `values`; classes not named weigh 1.
#[pyfunction]
#[pyo3(signature = (keys, values, classes))]
pub fn class_weights(keys: Option<Vec<i64>>, values: Vec<f64>, classes: usize) -> PyResult<Vec<f64>> {
    guarded(|| {
        let out = match keys {
            None => {
                if values.len() != classes {
                    return Err(Error::value(format!(
                        "class_weight has {} weights, expected {classes} (one per class)",
                        values.len()
                    )));
                }
                values
            }
            Some(keys) => {
                let mut out = vec![1.0; classes];
                for (&k, &v) in keys.iter().zip(&values) {
                    if k < 0 || k as u64 >= classes as u64 {
                        return Err(Error::value(format!(
                            "class_weight names class {k}, but the model has {classes} classes (0 to {})",
                            classes - 1
                        )));
                    }
                    out[k as usize] = v;
                }
                out
            }
        };
        if let Some((i, &v)) = out.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::value(format!("class_weight must be finite and >= 0, got {v} for class {i}")));
        }
        Ok(out)
    })
}
