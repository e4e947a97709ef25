//! Python bindings for ferrograd's core, one module per core module. This
//! layer only converts types, validates what the core cannot see (dtypes,
//! contiguity), releases the GIL around compute and maps errors to Python
//! exceptions.

mod arrays;
mod clip;
mod distributed;
mod errors;
mod layers;
mod loss;
mod memory;
mod model;
mod net;
mod optim;
mod persist;
mod threads;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<net::PyModel>()?;
    m.add_class::<optim::PyOptimizer>()?;
    m.add_function(wrap_pyfunction!(layers::check_layer, m)?)?;
    m.add_function(wrap_pyfunction!(layers::layer_types, m)?)?;
    m.add_function(wrap_pyfunction!(layers::layer_info, m)?)?;
    m.add_function(wrap_pyfunction!(clip::clip_coef, m)?)?;
    m.add_function(wrap_pyfunction!(distributed::reduce_grads, m)?)?;
    m.add_function(wrap_pyfunction!(clip::check_clip, m)?)?;
    m.add_function(wrap_pyfunction!(loss::loss_value, m)?)?;
    m.add_function(wrap_pyfunction!(loss::check_loss, m)?)?;
    m.add_function(wrap_pyfunction!(loss::class_weights, m)?)?;
    m.add_function(wrap_pyfunction!(persist::read_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(persist::loads_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(persist::write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(persist::dumps_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(threads::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(memory::set_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(memory::get_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(memory::memory_available, m)?)?;
    errors::register(m)
}
