//! numpy arrays in and out: borrowing inputs of the dtypes the core reads,
//! targets, and fresh output arrays.

use crate::errors::ShapeError;
use ferrograd::{Features, Float, Target};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;

/// A borrowed input array of one of the dtypes the core reads directly.
pub enum InArray<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

pub fn in_array<'py>(x: &Bound<'py, PyAny>, what: &str) -> PyResult<InArray<'py>> {
    if let Ok(a) = x.cast::<PyArrayDyn<f32>>() {
        return Ok(InArray::F32(a.readonly()));
    }
    if let Ok(a) = x.cast::<PyArrayDyn<f64>>() {
        return Ok(InArray::F64(a.readonly()));
    }
    if let Ok(a) = x.cast::<PyArrayDyn<u8>>() {
        return Ok(InArray::U8(a.readonly()));
    }
    Err(PyTypeError::new_err(format!("{what} must be a numpy array of dtype uint8, float32 or float64")))
}

pub fn slice_err(what: &str) -> PyErr {
    PyTypeError::new_err(format!("{what} must be C-contiguous and aligned (use numpy.ascontiguousarray)"))
}

impl InArray<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            InArray::U8(a) => a.shape(),
            InArray::F32(a) => a.shape(),
            InArray::F64(a) => a.shape(),
        }
    }

    pub fn features(&self, what: &str) -> PyResult<Features<'_>> {
        Ok(match self {
            InArray::U8(a) => Features::U8(a.as_slice().map_err(|_| slice_err(what))?),
            InArray::F32(a) => Features::F32(a.as_slice().map_err(|_| slice_err(what))?),
            InArray::F64(a) => Features::F64(a.as_slice().map_err(|_| slice_err(what))?),
        })
    }

    /// `(features, n, per-sample shape)` for batch-first data.
    pub fn batch(&self, what: &str) -> PyResult<(Features<'_>, usize, Vec<usize>)> {
        let shape = self.shape();
        if shape.is_empty() {
            return Err(ShapeError::new_err(format!("{what} must have a batch dimension, got a 0-d array")));
        }
        Ok((self.features(what)?, shape[0], shape[1..].to_vec()))
    }
}

/// Targets: int64 class labels, or values in the model's dtype.
pub enum TargetArray<'py, T: Element> {
    Labels(PyReadonlyArrayDyn<'py, i64>),
    Values(PyReadonlyArrayDyn<'py, T>),
}

pub fn target_array<'py, T: Element + Float>(y: &Bound<'py, PyAny>) -> PyResult<TargetArray<'py, T>> {
    if let Ok(a) = y.cast::<PyArrayDyn<i64>>() {
        return Ok(TargetArray::Labels(a.readonly()));
    }
    if let Ok(a) = y.cast::<PyArrayDyn<T>>() {
        return Ok(TargetArray::Values(a.readonly()));
    }
    Err(PyTypeError::new_err(format!("y must be a numpy array of dtype int64 (class labels) or {}", T::NAME)))
}

impl<T: Element + Float> TargetArray<'_, T> {
    /// The target, checked against `n` samples and the model's output shape.
    pub fn target(&self, n: usize, out_shape: &[usize]) -> PyResult<Target<'_, T>> {
        match self {
            TargetArray::Labels(a) => {
                if a.ndim() != 1 {
                    return Err(ShapeError::new_err(format!(
                        "integer class labels must be 1-d of length {n}, got shape {:?}",
                        a.shape()
                    )));
                }
                if a.shape()[0] != n {
                    return Err(ShapeError::new_err(format!(
                        "X and y have different lengths: {n} samples but {} labels",
                        a.shape()[0]
                    )));
                }
                Ok(Target::Labels(a.as_slice().map_err(|_| slice_err("y"))?))
            }
            TargetArray::Values(a) => {
                let shape = a.shape();
                if shape.first() != Some(&n) {
                    return Err(ShapeError::new_err(format!(
                        "X and y have different lengths: {n} samples but y has shape {shape:?}"
                    )));
                }
                if shape[1..] != *out_shape {
                    let mut want = vec![n];
                    want.extend_from_slice(out_shape);
                    return Err(ShapeError::new_err(format!(
                        "y has shape {shape:?}, expected {want:?} (the model's output shape)"
                    )));
                }
                Ok(Target::Values(a.as_slice().map_err(|_| slice_err("y"))?))
            }
        }
    }
}

/// A new array of `shape` holding a copy of `data`.
pub fn new_array<'py, T: Element + Copy>(
    py: Python<'py>,
    data: &[T],
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let a = PyArrayDyn::<T>::zeros(py, shape, false);
    {
        let mut w = a.readwrite();
        w.as_slice_mut()
            .map_err(|_| PyRuntimeError::new_err("fresh array not contiguous"))?
            .copy_from_slice(data);
    }
    Ok(a.into_any())
}
