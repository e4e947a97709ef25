//! Python bindings for ferrograd's core. This layer only converts types,
//! validates what the core cannot see (dtypes, contiguity), releases the GIL
//! around compute and maps errors to Python exceptions.

use ferrograd::loss::{loss_grad, validate_target, RowStat};
use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::{
    threads, Error, ErrorKind, Features, Float, Init, LayerSpec, Loss, LossTotals, Sequential, Target,
};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

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

fn to_py(e: Error) -> PyErr {
    match e.kind {
        ErrorKind::Shape => ShapeError::new_err(e.message),
        ErrorKind::Value => PyValueError::new_err(e.message),
        ErrorKind::NonFinite => NonFiniteError::new_err(e.message),
        ErrorKind::State => StateError::new_err(e.message),
        ErrorKind::Interrupted => PyKeyboardInterrupt::new_err(e.message),
    }
}

/// Runs heavy work: GIL released, inside the library's thread pool, with
/// panics caught and every error mapped to a Python exception.
fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> ferrograd::Result<R> + Send) -> PyResult<R> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| threads::install(f))));
    match out {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) | Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => Err(panic_err(panic)),
    }
}

fn panic_err(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    InternalError::new_err(format!("internal error in ferrograd (please report it): {msg}"))
}

// ---------------------------------------------------------------- arrays

/// A borrowed input array of one of the dtypes the core reads directly.
enum InArray<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

fn in_array<'py>(x: &Bound<'py, PyAny>, what: &str) -> PyResult<InArray<'py>> {
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

fn slice_err(what: &str) -> PyErr {
    PyTypeError::new_err(format!("{what} must be C-contiguous and aligned (use numpy.ascontiguousarray)"))
}

impl InArray<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            InArray::U8(a) => a.shape(),
            InArray::F32(a) => a.shape(),
            InArray::F64(a) => a.shape(),
        }
    }

    fn features(&self, what: &str) -> PyResult<Features<'_>> {
        Ok(match self {
            InArray::U8(a) => Features::U8(a.as_slice().map_err(|_| slice_err(what))?),
            InArray::F32(a) => Features::F32(a.as_slice().map_err(|_| slice_err(what))?),
            InArray::F64(a) => Features::F64(a.as_slice().map_err(|_| slice_err(what))?),
        })
    }

    /// `(features, n, per-sample shape)` for batch-first data.
    fn batch(&self, what: &str) -> PyResult<(Features<'_>, usize, Vec<usize>)> {
        let shape = self.shape();
        if shape.is_empty() {
            return Err(ShapeError::new_err(format!("{what} must have a batch dimension, got a 0-d array")));
        }
        Ok((self.features(what)?, shape[0], shape[1..].to_vec()))
    }
}

/// Targets: int64 class labels, or values in the model's dtype.
enum TargetArray<'py, T: Element> {
    Labels(PyReadonlyArrayDyn<'py, i64>),
    Values(PyReadonlyArrayDyn<'py, T>),
}

fn target_array<'py, T: Element + Float>(y: &Bound<'py, PyAny>) -> PyResult<TargetArray<'py, T>> {
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
    fn target(&self, n: usize, out_shape: &[usize]) -> PyResult<Target<'_, T>> {
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

fn totals_tuple(t: &LossTotals, loss: Loss) -> (f64, Option<f64>) {
    (t.mean(), if loss.has_accuracy() { Some(t.accuracy()) } else { None })
}

// ---------------------------------------------------------------- specs

fn get<'py, V: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str, layer: &str) -> PyResult<V> {
    match d.get_item(key)? {
        Some(v) => v.extract::<V>().map_err(|_| PyTypeError::new_err(format!("{layer}: bad type for {key}"))),
        None => Err(PyValueError::new_err(format!("{layer}: missing {key}"))),
    }
}

fn parse_spec(item: &Bound<'_, PyAny>) -> PyResult<LayerSpec> {
    let t = item
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err("layer spec must be a (name, dict) tuple"))?;
    let name: String = t.get_item(0)?.extract()?;
    let cfg = t.get_item(1)?;
    let d = cfg.cast::<PyDict>().map_err(|_| PyTypeError::new_err("layer spec config must be a dict"))?;
    let n = name.as_str();
    Ok(match n {
        "Dense" => {
            let init: String = get(d, "init", n)?;
            LayerSpec::Dense {
                in_features: get(d, "in_features", n)?,
                out_features: get(d, "out_features", n)?,
                bias: get(d, "bias", n)?,
                init: Init::parse(&init).map_err(to_py)?,
            }
        }
        "ReLU" => LayerSpec::ReLU,
        "LeakyReLU" => LayerSpec::LeakyReLU { negative_slope: get(d, "negative_slope", n)? },
        "Sigmoid" => LayerSpec::Sigmoid,
        "Tanh" => LayerSpec::Tanh,
        "GELU" => LayerSpec::GELU,
        "Softmax" => LayerSpec::Softmax,
        "Dropout" => LayerSpec::Dropout { p: get(d, "p", n)? },
        "Flatten" => LayerSpec::Flatten,
        "Rescaling" => LayerSpec::Rescaling { scale: get(d, "scale", n)?, offset: get(d, "offset", n)? },
        other => return Err(PyValueError::new_err(format!("unknown layer type {other:?}"))),
    })
}

// ---------------------------------------------------------------- model

enum Net {
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

/// A compiled Sequential model (use `ferrograd.Sequential`).
#[pyclass(module = "ferrograd._core", name = "Model")]
struct PyModel {
    net: Net,
}

fn new_array<'py, T: Element + Float>(
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

/// Borrows `x` and `y` as batch-first features and targets checked against
/// the model's output shape, and runs `f` with them.
fn with_xy<'py, T: Element + Float, R>(
    m: &mut Sequential<T>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    f: impl FnOnce(&mut Sequential<T>, &Features<'_>, usize, &[usize], Target<'_, T>) -> PyResult<R>,
) -> PyResult<R> {
    let xa = in_array(x, "X")?;
    let (feats, n, shape) = xa.batch("X")?;
    let out_shape = m.output_shape(&shape).map_err(to_py)?;
    let ya = target_array::<T>(y)?;
    let target = ya.target(n, &out_shape)?;
    f(m, &feats, n, &shape, target)
}

fn predict_impl<'py, T: Element + Float>(
    py: Python<'py>,
    m: &mut Sequential<T>,
    x: &Bound<'py, PyAny>,
    batch_size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = in_array(x, "X")?;
    let (f, n, shape) = xa.batch("X")?;
    let out_shape = m.output_shape(&shape).map_err(to_py)?;
    let mut dims = vec![n];
    dims.extend_from_slice(&out_shape);
    let out = PyArrayDyn::<T>::zeros(py, dims.as_slice(), false);
    {
        let mut w = out.readwrite();
        let buf = w.as_slice_mut().map_err(|_| PyRuntimeError::new_err("fresh array not contiguous"))?;
        compute(py, || m.predict_into(&f, n, &shape, batch_size, buf))?;
    }
    Ok(out.into_any())
}

#[allow(clippy::too_many_arguments)]
fn train_impl<T: Element + Float>(
    py: Python<'_>,
    m: &mut Sequential<T>,
    opt: &mut Optimizer<T>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    loss: Loss,
    batch_size: usize,
    shuffle: bool,
    epoch: usize,
    check: bool,
    callback: Option<Py<PyAny>>,
) -> PyResult<(f64, Option<f64>)> {
    let xa = in_array(x, "X")?;
    let (f, n, shape) = xa.batch("X")?;
    let out_shape = m.output_shape(&shape).map_err(to_py)?;
    let ya = target_array::<T>(y)?;
    let target = ya.target(n, &out_shape)?;
    // The epoch runs on a worker thread; this (calling) thread keeps the
    // Python side: it reports progress and checks for Ctrl-C, which only
    // the main thread can see, and asks the worker to stop between steps.
    let (tx, rx) = mpsc::channel::<ferrograd::Progress>();
    let (py_err, result) = py.detach(move || {
        let stop = AtomicBool::new(false);
        let mut py_err: Option<PyErr> = None;
        let result = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let tx = tx;
                let stop = &stop;
                catch_unwind(AssertUnwindSafe(|| {
                    threads::install(|| {
                        m.train_epoch(
                            &f,
                            n,
                            &shape,
                            target,
                            loss,
                            opt,
                            batch_size,
                            shuffle,
                            epoch,
                            check,
                            &mut |p| {
                                let _ = tx.send(*p);
                                if stop.load(Ordering::Relaxed) {
                                    Err(Error::interrupted("training interrupted"))
                                } else {
                                    Ok(())
                                }
                            },
                        )
                    })
                }))
            });
            loop {
                let msg = rx.recv_timeout(Duration::from_millis(50));
                let disconnected = matches!(msg, Err(mpsc::RecvTimeoutError::Disconnected));
                if py_err.is_none() {
                    let r = Python::attach(|py| -> PyResult<()> {
                        py.check_signals()?;
                        if let (Ok(p), Some(cb)) = (&msg, &callback) {
                            let (lm, acc) = totals_tuple(&p.totals, loss);
                            cb.call1(py, (p.step, p.steps, p.samples, lm, acc))?;
                        }
                        Ok(())
                    });
                    if let Err(e) = r {
                        py_err = Some(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if disconnected {
                    break;
                }
            }
            worker.join()
        });
        (py_err, result)
    });
    if let Some(e) = py_err {
        return Err(e);
    }
    match result {
        Ok(Ok(Ok(Ok(t)))) => Ok(totals_tuple(&t, loss)),
        Ok(Ok(Ok(Err(e)))) | Ok(Ok(Err(e))) => Err(to_py(e)),
        Ok(Err(p)) | Err(p) => Err(panic_err(p)),
    }
}

#[pymethods]
impl PyModel {
    /// Builds a model from layer specs `[(name, config_dict), ...]`.
    #[new]
    #[pyo3(signature = (specs, dtype="float32", seed=0))]
    fn new(specs: &Bound<'_, PyList>, dtype: &str, seed: u64) -> PyResult<Self> {
        let specs: Vec<LayerSpec> = specs.iter().map(|s| parse_spec(&s)).collect::<PyResult<_>>()?;
        let build = || -> ferrograd::Result<Net> {
            Ok(match dtype {
                "float32" => Net::F32(Sequential::new(specs, seed)?),
                "float64" => Net::F64(Sequential::new(specs, seed)?),
                other => {
                    return Err(Error::value(format!(
                        "unknown dtype {other:?}; expected \"float32\" or \"float64\""
                    )))
                }
            })
        };
        match catch_unwind(AssertUnwindSafe(build)) {
            Ok(Ok(net)) => Ok(PyModel { net }),
            Ok(Err(e)) => Err(to_py(e)),
            Err(p) => Err(panic_err(p)),
        }
    }

    /// The element type, "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        with_net!(&self.net, _m, T, T::NAME)
    }

    /// Total number of parameter elements.
    #[getter]
    fn num_params(&self) -> usize {
        with_net!(&self.net, m, _T, m.num_params())
    }

    /// `[(name, shape), ...]` in state_dict order.
    fn param_info(&self) -> Vec<(String, Vec<usize>)> {
        with_net!(&self.net, m, _T, m.entries().iter().map(|e| (e.name.clone(), e.shape.clone())).collect())
    }

    /// A copy of parameter `i` (state_dict layout).
    fn get_param<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&self.net, m, _T, {
            let e = m.entries().get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
            new_array(py, &m.params()[e.range.clone()], &e.shape)
        })
    }

    /// A copy of the gradient of parameter `i`.
    fn get_grad<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&self.net, m, _T, {
            let e = m.entries().get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
            new_array(py, &m.grads()[e.range.clone()], &e.shape)
        })
    }

    /// Replaces parameters from `[(name, array), ...]`, all or nothing.
    /// Arrays must already have the model's dtype.
    fn load_params(&mut self, items: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<()> {
        with_net!(&mut self.net, m, T, {
            let mut vals = Vec::with_capacity(items.len());
            for (name, a) in items {
                let a = a.cast::<PyArrayDyn<T>>().map_err(|_| {
                    PyTypeError::new_err(format!("state_dict entry {name:?} must be a {} array", T::NAME))
                })?;
                let r = a.readonly();
                let v = r.as_array().iter().copied().collect::<Vec<T>>();
                vals.push((name, r.shape().to_vec(), v));
            }
            m.load_params(&vals).map_err(to_py)
        })
    }

    /// Sets all gradients to zero.
    fn zero_grad(&mut self) {
        with_net!(&mut self.net, m, _T, m.zero_grad())
    }

    /// Per-layer output shapes (per sample) for a per-sample input shape.
    fn layer_shapes(&self, input: Vec<usize>) -> PyResult<Vec<Vec<usize>>> {
        with_net!(&self.net, m, _T, m.layer_shapes(&input).map_err(to_py))
    }

    /// Forward pass; in training mode it keeps what `backward` needs.
    fn forward<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let xa = in_array(x, "x")?;
        let (f, n, shape) = xa.batch("x")?;
        with_net!(&mut self.net, m, _T, {
            let out_shape = m.output_shape(&shape).map_err(to_py)?;
            let out = compute(py, || m.forward(&f, n, &shape, training))?;
            let mut dims = vec![n];
            dims.extend_from_slice(&out_shape);
            new_array(py, out, &dims)
        })
    }

    /// Backward pass from dL/d(output); gradients accumulate.
    fn backward(&mut self, py: Python<'_>, grad: &Bound<'_, PyAny>) -> PyResult<()> {
        with_net!(&mut self.net, m, T, {
            let g = grad.cast::<PyArrayDyn<T>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "the gradient must be a {} array like the model output",
                    T::NAME
                ))
            })?;
            let g = g.readonly();
            let s = g.as_slice().map_err(|_| slice_err("the gradient"))?;
            let shape = g.shape().to_vec();
            compute(py, || m.backward(s, &shape))
        })
    }

    /// Inference in batches; returns a new array.
    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&mut self.net, m, _T, predict_impl(py, m, x, batch_size))
    }

    /// `(mean loss, accuracy or None)` over a dataset.
    fn evaluate(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        batch_size: usize,
    ) -> PyResult<(f64, Option<f64>)> {
        let loss = Loss::parse(loss).map_err(to_py)?;
        with_net!(&mut self.net, m, _T, {
            with_xy(m, x, y, |m, f, n, shape, target| {
                let t = compute(py, || m.evaluate(f, n, shape, target, loss, batch_size))?;
                Ok(totals_tuple(&t, loss))
            })
        })
    }

    /// One training epoch; `callback(step, steps, samples, loss, acc)` is
    /// called about every 0.1 s from the calling thread.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, y, loss, optimizer, batch_size, shuffle, epoch, check=true, callback=None))]
    fn train_epoch(
        slf: &Bound<'_, Self>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        optimizer: &Bound<'_, PyOptimizer>,
        batch_size: usize,
        shuffle: bool,
        epoch: usize,
        check: bool,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<(f64, Option<f64>)> {
        let py = slf.py();
        let loss = Loss::parse(loss).map_err(to_py)?;
        let mut o = optimizer.try_borrow_mut()?;
        if !o.model.bind(py).is(slf) {
            return Err(PyValueError::new_err("the optimizer was built from another model's parameters"));
        }
        let mut me = slf.try_borrow_mut()?;
        match (&mut me.net, &mut o.opt) {
            (Net::F32(m), Opt::F32(opt)) => {
                train_impl(py, m, opt, x, y, loss, batch_size, shuffle, epoch, check, callback)
            }
            (Net::F64(m), Opt::F64(opt)) => {
                train_impl(py, m, opt, x, y, loss, batch_size, shuffle, epoch, check, callback)
            }
            _ => Err(PyValueError::new_err("optimizer and model dtypes differ")),
        }
    }

    /// Checks data against the model and loss without computing anything.
    fn validate(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
    ) -> PyResult<()> {
        let loss = Loss::parse(loss).map_err(to_py)?;
        with_net!(&mut self.net, m, _T, {
            with_xy(m, x, y, |m, f, n, shape, target| {
                compute(py, || m.validate_data(f, n, shape, target, loss))
            })
        })
    }

    /// `[(name, max relative error, max absolute error), ...]` of backprop
    /// against central finite differences (float64 models only).
    fn gradcheck(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        eps: f64,
    ) -> PyResult<Vec<(String, f64, f64)>> {
        let loss = Loss::parse(loss).map_err(to_py)?;
        with_net!(&mut self.net, m, _T, {
            with_xy(m, x, y, |m, f, n, shape, target| {
                let r = compute(py, || m.gradcheck(f, n, shape, target, loss, eps))?;
                Ok(r.into_iter().map(|g| (g.name, g.max_rel_error, g.max_abs_error)).collect())
            })
        })
    }

    /// The random generator state (4 integers).
    fn get_rng_state(&self) -> [u64; 4] {
        with_net!(&self.net, m, _T, m.rng_state())
    }

    /// Restores a state from `get_rng_state`.
    fn set_rng_state(&mut self, s: [u64; 4]) {
        with_net!(&mut self.net, m, _T, m.set_rng_state(s))
    }
}

// ---------------------------------------------------------------- optimizer

enum Opt {
    F32(Optimizer<f32>),
    F64(Optimizer<f64>),
}

/// An optimizer bound to some parameters of one model (use `ferrograd.optim`).
#[pyclass(module = "ferrograd._core", name = "Optimizer")]
struct PyOptimizer {
    opt: Opt,
    model: Py<PyModel>,
}

fn f(d: &Bound<'_, PyDict>, key: &str) -> PyResult<f64> {
    get::<f64>(d, key, "optimizer")
}

fn parse_optim(kind: &str, d: &Bound<'_, PyDict>) -> PyResult<OptimConfig> {
    Ok(match kind {
        "SGD" => OptimConfig::Sgd {
            lr: f(d, "lr")?,
            momentum: f(d, "momentum")?,
            dampening: f(d, "dampening")?,
            nesterov: get(d, "nesterov", "SGD")?,
            weight_decay: f(d, "weight_decay")?,
        },
        "Adam" | "AdamW" => {
            let (lr, beta1, beta2, eps, weight_decay) =
                (f(d, "lr")?, f(d, "beta1")?, f(d, "beta2")?, f(d, "eps")?, f(d, "weight_decay")?);
            if kind == "Adam" {
                OptimConfig::Adam { lr, beta1, beta2, eps, weight_decay }
            } else {
                OptimConfig::AdamW { lr, beta1, beta2, eps, weight_decay }
            }
        }
        "RMSprop" => OptimConfig::RmsProp {
            lr: f(d, "lr")?,
            alpha: f(d, "alpha")?,
            eps: f(d, "eps")?,
            momentum: f(d, "momentum")?,
            weight_decay: f(d, "weight_decay")?,
            centered: get(d, "centered", "RMSprop")?,
        },
        other => return Err(PyValueError::new_err(format!("unknown optimizer {other:?}"))),
    })
}

#[pymethods]
impl PyOptimizer {
    /// `kind` is "SGD", "Adam", "AdamW" or "RMSprop"; `params` are indices
    /// into the model's parameter list.
    #[new]
    fn new(
        model: &Bound<'_, PyModel>,
        kind: &str,
        config: &Bound<'_, PyDict>,
        params: Vec<usize>,
    ) -> PyResult<Self> {
        let cfg = parse_optim(kind, config)?;
        let m = model.try_borrow()?;
        let opt = with_net!(&m.net, net, T, {
            let entries = net.entries();
            let mut ranges = Vec::with_capacity(params.len());
            for &i in &params {
                let e = entries.get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
                ranges.push(e.range.clone());
            }
            Optimizer::<T>::new(cfg, ranges).map_err(to_py)?.wrap()
        });
        Ok(PyOptimizer { opt, model: model.clone().unbind() })
    }

    /// One update of the model's parameters from their gradients.
    fn step(&mut self, py: Python<'_>) -> PyResult<()> {
        let model = self.model.bind(py);
        let mut m = model.try_borrow_mut()?;
        match (&mut m.net, &mut self.opt) {
            (Net::F32(net), Opt::F32(o)) => compute(py, || net.optimizer_step(o)),
            (Net::F64(net), Opt::F64(o)) => compute(py, || net.optimizer_step(o)),
            _ => Err(PyValueError::new_err("optimizer and model dtypes differ")),
        }
    }

    /// The learning rate (settable, for schedules).
    #[getter]
    fn get_lr(&self) -> f64 {
        match &self.opt {
            Opt::F32(o) => o.config.lr(),
            Opt::F64(o) => o.config.lr(),
        }
    }

    #[setter]
    fn set_lr(&mut self, lr: f64) -> PyResult<()> {
        match &mut self.opt {
            Opt::F32(o) => o.config.set_lr(lr),
            Opt::F64(o) => o.config.set_lr(lr),
        }
        .map_err(to_py)
    }

    /// Steps taken.
    #[getter]
    fn steps(&self) -> u64 {
        match &self.opt {
            Opt::F32(o) => o.steps(),
            Opt::F64(o) => o.steps(),
        }
    }

    /// Forgets the step count and all state.
    fn reset(&mut self) {
        match &mut self.opt {
            Opt::F32(o) => o.reset(),
            Opt::F64(o) => o.reset(),
        }
    }
}

trait WrapOpt {
    fn wrap(self) -> Opt;
}
impl WrapOpt for Optimizer<f32> {
    fn wrap(self) -> Opt {
        Opt::F32(self)
    }
}
impl WrapOpt for Optimizer<f64> {
    fn wrap(self) -> Opt {
        Opt::F64(self)
    }
}

// ---------------------------------------------------------------- losses

fn loss_impl<'py, T: Element + Float>(
    py: Python<'py>,
    loss: Loss,
    out: &Bound<'py, PyArrayDyn<T>>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let o = out.readonly();
    let shape = o.shape().to_vec();
    if shape.is_empty() {
        return Err(ShapeError::new_err("the output must have a batch dimension, got a 0-d array"));
    }
    if loss == Loss::CrossEntropy && shape.len() != 2 {
        return Err(ShapeError::new_err(format!(
            "cross_entropy expects outputs of shape (N, C), got {shape:?}"
        )));
    }
    let n = shape[0];
    if n == 0 {
        return Err(PyValueError::new_err("the output is empty (0 samples)"));
    }
    let cols: usize = shape[1..].iter().product();
    let xs = o.as_slice().map_err(|_| slice_err("the output"))?;
    let ya = target_array::<T>(y)?;
    let target = ya.target(n, &shape[1..])?;
    let mut grad = if with_grad { vec![T::ZERO; xs.len()] } else { Vec::new() };
    let t = compute(py, || {
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("the output contains NaN or inf (flat index {i})")));
        }
        validate_target(loss, target, n, cols)?;
        let mut stats = vec![RowStat::default(); n];
        loss_grad(loss, xs, n, cols, target, if with_grad { Some(&mut grad) } else { None }, &mut stats)
    })?;
    let g = if with_grad { Some(new_array(py, &grad, &shape)?) } else { None };
    let (m, acc) = totals_tuple(&t, loss);
    Ok((m, acc, g))
}

/// `(mean loss, accuracy or None, gradient or None)` of `loss` for model
/// output `out` (float32 or float64) and targets `y`.
#[pyfunction]
#[pyo3(signature = (loss, out, y, with_grad=true))]
fn loss_value<'py>(
    py: Python<'py>,
    loss: &str,
    out: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    with_grad: bool,
) -> PyResult<(f64, Option<f64>, Option<Bound<'py, PyAny>>)> {
    let loss = Loss::parse(loss).map_err(to_py)?;
    if let Ok(a) = out.cast::<PyArrayDyn<f32>>() {
        return loss_impl(py, loss, a, y, with_grad);
    }
    if let Ok(a) = out.cast::<PyArrayDyn<f64>>() {
        return loss_impl(py, loss, a, y, with_grad);
    }
    Err(PyTypeError::new_err("the output must be a float32 or float64 numpy array"))
}

// ---------------------------------------------------------------- threads

/// Sets the number of worker threads (>= 1).
#[pyfunction]
fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    // Extract as i128 so huge values give a ValueError, not an OverflowError.
    let n: i128 = n.extract().map_err(|_| PyTypeError::new_err("number of threads must be an int"))?;
    if n < 1 {
        return Err(PyValueError::new_err(format!("number of threads must be >= 1, got {n}")));
    }
    threads::set_num_threads(usize::try_from(n).unwrap_or(usize::MAX)).map_err(to_py)
}

/// The number of worker threads.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::get_num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyModel>()?;
    m.add_class::<PyOptimizer>()?;
    m.add_function(wrap_pyfunction!(loss_value, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
