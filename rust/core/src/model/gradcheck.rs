//! Backpropagation checked against central finite differences.

use super::train::Data;
use super::train::{Losses, Totals};
use super::workspace::{Grad, Pass};
use super::Sequential;
use crate::error::{Error, Result};
use crate::float::Float;

/// One parameter's result of [`Sequential::gradcheck`].
#[derive(Clone, Debug)]
pub struct GradCheck {
    pub name: String,
    /// Worst `|analytic - numeric| / max(|analytic|, |numeric|, f)` over the
    /// parameter's elements, where `f` is `1e-3` times the parameter's
    /// largest gradient element (at least `1e-7`), so elements far below the
    /// gradient's scale do not report rounding noise as error.
    pub max_rel_error: f64,
    /// Worst `|analytic - numeric|`.
    pub max_abs_error: f64,
}

impl<T: Float> Sequential<T> {
    /// Compares backprop gradients with central finite differences (step
    /// `eps`) for every parameter element, in training mode (dropout masks
    /// held fixed, batch statistics for BatchNorm). Needs a float64 model.
    /// Parameters, gradients, buffers and the random state are left as they
    /// were.
    pub fn gradcheck(&mut self, data: Data<'_, T>, loss: &Losses, eps: f64) -> Result<Vec<GradCheck>> {
        if T::NAME != "float64" {
            return Err(Error::value(format!(
                "gradcheck needs a float64 model, this one is {}: float32 finite differences carry \
                 errors near 1e-3, too coarse to check gradients; build the model with dtype=\"float64\"",
                T::NAME
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::value(format!("eps must be a finite value > 0, got {eps}")));
        }
        self.load_whole(&data, loss)?;
        let (n, weighted) = (data.n, data.weights.is_some());
        let mut t = Totals::default();
        // One fixed key, so every pass draws the same dropout masks, and
        // frozen buffers, so every pass sees the same model.
        let pass = Pass::frozen(0x5eed_0f9c_4ec4_ed00_u64);
        let saved_grads = self.grads.clone();
        self.forward_loss(n, pass, loss, &data, weighted, Grad::Mean, &mut t)?;
        self.grads.fill(T::ZERO);
        self.backward_loaded(n, pass, true, |_, _, _| {});
        let analytic = std::mem::replace(&mut self.grads, saved_grads);
        let mut loss_at = |m: &mut Self| {
            m.forward_loss(n, pass, loss, &data, weighted, Grad::No, &mut t).map(|()| t.mean())
        };
        let mut report = Vec::new();
        for e in self.entries.clone() {
            let mut numeric = Vec::with_capacity(e.range.len());
            for j in e.range.clone() {
                let orig = self.params[j];
                self.params[j] = T::from_f64(orig.to_f64() + eps);
                let lp = loss_at(self)?;
                self.params[j] = T::from_f64(orig.to_f64() - eps);
                let lm = loss_at(self)?;
                self.params[j] = orig;
                numeric.push((lp - lm) / (2.0 * eps));
            }
            let a = &analytic[e.range.clone()];
            // Elements far smaller than the parameter's largest gradient are
            // judged against 1e-3 of that, not their own size: their finite
            // differences are rounding noise over a tiny value.
            let gmax = a.iter().map(|v| v.to_f64().abs()).fold(0.0f64, f64::max);
            let floor = (1e-3 * gmax).max(1e-7);
            let (mut rel, mut abs) = (0.0f64, 0.0f64);
            for (&av, &num) in a.iter().zip(&numeric) {
                let av = av.to_f64();
                let d = (av - num).abs();
                abs = abs.max(d);
                rel = rel.max(d / av.abs().max(num.abs()).max(floor));
            }
            report.push(GradCheck { name: e.name, max_rel_error: rel, max_abs_error: abs });
        }
        self.cache = None;
        Ok(report)
    }
}
