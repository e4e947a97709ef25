//! The engine model behind `ferrograd._core.Model`: `Net` (a `Sequential`
//! of either float type), `with_net!` to dispatch over it, and the `PyModel`
//! handle. Its Python methods are in `model.rs`; optimizers (`optim.rs`)
//! hold a handle and lock it here, so neither of those imports the other.

use crate::errors::try_lock;
use ferrograd::Sequential;
use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard};

/// A compiled model of either float type.
pub enum Net {
    F32(Sequential<f32>),
    F64(Sequential<f64>),
}

/// Dispatches `$body` over the model's element type, binding `$m` to the
/// `Sequential<T>` and `$t` to `T`.
macro_rules! with_net {
    ($net:expr, $m:ident, $t:ident, $body:expr) => {
        match $net {
            Net::F32($m) => {
                type $t = f32;
                $body
            }
            Net::F64($m) => {
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use with_net;

/// A compiled Sequential model (use `ferrograd.Sequential`).
///
/// Frozen, with the model behind a mutex that calls never wait for: a call
/// while another one runs (from another thread, or from a callback during
/// an epoch) gets a `RuntimeError` that says so, instead of PyO3's
/// "Already borrowed".
#[pyclass(module = "ferrograd._core", name = "Model", frozen)]
pub struct PyModel {
    net: Mutex<Net>,
}

impl PyModel {
    /// A handle owning `net`.
    pub fn wrap(net: Net) -> Self {
        PyModel { net: Mutex::new(net) }
    }

    /// The model, or the in-use error.
    pub fn lock(&self) -> PyResult<MutexGuard<'_, Net>> {
        try_lock(&self.net, "model")
    }
}
