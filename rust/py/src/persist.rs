//! safetensors files: `read_safetensors`/`loads_safetensors` return
//! `([(name, array)], metadata)` in name order; `write_safetensors` (atomic)
//! and `dumps_safetensors` take the same. The checks live in the core.

use crate::errors::{compute, guarded};
use ferrograd::persist::{self, Contents, TensorRef, Values, ValuesRef};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use std::collections::BTreeMap;
use std::path::PathBuf;

type Tensors<'py> = Vec<(String, Bound<'py, PyAny>)>;

fn to_python<'py>(py: Python<'py>, c: Contents) -> PyResult<(Tensors<'py>, BTreeMap<String, String>)> {
    let mut out = Vec::with_capacity(c.tensors.len());
    for t in c.tensors {
        let flat = match t.values {
            Values::F32(v) => PyArray1::from_vec(py, v).into_any(),
            Values::F64(v) => PyArray1::from_vec(py, v).into_any(),
            Values::I64(v) => PyArray1::from_vec(py, v).into_any(),
        };
        // numpy's own reshape: rust-numpy's gives 0-d shapes one dimension.
        let shape = PyTuple::new(py, &t.shape)?;
        out.push((t.name, flat.call_method1("reshape", (shape,))?));
    }
    Ok((out, c.metadata))
}

/// Reads and checks a safetensors file (float16/bfloat16 widened to
/// float32, integers to int64).
#[pyfunction]
pub fn read_safetensors<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Tensors<'py>, BTreeMap<String, String>)> {
    let c = compute(py, || persist::read(&path))?;
    to_python(py, c)
}

/// [`read_safetensors`] from bytes in memory.
#[pyfunction]
pub fn loads_safetensors<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<(Tensors<'py>, BTreeMap<String, String>)> {
    let c = guarded(|| persist::decode(data))?;
    to_python(py, c)
}

enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    I64(PyReadonlyArrayDyn<'py, i64>),
}

fn hold<'py>(name: &str, a: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    if let Ok(a) = a.cast::<PyArrayDyn<f32>>() {
        return Ok(Held::F32(a.readonly()));
    }
    if let Ok(a) = a.cast::<PyArrayDyn<f64>>() {
        return Ok(Held::F64(a.readonly()));
    }
    if let Ok(a) = a.cast::<PyArrayDyn<i64>>() {
        return Ok(Held::I64(a.readonly()));
    }
    Err(PyTypeError::new_err(format!("tensor {name:?} must be a float32, float64 or int64 numpy array")))
}

fn encode(tensors: &Tensors<'_>, metadata: &BTreeMap<String, String>) -> PyResult<Vec<u8>> {
    let held = tensors.iter().map(|(n, a)| hold(n, a)).collect::<PyResult<Vec<_>>>()?;
    let not_contiguous = |n: &str| PyTypeError::new_err(format!("tensor {n:?} must be C-contiguous"));
    let mut refs = Vec::with_capacity(held.len());
    for ((name, _), h) in tensors.iter().zip(&held) {
        let (shape, values) = match h {
            Held::F32(a) => (a.shape(), ValuesRef::F32(a.as_slice().map_err(|_| not_contiguous(name))?)),
            Held::F64(a) => (a.shape(), ValuesRef::F64(a.as_slice().map_err(|_| not_contiguous(name))?)),
            Held::I64(a) => (a.shape(), ValuesRef::I64(a.as_slice().map_err(|_| not_contiguous(name))?)),
        };
        refs.push(TensorRef { name, shape, values });
    }
    guarded(|| persist::encode(&refs, metadata))
}

/// Writes tensors and metadata as a safetensors file, atomically.
#[pyfunction]
pub fn write_safetensors(
    py: Python<'_>,
    path: PathBuf,
    tensors: Tensors<'_>,
    metadata: BTreeMap<String, String>,
) -> PyResult<()> {
    let bytes = encode(&tensors, &metadata)?;
    compute(py, || persist::write_atomic(&path, &bytes))
}

/// Tensors and metadata as safetensors bytes.
#[pyfunction]
pub fn dumps_safetensors<'py>(
    py: Python<'py>,
    tensors: Tensors<'py>,
    metadata: BTreeMap<String, String>,
) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = encode(&tensors, &metadata)?;
    Ok(PyBytes::new(py, &bytes))
}
