//! Data-parallel training's binding side: the gradient hook of the fused
//! epoch and of the step API calls a Python callable (the package's MPI
//! all-reduce) on a zero-copy view of the flat gradient buffer. ferrograd
//! links nothing of MPI: the transport is the callable's.

use crate::net::{with_net, Net, PyModel};
use ferrograd::{Error, Float};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::Mutex;

/// `PyBUF_WRITE`: a writable memoryview (CPython's `memoryobject.h`; pyo3's
/// abi3 bindings leave the buffer constants out).
const PYBUF_WRITE: std::ffi::c_int = 0x200;

/// Calls `f(view)` with a writable `memoryview` (format `"B"`, the raw
/// bytes) over `g`, and releases the view when `f` returns, so that the
/// view cannot be used after this call: a later access raises
/// `ValueError`. A `BufferError` from the release (something still holds
/// an export of the view, e.g. a numpy array over it) is reported.
pub fn call_with_view<T: Float>(py: Python<'_>, f: &Py<PyAny>, g: &mut [T]) -> PyResult<()> {
    let bytes = isize::try_from(std::mem::size_of_val(g))
        .map_err(|_| PyRuntimeError::new_err("gradient buffer too large for a memoryview"))?;
    // SAFETY: the memoryview points at `g`, which is borrowed mutably for
    // this whole call (nothing else reads or writes it meanwhile), and is
    // released below before the borrow ends; a released memoryview refuses
    // every access.
    let view = unsafe {
        let ptr = pyo3::ffi::PyMemoryView_FromMemory(g.as_mut_ptr().cast(), bytes, PYBUF_WRITE);
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    let called = f.call1(py, (&view,));
    let released = view.call_method0("release");
    called?;
    released.map_err(|e| {
        PyRuntimeError::new_err(format!(
            "the gradient view was still in use when the reduction returned ({e}); the reduction \
             must not keep views of its argument"
        ))
    })?;
    Ok(())
}

/// The hook the fused epoch calls once per step: attaches to Python, calls
/// `f` on a view of the gradients, and keeps the Python exception for the
/// caller (the core sees an error that ends the epoch).
pub struct ReduceHook<'a> {
    f: &'a Py<PyAny>,
    err: Mutex<Option<PyErr>>,
}

impl<'a> ReduceHook<'a> {
    pub fn new(f: &'a Py<PyAny>) -> Self {
        ReduceHook { f, err: Mutex::new(None) }
    }

    /// Runs the callable on `g` (from any thread).
    pub fn call<T: Float>(&self, g: &mut [T]) -> ferrograd::Result<()> {
        Python::attach(|py| call_with_view(py, self.f, g)).map_err(|e| {
            let message = format!("the gradient reduction failed: {e}");
            if let Ok(mut slot) = self.err.lock() {
                slot.get_or_insert(e);
            }
            Error::interrupted(message)
        })
    }

    /// The Python exception the callable raised, if any.
    pub fn take_err(&self) -> Option<PyErr> {
        self.err.lock().ok().and_then(|mut e| e.take())
    }
}

/// Calls `f(view)` on a writable memoryview of `model`'s flat gradient
/// buffer (every parameter's gradient, in state_dict order, in the model's
/// dtype), then multiplies the gradients by `scale` (the step API's
/// all-reduce: `f` sums in place across processes, `scale` averages).
#[pyfunction]
pub fn reduce_grads(py: Python<'_>, model: &Bound<'_, PyModel>, f: Py<PyAny>, scale: f64) -> PyResult<()> {
    with_net!(&mut *model.get().lock()?, m, T, {
        call_with_view(py, &f, m.grads_mut())?;
        if scale != 1.0 {
            let s = T::from_f64(scale);
            m.grads_mut().iter_mut().for_each(|g| *g *= s);
        }
        Ok(())
    })
}
