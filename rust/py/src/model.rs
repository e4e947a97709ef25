//! The methods of `ferrograd._core.Model` (the handle itself, `PyModel`, is
//! in `net.rs`, below the optimizer that holds one): build, state, forward
//! and backward, the fused training epoch, evaluation and prediction.

use crate::arrays::{in_array, new_array, slice_err, target_array, InArray, TargetArray};
use crate::errors::{compute, guarded, panic_err, to_py};
use crate::layers::parse_specs;
use crate::loss::{sample_weights, totals_tuple};
use crate::net::{with_net, Net, PyModel};
use crate::optim::{Opt, PyOptimizer};
use ferrograd::optim::Optimizer;
use ferrograd::{
    threads, ActivationStat, ClipNorm, Data, Diagnostics, EpochOptions, Error, Features, Float, Flow,
    GraphSpec, Losses, Parallel, Sequential, StateKind, StateValues, Target, Totals,
};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// `(loss sum, its denominator, correct, accuracy's denominator)`: totals
/// that add up across processes.
pub type RawTotals = (f64, f64, u64, u64);

/// The raw totals of a one-output model's loss (data-parallel training and
/// evaluation take models with one output).
/// Each output's `(mean loss, accuracy or None)` (its own loss, unweighted).
pub type OutputTotals = Vec<(f64, Option<f64>)>;

fn output_totals(t: &Totals, loss: &Losses) -> OutputTotals {
    t.outputs
        .iter()
        .enumerate()
        .map(|(k, o)| (o.mean(), loss.spec(k).kind.has_accuracy().then(|| o.accuracy())))
        .collect()
}

fn raw_totals(t: &Totals) -> RawTotals {
    t.outputs.first().map_or((0.0, 0.0, 0, 0), |t| (t.loss_sum, t.denom, t.correct, t.acc_units))
}

/// The losses of a call: a loss name or JSON configuration, or a JSON list
/// of them (one per output), with optional weights.
pub fn parse_losses(text: &str, weights: Option<Vec<f64>>) -> PyResult<Losses> {
    guarded(|| Losses::from_json(text, weights.unwrap_or_default()))
}

/// A list or tuple's items, or the object itself.
fn items<'py>(v: &Bound<'py, PyAny>) -> Vec<Bound<'py, PyAny>> {
    if let Ok(l) = v.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = v.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        vec![v.clone()]
    }
}

/// Every input array of a call (`x` or a list of them), borrowed.
fn input_arrays<'py>(x: &Bound<'py, PyAny>) -> PyResult<Vec<InArray<'py>>> {
    let xs = items(x);
    let one = xs.len() == 1;
    xs.iter()
        .enumerate()
        .map(|(i, o)| in_array(o, &if one { "X".into() } else { format!("X[{i}]") }))
        .collect()
}

/// Features, sample count and per-sample shape of every input array, the
/// sample counts checked to agree.
fn batches<'a>(xa: &'a [InArray<'_>]) -> PyResult<(Vec<Features<'a>>, usize, Vec<Vec<usize>>)> {
    let one = xa.len() == 1;
    let mut feats = Vec::with_capacity(xa.len());
    let mut shapes = Vec::with_capacity(xa.len());
    let mut count = None;
    for (i, a) in xa.iter().enumerate() {
        let what = if one { "X".to_string() } else { format!("X[{i}]") };
        let (f, n, shape) = a.batch(&what)?;
        if let Some(n0) = count.filter(|&n0| n0 != n) {
            return Err(crate::errors::ShapeError::new_err(format!(
                "the inputs have different sample counts: X[0] has {n0}, {what} has {n}"
            )));
        }
        count = Some(n);
        feats.push(f);
        shapes.push(shape);
    }
    Ok((feats, count.unwrap_or(0), shapes))
}

/// Borrows `x`, `y` (and sample weights `w`) as a batch-first dataset
/// checked against the model's output shapes, and runs `f` with it; `x`
/// and `y` are arrays, or lists of them for a model with several inputs
/// or outputs.
fn with_data<'py, T: Element + Float, R>(
    m: &mut Sequential<T>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    w: Option<&Bound<'py, PyAny>>,
    f: impl FnOnce(&mut Sequential<T>, Data<'_, T>) -> PyResult<R>,
) -> PyResult<R> {
    let xa = input_arrays(x)?;
    let (feats, n, shapes) = batches(&xa)?;
    let out_shapes = m.output_shapes(&shapes).map_err(to_py)?;
    let ya = items(y).iter().map(target_array::<T>).collect::<PyResult<Vec<TargetArray<'_, T>>>>()?;
    if ya.len() != out_shapes.len() {
        return Err(PyValueError::new_err(format!(
            "the model has {} outputs, got {} target arrays",
            out_shapes.len(),
            ya.len()
        )));
    }
    let targets =
        ya.iter().zip(&out_shapes).map(|(a, s)| a.target(n, s)).collect::<PyResult<Vec<Target<'_, T>>>>()?;
    let wa = sample_weights::<T>(w)?;
    let weights = match &wa {
        Some(a) => Some(a.as_slice().map_err(|_| slice_err("sample_weight"))?),
        None => None,
    };
    let more_x: Vec<(Features<'_>, &[usize])> =
        feats.iter().zip(&shapes).skip(1).map(|(f, s)| (*f, s.as_slice())).collect();
    f(
        m,
        Data {
            x: feats[0],
            n,
            shape: &shapes[0],
            y: targets[0],
            weights,
            more_x: &more_x,
            more_y: &targets[1..],
        },
    )
}

/// Inference: one array for a one-output model, a list of arrays otherwise.
fn predict_impl<'py, T: Element + Float>(
    py: Python<'py>,
    m: &mut Sequential<T>,
    x: &Bound<'py, PyAny>,
    batch_size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = input_arrays(x)?;
    let (feats, n, shapes) = batches(&xa)?;
    let out_shapes = m.output_shapes(&shapes).map_err(to_py)?;
    let mut outs = Vec::with_capacity(out_shapes.len());
    for s in &out_shapes {
        let mut dims = vec![n];
        dims.extend_from_slice(s);
        let elems = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        ferrograd::memory::reserve("the predictions", ferrograd::memory::bytes_of::<T>(elems))
            .map_err(to_py)?;
        outs.push(PyArrayDyn::<T>::zeros(py, dims.as_slice(), false));
    }
    {
        let mut ws = outs.iter().map(|o| o.readwrite()).collect::<Vec<_>>();
        let mut bufs = ws
            .iter_mut()
            .map(|w| w.as_slice_mut().map_err(|_| PyRuntimeError::new_err("fresh array not contiguous")))
            .collect::<PyResult<Vec<&mut [T]>>>()?;
        let inputs: Vec<(Features<'_>, &[usize])> =
            feats.iter().zip(&shapes).map(|(f, s)| (*f, s.as_slice())).collect();
        compute(py, || m.predict_outputs(&inputs, n, batch_size, &mut bufs))?;
    }
    if outs.len() == 1 {
        return Ok(outs.swap_remove(0).into_any());
    }
    Ok(PyList::new(py, outs)?.into_any())
}

/// One epoch: the core's epoch runs on a worker thread while this (calling)
/// thread keeps the Python side: it reports progress and checks for Ctrl-C,
/// which only the main thread can see, and asks the worker to stop between
/// steps.
#[allow(clippy::too_many_arguments)]
fn train_impl<T: Element + Float>(
    py: Python<'_>,
    m: &mut Sequential<T>,
    opt: &mut Optimizer<T>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    w: Option<&Bound<'_, PyAny>>,
    opts: &EpochOptions,
    callback: Option<Py<PyAny>>,
    reduce: Option<Py<PyAny>>,
) -> PyResult<(f64, Option<f64>, RawTotals, OutputTotals)> {
    let loss = opts.loss.spec(0).kind;
    with_data(m, x, y, w, |m, data| {
        if opts.parallel.is_some() && !data.more_y.is_empty() {
            return Err(PyValueError::new_err(format!(
                "data-parallel training takes a model with one output, this one has {}",
                data.more_y.len() + 1
            )));
        }
        let every_step = opts.every_step;
        let (tx, rx) = mpsc::channel::<ferrograd::Progress>();
        // With `every_step`, the worker waits after each report until this
        // thread has run the callback (so a callback sees every step in order
        // and can stop the epoch before the next one).
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let hook = reduce.as_ref().map(crate::distributed::ReduceHook::new);
        let hook = hook.as_ref();
        let (py_err, result) = py.detach(move || {
            let stop = AtomicBool::new(false);
            // Set when a callback asked to stop training: the epoch ends early,
            // without an error.
            let finish = AtomicBool::new(false);
            let mut py_err: Option<PyErr> = None;
            let result = std::thread::scope(|s| {
                let (stop, finish) = (&stop, &finish);
                let worker = s.spawn(move || {
                    let tx = tx;
                    catch_unwind(AssertUnwindSafe(move || {
                        threads::install(move || {
                            let mut reduce = hook.map(|h| move |g: &mut [T]| h.call(g));
                            let reduce = reduce.as_mut().map(|r| r as ferrograd::GradHook<'_, T>);
                            let progress = &mut |p: &ferrograd::Progress| {
                                let sent = tx.send(p.clone()).is_ok();
                                if every_step && sent {
                                    let _ = ack_rx.recv();
                                }
                                if stop.load(Ordering::Relaxed) {
                                    Err(Error::interrupted("training interrupted"))
                                } else if finish.load(Ordering::Relaxed) {
                                    Ok(Flow::Stop)
                                } else {
                                    Ok(Flow::Continue)
                                }
                            };
                            m.train_epoch_reduced(data, opt, opts, progress, reduce)
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
                                let verdict = cb.call1(py, (p.step, p.steps, p.samples, lm, acc))?;
                                // A callback returning True asks the epoch to end.
                                if verdict.extract::<bool>(py).unwrap_or(false) {
                                    finish.store(true, Ordering::Relaxed);
                                }
                            }
                            Ok(())
                        });
                        if let Err(e) = r {
                            py_err = Some(e);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    if msg.is_ok() && every_step {
                        let _ = ack_tx.send(());
                    }
                    if disconnected {
                        break;
                    }
                }
                worker.join()
            });
            (py_err, result)
        });
        if let Some(e) = py_err.or_else(|| hook.and_then(|h| h.take_err())) {
            return Err(e);
        }
        match result {
            Ok(Ok(Ok(Ok(t)))) => {
                let (mean, acc) = totals_tuple(&t, loss);
                Ok((mean, acc, raw_totals(&t), output_totals(&t, &opts.loss)))
            }
            Ok(Ok(Ok(Err(e)))) | Ok(Ok(Err(e))) => Err(to_py(e)),
            Ok(Err(p)) | Err(p) => Err(panic_err(p)),
        }
    })
}

/// A model with initialised weights, or zero ones (`init` false) to load into.
fn build<T: Float>(
    graph: Option<GraphSpec>,
    specs: Vec<ferrograd::LayerSpec>,
    seed: u64,
    init: bool,
) -> ferrograd::Result<Sequential<T>> {
    if let Some(g) = graph {
        Sequential::from_graph(g, seed, init)
    } else if init {
        Sequential::new(specs, seed)
    } else {
        Sequential::new_uninit(specs, seed)
    }
}

fn kind_name(k: StateKind) -> &'static str {
    match k {
        StateKind::Param => "param",
        StateKind::Buffer => "buffer",
        StateKind::Count => "count",
    }
}

#[pymethods]
impl PyModel {
    /// Builds a model from layer specs, each a JSON object string
    /// (`{"type": "Dense", "in_features": 784, ...}`).
    #[new]
    /// `init=False` leaves the parameters zero (for loading weights).
    /// `graph`: a graph's JSON (`specs` then unused, give `[]`).
    #[pyo3(signature = (specs, dtype="float32", seed=0, init=true, graph=None))]
    fn new(specs: Vec<String>, dtype: &str, seed: u64, init: bool, graph: Option<&str>) -> PyResult<Self> {
        let net = guarded(|| {
            let graph = match graph {
                Some(text) => Some(GraphSpec::from_json(text)?),
                None => None,
            };
            let specs = if graph.is_some() { Vec::new() } else { parse_specs(&specs)? };
            Ok(match dtype {
                "float32" => Net::F32(build(graph, specs, seed, init)?),
                "float64" => Net::F64(build(graph, specs, seed, init)?),
                other => {
                    return Err(Error::value(format!(
                        "unknown dtype {other:?}; expected \"float32\" or \"float64\""
                    )))
                }
            })
        })?;
        Ok(PyModel::wrap(net))
    }

    /// The model's graph as JSON (a `Sequential` is a chain).
    fn graph_json(&self) -> PyResult<String> {
        Ok(with_net!(&*self.lock()?, m, _T, m.graph().to_json()))
    }

    /// Per-sample shape of every graph node's output for the inputs' shapes.
    fn node_shapes(&self, inputs: Vec<Vec<usize>>) -> PyResult<Vec<Vec<usize>>> {
        with_net!(&*self.lock()?, m, _T, guarded(|| m.node_shapes(&inputs)))
    }

    /// The element type, "float32" or "float64".
    #[getter]
    fn dtype(&self) -> PyResult<&'static str> {
        Ok(with_net!(&*self.lock()?, _m, T, T::NAME))
    }

    /// Total number of parameter elements.
    #[getter]
    fn num_params(&self) -> PyResult<usize> {
        Ok(with_net!(&*self.lock()?, m, _T, m.num_params()))
    }

    /// `[(name, shape), ...]` of the parameters, in state_dict order.
    fn param_info(&self) -> PyResult<Vec<(String, Vec<usize>)>> {
        Ok(with_net!(
            &*self.lock()?,
            m,
            _T,
            m.entries().iter().map(|e| (e.name.clone(), e.shape.clone())).collect()
        ))
    }

    /// `[(name, shape, kind), ...]` of every state_dict entry in torch's
    /// order; kind is "param", "buffer" or "count" (an int64 buffer).
    fn state_info(&self) -> PyResult<Vec<(String, Vec<usize>, &'static str)>> {
        Ok(with_net!(
            &*self.lock()?,
            m,
            _T,
            m.state_entries().iter().map(|e| (e.name.clone(), e.shape.clone(), kind_name(e.kind))).collect()
        ))
    }

    /// A copy of parameter `i` (state_dict layout).
    fn get_param<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&*self.lock()?, m, _T, {
            let e = m.entries().get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
            new_array(py, &m.params()[e.range.clone()], &e.shape)
        })
    }

    /// A copy of the gradient of parameter `i`.
    fn get_grad<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&*self.lock()?, m, _T, {
            let e = m.entries().get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
            new_array(py, &m.grads()[e.range.clone()], &e.shape)
        })
    }

    /// A copy of state_dict entry `i` (of `state_info`): the model's dtype,
    /// or int64 for counts.
    fn get_state<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&*self.lock()?, m, _T, {
            let e = m.state_entries().get(i).ok_or_else(|| PyValueError::new_err(format!("no entry {i}")))?;
            match e.kind {
                StateKind::Param => new_array(py, &m.params()[e.range.clone()], &e.shape),
                StateKind::Buffer => new_array(py, &m.buffers()[e.range.clone()], &e.shape),
                StateKind::Count => new_array(py, &m.counts()[e.range.clone()], &e.shape),
            }
        })
    }

    /// Replaces parameters and buffers from `[(name, array), ...]`, all or
    /// nothing. Arrays must already have the model's dtype (int64 for
    /// counts).
    fn load_state(&self, items: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<()> {
        with_net!(&mut *self.lock()?, m, T, {
            let mut vals = Vec::with_capacity(items.len());
            for (name, a) in items {
                if let Ok(a) = a.cast::<PyArrayDyn<T>>() {
                    let r = a.readonly();
                    let v = r
                        .as_slice()
                        .map(|s| s.to_vec())
                        .unwrap_or_else(|_| r.as_array().iter().copied().collect());
                    vals.push((name, r.shape().to_vec(), StateValues::Float(v)));
                } else if let Ok(a) = a.cast::<PyArrayDyn<i64>>() {
                    let r = a.readonly();
                    let v = r
                        .as_slice()
                        .map(|s| s.to_vec())
                        .unwrap_or_else(|_| r.as_array().iter().copied().collect());
                    vals.push((name, r.shape().to_vec(), StateValues::Count(v)));
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "state_dict entry {name:?} must be a {} or int64 array",
                        T::NAME
                    )));
                }
            }
            guarded(|| m.load_state(&vals))
        })
    }

    /// Sets all gradients to zero.
    fn zero_grad(&self) -> PyResult<()> {
        with_net!(&mut *self.lock()?, m, _T, m.zero_grad());
        Ok(())
    }

    /// Per-layer output shapes (per sample) for a per-sample input shape.
    fn layer_shapes(&self, input: Vec<usize>) -> PyResult<Vec<Vec<usize>>> {
        with_net!(&*self.lock()?, m, _T, guarded(|| m.layer_shapes(&input)))
    }

    /// Forward pass; in training mode it updates running statistics and
    /// keeps what `backward` needs.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let xa = input_arrays(x)?;
        let (feats, n, shapes) = batches(&xa)?;
        with_net!(&mut *self.lock()?, m, _T, {
            let out_shapes = guarded(|| m.output_shapes(&shapes))?;
            let inputs: Vec<(Features<'_>, &[usize])> =
                feats.iter().zip(&shapes).map(|(f, s)| (*f, s.as_slice())).collect();
            compute(py, || m.forward_inputs(&inputs, n, training))?;
            let mut outs = Vec::with_capacity(out_shapes.len());
            for (k, s) in out_shapes.iter().enumerate() {
                let mut dims = vec![n];
                dims.extend_from_slice(s);
                outs.push(new_array(py, m.output(k), &dims)?);
            }
            if outs.len() == 1 {
                return Ok(outs.swap_remove(0));
            }
            Ok(PyList::new(py, outs)?.into_any())
        })
    }

    /// Backward pass from dL/d(output) (a list, one per output, for several
    /// outputs); gradients accumulate.
    fn backward(&self, py: Python<'_>, grad: &Bound<'_, PyAny>) -> PyResult<()> {
        with_net!(&mut *self.lock()?, m, T, {
            let arrays = items(grad)
                .iter()
                .map(|g| {
                    g.cast::<PyArrayDyn<T>>().map(|a| a.readonly()).map_err(|_| {
                        PyTypeError::new_err(format!(
                            "the gradient must be a {} array like the model output",
                            T::NAME
                        ))
                    })
                })
                .collect::<PyResult<Vec<_>>>()?;
            let shapes: Vec<Vec<usize>> = arrays.iter().map(|a| a.shape().to_vec()).collect();
            let douts = arrays
                .iter()
                .zip(&shapes)
                .map(|(a, s)| Ok((a.as_slice().map_err(|_| slice_err("the gradient"))?, s.as_slice())))
                .collect::<PyResult<Vec<(&[T], &[usize])>>>()?;
            compute(py, || m.backward_outputs(&douts))
        })
    }

    /// Inference in batches; returns a new array.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        with_net!(&mut *self.lock()?, m, _T, predict_impl(py, m, x, batch_size))
    }

    /// `(mean loss, accuracy or None, outputs)` over a dataset, `outputs`
    /// each output's own `(loss, accuracy or None)`; `loss` is a name or a
    /// JSON configuration.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, y, loss, batch_size, sample_weight=None, loss_weights=None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        batch_size: usize,
        sample_weight: Option<&Bound<'_, PyAny>>,
        loss_weights: Option<Vec<f64>>,
    ) -> PyResult<(f64, Option<f64>, OutputTotals)> {
        let loss = parse_losses(loss, loss_weights)?;
        let t = self.evaluate_impl(py, x, y, &loss, batch_size, sample_weight)?;
        let (mean, acc) = totals_tuple(&t, loss.spec(0).kind);
        Ok((mean, acc, output_totals(&t, &loss)))
    }

    /// `(loss sum, its denominator, correct, accuracy's denominator)` over
    /// a dataset: [`evaluate`](Self::evaluate)'s totals, which add up
    /// across the parts of a dataset (data-parallel evaluation).
    #[pyo3(signature = (x, y, loss, batch_size, sample_weight=None))]
    fn evaluate_totals(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        batch_size: usize,
        sample_weight: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RawTotals> {
        let loss = parse_losses(loss, None)?;
        Ok(raw_totals(&self.evaluate_impl(py, x, y, &loss, batch_size, sample_weight)?))
    }

    /// One training epoch; `callback(step, steps, samples, loss, acc)` is
    /// called about every 0.1 s from the calling thread (after every step
    /// with `every_step`, the epoch waiting for it each time). `lrs` and
    /// `momenta` give the learning rate and momentum of each step.
    /// Data-parallel: `parallel` is `("split", rank, ranks, 0)` or
    /// `("shard", rank, ranks, steps)`, and `reduce(view)` is called once per
    /// step on a memoryview of the flat gradient buffer to sum it in place
    /// across processes. Returns `(loss, accuracy or None, raw totals,
    /// outputs)`, `outputs` each output's own `(loss, accuracy or None)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, y, loss, optimizer, *, batch_size, shuffle, epoch, check=true, callback=None, lrs=None, momenta=None, every_step=false, sample_weight=None, clip=None, diagnostics=false, loss_weights=None, parallel=None, reduce=None))]
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
        lrs: Option<Vec<f64>>,
        momenta: Option<Vec<f64>>,
        every_step: bool,
        sample_weight: Option<&Bound<'_, PyAny>>,
        clip: Option<(f64, f64)>,
        diagnostics: bool,
        loss_weights: Option<Vec<f64>>,
        parallel: Option<(String, usize, usize, usize)>,
        reduce: Option<Py<PyAny>>,
    ) -> PyResult<(f64, Option<f64>, RawTotals, OutputTotals)> {
        let py = slf.py();
        let clip = clip.map(|(max_norm, p)| ClipNorm::new(max_norm, p)).transpose().map_err(to_py)?;
        let parallel = match parallel {
            None => None,
            Some((mode, rank, ranks, steps)) => {
                let p = match mode.as_str() {
                    "split" => Parallel::Split { rank, ranks },
                    "shard" => Parallel::Shard { ranks, steps },
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "unknown parallel mode {other:?}; expected \"split\" or \"shard\""
                        )))
                    }
                };
                p.check().map_err(to_py)?;
                Some(p)
            }
        };
        let opts = EpochOptions {
            loss: parse_losses(loss, loss_weights)?,
            batch_size,
            shuffle,
            epoch,
            check,
            lrs,
            momenta,
            every_step,
            clip,
            diagnostics,
            parallel,
        };
        let o = optimizer.get();
        if !o.model.bind(py).is(slf) {
            return Err(PyValueError::new_err("the optimizer was built from another model's parameters"));
        }
        let mut me = slf.get().lock()?;
        let mut opt = o.lock()?;
        match (&mut *me, &mut *opt) {
            (Net::F32(m), Opt::F32(opt)) => {
                train_impl(py, m, opt, x, y, sample_weight, &opts, callback, reduce)
            }
            (Net::F64(m), Opt::F64(opt)) => {
                train_impl(py, m, opt, x, y, sample_weight, &opts, callback, reduce)
            }
            _ => Err(PyValueError::new_err("optimizer and model dtypes differ")),
        }
    }

    /// Checks data (and sample weights) against the model and loss without
    /// computing anything.
    #[pyo3(signature = (x, y, loss, sample_weight=None, loss_weights=None))]
    fn validate(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        sample_weight: Option<&Bound<'_, PyAny>>,
        loss_weights: Option<Vec<f64>>,
    ) -> PyResult<()> {
        let loss = parse_losses(loss, loss_weights)?;
        with_net!(&mut *self.lock()?, m, _T, {
            with_data(m, x, y, sample_weight, |m, data| compute(py, || m.validate_data(data, &loss)))
        })
    }

    /// `[(name, max relative error, max absolute error), ...]` of backprop
    /// against central finite differences (float64 models only).
    #[pyo3(signature = (x, y, loss, eps, loss_weights=None))]
    fn gradcheck(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &str,
        eps: f64,
        loss_weights: Option<Vec<f64>>,
    ) -> PyResult<Vec<(String, f64, f64)>> {
        let loss = parse_losses(loss, loss_weights)?;
        with_net!(&mut *self.lock()?, m, _T, {
            with_data(m, x, y, None, |m, data| {
                let r = compute(py, || m.gradcheck(data, &loss, eps))?;
                Ok(r.into_iter().map(|g| (g.name, g.max_rel_error, g.max_abs_error)).collect())
            })
        })
    }

    /// The diagnostics of the last epoch trained with them (see
    /// `diagnostics_dict`), or None.
    fn last_diagnostics<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        with_net!(&*self.lock()?, m, _T, m.last_diagnostics().map(|d| diagnostics_dict(py, d)).transpose())
    }

    /// Diagnostics of one training-mode pass over the data as one batch,
    /// without an update; changes no state.
    #[pyo3(signature = (x, y, loss, sample_weight=None, loss_weights=None))]
    fn diagnose<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &str,
        sample_weight: Option<&Bound<'py, PyAny>>,
        loss_weights: Option<Vec<f64>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let loss = parse_losses(loss, loss_weights)?;
        let d = with_net!(&mut *self.lock()?, m, _T, {
            with_data(m, x, y, sample_weight, |m, data| compute(py, || m.diagnose(data, &loss)))
        })?;
        diagnostics_dict(py, &d)
    }

    /// The `norm_type`-norm of each listed parameter's gradient.
    fn grad_norms(&self, py: Python<'_>, params: Vec<usize>, norm_type: f64) -> PyResult<Vec<f64>> {
        with_net!(&mut *self.lock()?, m, _T, compute(py, || m.grad_norms(&params, norm_type)))
    }

    /// Multiplies the listed parameters' gradients by `coef`.
    fn scale_grads(&self, py: Python<'_>, params: Vec<usize>, coef: f64) -> PyResult<()> {
        with_net!(&mut *self.lock()?, m, _T, compute(py, || m.scale_grads(&params, coef)))
    }

    /// The random generator state (4 integers).
    fn get_rng_state(&self) -> PyResult<[u64; 4]> {
        Ok(with_net!(&*self.lock()?, m, _T, m.rng_state()))
    }

    /// Restores a state from `get_rng_state` (all zeros is no state of
    /// the generator and is refused).
    fn set_rng_state(&self, s: [u64; 4]) -> PyResult<()> {
        if s == [0; 4] {
            return Err(PyValueError::new_err("a random generator state cannot be all zeros"));
        }
        with_net!(&mut *self.lock()?, m, _T, m.set_rng_state(s));
        Ok(())
    }
}

/// `{"steps": n, "params": [(name, grad_norm, weight_norm, update_ratio)],
/// "activations": [(layer, "dead" | "saturated", fraction)]}`.
fn diagnostics_dict<'py>(py: Python<'py>, d: &Diagnostics) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("steps", d.steps)?;
    let params: Vec<(String, f64, f64, f64)> =
        d.params.iter().map(|p| (p.name.clone(), p.grad_norm, p.weight_norm, p.update_ratio)).collect();
    out.set_item("params", params)?;
    let acts: Vec<(usize, &str, f64)> = d
        .activations
        .iter()
        .map(|a| {
            let kind = match a.stat {
                ActivationStat::Dead => "dead",
                ActivationStat::Saturated => "saturated",
            };
            (a.layer, kind, a.fraction)
        })
        .collect();
    out.set_item("activations", acts)?;
    Ok(out)
}

impl PyModel {
    /// The loss totals over a dataset in evaluation mode (the body of
    /// `evaluate` and `evaluate_totals`).
    fn evaluate_impl(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        loss: &Losses,
        batch_size: usize,
        sample_weight: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Totals> {
        with_net!(&mut *self.lock()?, m, _T, {
            with_data(m, x, y, sample_weight, |m, data| compute(py, || m.evaluate(data, loss, batch_size)))
        })
    }
}
