//! `ferrograd._core.Optimizer`: an optimizer bound to some parameters of
//! one model.

use crate::arrays::new_array;
use crate::errors::{compute, guarded, to_py, try_lock, ShapeError};
use crate::net::{with_net, Net, PyModel};
use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::Float;
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

pub enum Opt {
    F32(Optimizer<f32>),
    F64(Optimizer<f64>),
}

/// An optimizer bound to some parameters of one model (use
/// `ferrograd.optim`). Frozen with a non-waiting lock, as `Model`.
#[pyclass(module = "ferrograd._core", name = "Optimizer", frozen)]
pub struct PyOptimizer {
    opt: Mutex<Opt>,
    pub model: Py<PyModel>,
    /// The parameter ranges in the order the parameters were given.
    ranges: Vec<Range<usize>>,
}

fn get<'py, V: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str, owner: &str) -> PyResult<V> {
    match d.get_item(key)? {
        Some(v) => v.extract::<V>().map_err(|_| PyTypeError::new_err(format!("{owner}: bad type for {key}"))),
        None => Err(PyValueError::new_err(format!("{owner}: missing {key}"))),
    }
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

impl PyOptimizer {
    /// The optimizer, or the in-use error.
    pub fn lock(&self) -> PyResult<MutexGuard<'_, Opt>> {
        try_lock(&self.opt, "optimizer")
    }
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
        let (opt, ranges) = with_net!(&*model.get().lock()?, net, T, {
            let entries = net.entries();
            let mut ranges = Vec::with_capacity(params.len());
            for &i in &params {
                let e = entries.get(i).ok_or_else(|| PyValueError::new_err(format!("no parameter {i}")))?;
                ranges.push(e.range.clone());
            }
            (Optimizer::<T>::new(cfg, ranges.clone()).map_err(to_py)?.wrap(), ranges)
        });
        Ok(PyOptimizer { opt: Mutex::new(opt), model: model.clone().unbind(), ranges })
    }

    /// `(steps, state)`: per parameter (in the order given), one flat array
    /// per state slot (SGD: momentum buffer; Adam/AdamW: exp_avg,
    /// exp_avg_sq; RMSprop: square_avg, momentum_buffer, grad_avg); empty
    /// lists before the first step.
    fn get_state<'py>(&self, py: Python<'py>) -> PyResult<(u64, Vec<Vec<Bound<'py, PyAny>>>)> {
        match &*self.lock()? {
            Opt::F32(o) => export(py, o, &self.ranges),
            Opt::F64(o) => export(py, o, &self.ranges),
        }
    }

    /// Replaces the step count and state (laid out as `get_state` returns
    /// it; arrays of the optimizer's dtype), all or nothing.
    fn set_state(&self, steps: u64, state: Vec<Vec<Bound<'_, PyAny>>>) -> PyResult<()> {
        match &mut *self.lock()? {
            Opt::F32(o) => import(o, &self.ranges, steps, &state),
            Opt::F64(o) => import(o, &self.ranges, steps, &state),
        }
    }

    /// One update of the model's parameters from their gradients.
    fn step(&self, py: Python<'_>) -> PyResult<()> {
        let model = self.model.bind(py);
        let mut m = model.get().lock()?;
        match (&mut *m, &mut *self.lock()?) {
            (Net::F32(net), Opt::F32(o)) => compute(py, || net.optimizer_step(o)),
            (Net::F64(net), Opt::F64(o)) => compute(py, || net.optimizer_step(o)),
            _ => Err(PyValueError::new_err("optimizer and model dtypes differ")),
        }
    }

    /// The learning rate (settable, for schedules).
    #[getter]
    fn get_lr(&self) -> PyResult<f64> {
        Ok(match &*self.lock()? {
            Opt::F32(o) => o.config.lr(),
            Opt::F64(o) => o.config.lr(),
        })
    }

    #[setter]
    fn set_lr(&self, lr: f64) -> PyResult<()> {
        match &mut *self.lock()? {
            Opt::F32(o) => o.config.set_lr(lr),
            Opt::F64(o) => o.config.set_lr(lr),
        }
        .map_err(to_py)
    }

    /// SGD's and RMSprop's momentum, Adam's and AdamW's beta1 (settable,
    /// for schedules that cycle it).
    #[getter]
    fn get_momentum(&self) -> PyResult<f64> {
        Ok(match &*self.lock()? {
            Opt::F32(o) => o.config.momentum(),
            Opt::F64(o) => o.config.momentum(),
        })
    }

    #[setter]
    fn set_momentum(&self, value: f64) -> PyResult<()> {
        match &mut *self.lock()? {
            Opt::F32(o) => o.config.set_momentum(value),
            Opt::F64(o) => o.config.set_momentum(value),
        }
        .map_err(to_py)
    }

    /// Steps taken.
    #[getter]
    fn steps(&self) -> PyResult<u64> {
        Ok(match &*self.lock()? {
            Opt::F32(o) => o.steps(),
            Opt::F64(o) => o.steps(),
        })
    }

    /// Forgets the step count and all state.
    fn reset(&self) -> PyResult<()> {
        match &mut *self.lock()? {
            Opt::F32(o) => o.reset(),
            Opt::F64(o) => o.reset(),
        }
        Ok(())
    }
}

fn export<'py, T: Float + Element>(
    py: Python<'py>,
    o: &Optimizer<T>,
    ranges: &[Range<usize>],
) -> PyResult<(u64, Vec<Vec<Bound<'py, PyAny>>>)> {
    let state = o.state();
    let (len, slots) = (o.len(), o.config.slots());
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let mut per = Vec::new();
        if !state.is_empty() {
            let off = o.offset_of(r).ok_or_else(|| PyValueError::new_err("unknown parameter range"))?;
            for k in 0..slots {
                let at = k * len + off;
                per.push(new_array(py, &state[at..at + r.len()], &[r.len()])?);
            }
        }
        out.push(per);
    }
    Ok((o.steps(), out))
}

fn import<T: Float + Element>(
    o: &mut Optimizer<T>,
    ranges: &[Range<usize>],
    steps: u64,
    state: &[Vec<Bound<'_, PyAny>>],
) -> PyResult<()> {
    if state.len() != ranges.len() {
        return Err(ShapeError::new_err(format!(
            "optimizer state covers {} parameters, the optimizer has {}",
            state.len(),
            ranges.len()
        )));
    }
    let (len, slots) = (o.len(), o.config.slots());
    let empty = state.iter().all(|s| s.is_empty());
    let mut flat = if empty { Vec::new() } else { vec![T::ZERO; len * slots] };
    if !empty {
        for (i, (r, per)) in ranges.iter().zip(state).enumerate() {
            if per.len() != slots {
                return Err(ShapeError::new_err(format!(
                    "optimizer state of parameter {i} has {} slots, expected {slots}",
                    per.len()
                )));
            }
            let off = o.offset_of(r).ok_or_else(|| PyValueError::new_err("unknown parameter range"))?;
            for (k, a) in per.iter().enumerate() {
                let a = a.cast::<PyArrayDyn<T>>().map_err(|_| {
                    PyTypeError::new_err(format!("optimizer state must be {} arrays", T::NAME))
                })?;
                let a = a.readonly();
                if a.len() != r.len() {
                    return Err(ShapeError::new_err(format!(
                        "optimizer state of parameter {i} has {} values, expected {}",
                        a.len(),
                        r.len()
                    )));
                }
                let at = k * len + off;
                let dst = &mut flat[at..at + r.len()];
                match a.as_slice() {
                    Ok(src) => dst.copy_from_slice(src),
                    Err(_) => dst.iter_mut().zip(a.as_array().iter()).for_each(|(d, s)| *d = *s),
                }
            }
        }
    }
    guarded(|| o.set_state(steps, flat))
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
