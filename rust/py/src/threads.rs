//! The library's thread count.

use crate::errors::to_py;
use ferrograd::threads;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// Sets the number of worker threads (>= 1).
#[pyfunction]
pub fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    // Extract as i128 so huge values give a ValueError, not an OverflowError.
    let n: i128 = n.extract().map_err(|_| PyTypeError::new_err("number of threads must be an int"))?;
    if n < 1 {
        return Err(PyValueError::new_err(format!("number of threads must be >= 1, got {n}")));
    }
    threads::set_num_threads(usize::try_from(n).unwrap_or(usize::MAX)).map_err(to_py)
}

/// The number of worker threads.
#[pyfunction]
pub fn get_num_threads() -> usize {
    threads::get_num_threads()
}
