//! Python exceptions for the core's errors, the non-waiting lock of models
//! and optimizers, and the one helper every heavy call goes through.

use ferrograd::{threads, Error, ErrorKind};
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, TryLockError};

pyo3::create_exception!(
    _core,
    ShapeError,
    PyValueError,
    "An array's shape does not fit the model, loss or state_dict."
);
pyo3::create_exception!(
    _core,
    NonFiniteError,
    PyValueError,
    "NaN or infinity in data, or a training loss that became non-finite."
);
pyo3::create_exception!(
    _core,
    StateError,
    PyValueError,
    "A call that is not valid in the object's current state."
);
pyo3::create_exception!(
    _core,
    InternalError,
    PyRuntimeError,
    "A bug in ferrograd (a Rust panic caught at the boundary)."
);

/// The Python exception for a core error.
pub fn to_py(e: Error) -> PyErr {
    match e.kind {
        ErrorKind::Shape => ShapeError::new_err(e.message),
        ErrorKind::Value => PyValueError::new_err(e.message),
        ErrorKind::NonFinite => NonFiniteError::new_err(e.message),
        ErrorKind::State => StateError::new_err(e.message),
        ErrorKind::Interrupted => PyKeyboardInterrupt::new_err(e.message),
        ErrorKind::NotFound => PyFileNotFoundError::new_err(e.message),
        ErrorKind::Io => PyOSError::new_err(e.message),
        ErrorKind::Memory => PyMemoryError::new_err(e.message),
    }
}

/// Runs heavy work: GIL released, inside the library's thread pool, with
/// panics caught and every error mapped to a Python exception.
pub fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> ferrograd::Result<R> + Send) -> PyResult<R> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| threads::install(f))));
    match out {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) | Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => Err(panic_err(panic)),
    }
}

/// Runs light work with the GIL held, panics caught.
pub fn guarded<R>(f: impl FnOnce() -> ferrograd::Result<R>) -> PyResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(p) => Err(panic_err(p)),
    }
}

/// An [`InternalError`] for a caught panic.
pub fn panic_err(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    InternalError::new_err(format!("internal error in ferrograd (please report it): {msg}"))
}

/// The error for a model or optimizer that another call is using.
pub fn in_use(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "this {what} is in use by another call (a fit, predict or other call on it is running \
         in another thread, or a callback is calling it during a training step); one model can \
         run one call at a time: give each thread its own model (copy.deepcopy), or wait for \
         the other call to finish"
    ))
}

/// Locks without waiting: the lock is only ever held by a running call.
pub fn try_lock<'a, T>(m: &'a Mutex<T>, what: &str) -> PyResult<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        // A panic is caught inside the call that held the lock; its state is
        // whatever the core left, which every core call keeps consistent.
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(in_use(what)),
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
