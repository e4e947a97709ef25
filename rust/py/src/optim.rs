//! `ferrograd._core.Optimizer`: an optimizer bound to some parameters of
//! one model.

use crate::errors::{compute, to_py};
use crate::model::{with_net, Net, PyModel};
use ferrograd::optim::{OptimConfig, Optimizer};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub enum Opt {
    F32(Optimizer<f32>),
    F64(Optimizer<f64>),
}

/// An optimizer bound to some parameters of one model (use `ferrograd.optim`).
#[pyclass(module = "ferrograd._core", name = "Optimizer")]
pub struct PyOptimizer {
    pub opt: Opt,
    pub model: Py<PyModel>,
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

    /// SGD's and RMSprop's momentum, Adam's and AdamW's beta1 (settable,
    /// for schedules that cycle it).
    #[getter]
    fn get_momentum(&self) -> f64 {
        match &self.opt {
            Opt::F32(o) => o.config.momentum(),
            Opt::F64(o) => o.config.momentum(),
        }
    }

    #[setter]
    fn set_momentum(&mut self, value: f64) -> PyResult<()> {
        match &mut self.opt {
            Opt::F32(o) => o.config.set_momentum(value),
            Opt::F64(o) => o.config.set_momentum(value),
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
