//! The memory budget checked before large allocations.

use crate::errors::guarded;
use ferrograd::memory::{self, MemoryLimit};
use pyo3::prelude::*;

/// Sets the limit from its text form (`"auto"`, `"off"`, `"0"`, bytes,
/// `"512M"`, ...), parsed as `FERROGRAD_MEMORY_LIMIT` is.
#[pyfunction]
pub fn set_memory_limit(limit: &str) -> PyResult<()> {
    let limit = guarded(|| MemoryLimit::parse(limit))?;
    memory::set_memory_limit(limit);
    Ok(())
}

/// The limit in force: `None` for the detected memory, 0 for no check,
/// else bytes.
#[pyfunction]
pub fn get_memory_limit() -> PyResult<Option<u64>> {
    guarded(|| {
        Ok(match memory::memory_limit()? {
            MemoryLimit::Auto => None,
            MemoryLimit::Off => Some(0),
            MemoryLimit::Bytes(b) => Some(b),
        })
    })
}

/// The memory the system reports available now (bytes), `None` where it
/// cannot be read.
#[pyfunction]
pub fn memory_available() -> Option<u64> {
    memory::available_bytes()
}
