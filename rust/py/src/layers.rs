//! Layer specifications: JSON from the Python classes, checked by the core,
//! and what the core's layer registry knows (names, arguments, parameter
//! shapes) for the Python side, which repeats none of it.

use crate::errors::guarded;
use ferrograd::{Error, LayerSpec};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Parses each layer's JSON, naming the layer index in errors.
pub fn parse_specs(specs: &[String]) -> ferrograd::Result<Vec<LayerSpec>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            LayerSpec::from_json(s).map_err(|e| Error { message: format!("layer {i}: {}", e.message), ..e })
        })
        .collect()
}

/// Checks one layer's configuration (a JSON object string); raises a
/// `ValueError` naming the layer and the bad value.
#[pyfunction]
pub fn check_layer(spec: &str) -> PyResult<()> {
    guarded(|| LayerSpec::from_json(spec).map(drop))
}

/// The registered layers, in registration order: each name with its
/// arguments (its configuration's fields, in order).
#[pyfunction]
pub fn layer_types() -> Vec<(&'static str, Vec<&'static str>)> {
    LayerSpec::NAMES.iter().map(|&n| (n, LayerSpec::arguments(n).unwrap_or_default().to_vec())).collect()
}

/// What one layer declares: `params` and `buffers` (lists of `(name,
/// shape)`), `num_params` (`None` when it overflows 64 bits), and
/// `output_shape` for a per-sample `input_shape` (`None` without one). Raises `ValueError` for a bad spec
/// or an input shape the layer does not take.
#[pyfunction]
#[pyo3(signature = (spec, input_shape=None))]
pub fn layer_info<'py>(
    py: Python<'py>,
    spec: &str,
    input_shape: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyDict>> {
    let info = guarded(|| LayerSpec::from_json(spec)?.info(input_shape.as_deref()))?;
    let out = PyDict::new(py);
    let params: Vec<_> = info.params.into_iter().map(|p| (p.name, p.shape)).collect();
    let buffers: Vec<_> = info.buffers.into_iter().map(|b| (b.name, b.shape)).collect();
    out.set_item("params", params)?;
    out.set_item("buffers", buffers)?;
    out.set_item("num_params", info.num_params)?;
    out.set_item("output_shape", info.output_shape)?;
    Ok(out)
}
