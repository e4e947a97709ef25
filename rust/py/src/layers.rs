//! Layer specifications: JSON from the Python classes, checked by the core.

use crate::errors::guarded;
use ferrograd::{Error, LayerSpec};
use pyo3::prelude::*;

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
