//! Loss functions with torch's mean reductions. Each computes its value
//! and, in the same pass, the gradient with respect to the model output.
//!
//! A [`LossSpec`] is a loss kind with torch's options: class weights and
//! label smoothing for cross-entropy, `pos_weight` for binary cross-entropy.
//! Per-sample weights (Keras's `sample_weight` / `class_weight`) multiply
//! each sample's term without changing what the mean divides by.

use crate::error::{Error, Result};
use crate::float::Float;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A loss function's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error over all elements.
    Mse,
    /// Softmax cross-entropy from logits `(N, C)`; targets are integer class
    /// labels `(N,)` or probabilities `(N, C)`. Mean over samples.
    CrossEntropy,
    /// Sigmoid binary cross-entropy from logits; targets in `[0, 1]` of the
    /// output's shape. Mean over all elements.
    BinaryCrossEntropy,
}

impl Loss {
    /// Parses `"mse"`, `"cross_entropy"` or `"binary_cross_entropy"`.
    pub fn parse(name: &str) -> Result<Loss> {
        match name {
            "mse" => Ok(Loss::Mse),
            "cross_entropy" => Ok(Loss::CrossEntropy),
            "binary_cross_entropy" => Ok(Loss::BinaryCrossEntropy),
            other => Err(Error::value(format!(
                "unknown loss {other:?}; expected \"mse\", \"cross_entropy\" or \"binary_cross_entropy\""
            ))),
        }
    }

    /// The name [`Loss::parse`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::CrossEntropy => "cross_entropy",
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
        }
    }

    /// Whether "accuracy" is defined for this loss.
    pub fn has_accuracy(self) -> bool {
        !matches!(self, Loss::Mse)
    }
}

/// A loss with its options, as `torch.nn.CrossEntropyLoss(weight,
/// label_smoothing)` and `BCEWithLogitsLoss(pos_weight)` take them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossSpec {
    pub kind: Loss,
    /// Cross-entropy: a weight per class. The mean over labels divides by the
    /// summed weights of the samples' classes (torch); over probability
    /// targets by the number of samples.
    #[serde(default, deserialize_with = "crate::layers::de_opt_floats")]
    pub weight: Option<Vec<f64>>,
    /// Cross-entropy: the target mixed with the uniform distribution,
    /// `(1 - s) * target + s / C`, `s` in `[0, 1]`.
    #[serde(default, deserialize_with = "crate::layers::de_float")]
    pub label_smoothing: f64,
    /// Binary cross-entropy: the weight of positive examples, one per output
    /// column (torch broadcasts it over the last dimension).
    #[serde(default, deserialize_with = "crate::layers::de_opt_floats")]
    pub pos_weight: Option<Vec<f64>>,
}

impl From<Loss> for LossSpec {
    fn from(kind: Loss) -> Self {
        LossSpec { kind, weight: None, label_smoothing: 0.0, pos_weight: None }
    }
}

fn check_weights(what: &str, w: &[f64], want: usize) -> Result<()> {
    if w.len() != want {
        return Err(Error::value(format!(
            "{what} has {} entries, expected {want} (one per output)",
            w.len()
        )));
    }
    if let Some((i, &v)) = w.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        return Err(Error::value(format!("{what} must be finite and >= 0, got {v} at index {i}")));
    }
    Ok(())
}

impl LossSpec {
    /// Parses `{"kind": "cross_entropy", "weight": [...], ...}` or a plain
    /// kind name, and checks the options that do not depend on the model.
    pub fn from_json(text: &str) -> Result<LossSpec> {
        if let Ok(kind) = Loss::parse(text) {
            return Ok(kind.into());
        }
        let spec: LossSpec = serde_json::from_str(text)
            .map_err(|e| Error::value(format!("invalid loss configuration: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    /// The configuration as JSON (what [`LossSpec::from_json`] reads).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks the options on their own.
    pub fn check(&self) -> Result<()> {
        let s = self.label_smoothing;
        if !(0.0..=1.0).contains(&s) {
            return Err(Error::value(format!("label_smoothing must be in [0, 1], got {s}")));
        }
        if s != 0.0 && self.kind != Loss::CrossEntropy {
            return Err(Error::value(format!(
                "label_smoothing applies to cross_entropy, not {}",
                self.kind.name()
            )));
        }
        if self.weight.is_some() && self.kind != Loss::CrossEntropy {
            return Err(Error::value(format!(
                "class weights apply to cross_entropy, not {}",
                self.kind.name()
            )));
        }
        if self.pos_weight.is_some() && self.kind != Loss::BinaryCrossEntropy {
            return Err(Error::value(format!(
                "pos_weight applies to binary_cross_entropy, not {}",
                self.kind.name()
            )));
        }
        Ok(())
    }

    /// Checks the options against an output of `cols` columns.
    pub fn check_cols(&self, cols: usize) -> Result<()> {
        self.check()?;
        if let Some(w) = &self.weight {
            check_weights("CrossEntropy weight", w, cols)?;
        }
        if let Some(w) = &self.pos_weight {
            check_weights("BinaryCrossEntropy pos_weight", w, cols)?;
        }
        Ok(())
    }
}

/// Checks per-sample weights: one per sample, finite, `>= 0`.
pub fn check_sample_weights<T: Float>(w: &[T], rows: usize) -> Result<()> {
    if w.len() != rows {
        return Err(Error::shape(format!(
            "sample_weight has {} entries, expected {rows} (one per sample)",
            w.len()
        )));
    }
    if let Some((i, &v)) = w.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= T::ZERO)) {
        return Err(Error::value(format!("sample_weight must be finite and >= 0, got {v} at index {i}")));
    }
    Ok(())
}

/// Targets for one batch (or a whole dataset).
#[derive(Clone, Copy, Debug)]
pub enum Target<'a, T> {
    /// Integer class labels, one per sample (cross-entropy only).
    Labels(&'a [i64]),
    /// Values of the output's shape.
    Values(&'a [T]),
}

/// Per-sample sums a loss pass produces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowStat {
    /// This sample's weighted loss terms (the mean's numerator).
    pub loss: f64,
    /// What this sample adds to the mean's denominator: 1 (or its class's
    /// weight) for cross-entropy, its number of elements otherwise.
    pub denom: f64,
    /// Correct predictions in this sample (for accuracy).
    pub correct: u32,
}

/// Totals over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTotals {
    /// Sum of the loss terms (divide by `denom` for the mean).
    pub loss_sum: f64,
    /// What the mean divides by: samples (or their class weights) for
    /// cross-entropy, elements otherwise.
    pub denom: f64,
    /// Correct predictions.
    pub correct: u64,
    /// What accuracy is taken over: samples, or elements for binary cross-entropy.
    pub acc_units: u64,
}

impl LossTotals {
    pub fn add(&mut self, o: &LossTotals) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.denom += o.denom;
        self.acc_units += o.acc_units;
    }
    /// The mean loss.
    pub fn mean(&self) -> f64 {
        if self.denom == 0.0 {
            0.0
        } else {
            self.loss_sum / self.denom
        }
    }
    /// Fraction correct.
    pub fn accuracy(&self) -> f64 {
        if self.acc_units == 0 {
            0.0
        } else {
            self.correct as f64 / self.acc_units as f64
        }
    }
}

/// Checks that `target` fits an output of `rows x cols` for `loss`; labels
/// must be in `[0, cols)` and values finite (and in `[0, 1]` for binary
/// cross-entropy).
pub fn validate_target<T: Float>(loss: Loss, target: Target<'_, T>, rows: usize, cols: usize) -> Result<()> {
    match target {
        Target::Labels(labels) => {
            if loss != Loss::CrossEntropy {
                return Err(Error::value(format!(
                    "integer class labels are only valid for cross_entropy; {} needs targets of the output's shape",
                    loss.name()
                )));
            }
            if labels.len() != rows {
                return Err(Error::shape(format!("expected {rows} labels, got {}", labels.len())));
            }
            if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as u64 >= cols as u64)
            {
                return Err(Error::value(format!(
                    "class label {l} at index {i} is out of range: labels must be in [0, {cols}) for a model with {cols} outputs"
                )));
            }
        }
        Target::Values(v) => {
            if v.len() != rows * cols {
                return Err(Error::shape(format!(
                    "targets have {} elements, expected {} ({rows} samples x {cols})",
                    v.len(),
                    rows * cols
                )));
            }
            if let Some(i) = crate::data::first_non_finite(v) {
                return Err(Error::non_finite(format!(
                    "targets contain NaN or inf (first at flat index {i})"
                )));
            }
            if loss == Loss::BinaryCrossEntropy {
                if let Some(i) = v.par_iter().position_first(|&x| x < T::ZERO || x > T::ONE) {
                    return Err(Error::value(format!(
                        "binary_cross_entropy targets must be in [0, 1], got {} at flat index {i}",
                        v[i]
                    )));
                }
            }
        }
    }
    Ok(())
}

#[inline]
fn argmax<T: Float>(r: &[T]) -> usize {
    let mut best = 0;
    for (j, &v) in r.iter().enumerate() {
        if v > r[best] {
            best = j;
        }
    }
    best
}

/// The options of one loss pass, in the element type.
struct RowCtx<'a> {
    kind: Loss,
    weight: Option<&'a [f64]>,
    /// Sum of the class weights (C without weights).
    weight_sum: f64,
    smoothing: f64,
    pos_weight: Option<&'a [f64]>,
}

/// One row of the loss: returns its stats (numerator unweighted by the
/// sample weight) and writes `scale * d(numerator)/dout` into `g`.
#[inline]
fn row<T: Float>(
    cx: &RowCtx<'_>,
    x: &[T],
    target: RowTarget<'_, T>,
    g: Option<&mut [T]>,
    scale: T,
) -> RowStat {
    match cx.kind {
        Loss::CrossEntropy => {
            let c = x.len();
            let cw = |j: usize| cx.weight.map_or(1.0, |w| w[j]);
            let m = x.iter().copied().fold(x[0], T::max);
            let mut s = T::ZERO;
            for &v in x {
                s += (v - m).exp();
            }
            let lse = m + s.ln();
            let pred = argmax(x);
            let eps = cx.smoothing;
            match target {
                RowTarget::Label(l) => {
                    let wl = cw(l);
                    // (1 - eps) * w_l * nll + eps / C * sum_j w_j * (-log p_j)
                    let nll = (lse - x[l]).to_f64();
                    let mut smooth = 0.0;
                    if eps != 0.0 {
                        for (j, &v) in x.iter().enumerate() {
                            smooth += cw(j) * (lse - v).to_f64();
                        }
                    }
                    let loss = (1.0 - eps) * wl * nll + eps / c as f64 * smooth;
                    if let Some(g) = g {
                        // d/dx_j = (1 - eps) w_l (p_j - [j = l]) + eps / C (W p_j - w_j)
                        let a = T::from_f64((1.0 - eps) * wl + eps / c as f64 * cx.weight_sum) * scale / s;
                        for (gj, &v) in g.iter_mut().zip(x) {
                            *gj = (v - m).exp() * a;
                        }
                        if eps != 0.0 {
                            let b = T::from_f64(eps / c as f64) * scale;
                            for (j, gj) in g.iter_mut().enumerate() {
                                *gj -= b * T::from_f64(cw(j));
                            }
                        }
                        g[l] -= T::from_f64((1.0 - eps) * wl) * scale;
                    }
                    RowStat { loss, denom: wl, correct: (pred == l) as u32 }
                }
                RowTarget::Values(t) => {
                    // Smoothed targets t' = (1 - eps) t + eps / C, each weighted:
                    // loss = -sum_j w_j t'_j log p_j; the mean is over samples.
                    let tj = |j: usize| T::from_f64(cw(j) * ((1.0 - eps) * t[j].to_f64() + eps / c as f64));
                    let mut tsum = T::ZERO;
                    let mut tx = T::ZERO;
                    for (j, &v) in x.iter().enumerate() {
                        let w = tj(j);
                        tsum += w;
                        tx += w * v;
                    }
                    if let Some(g) = g {
                        let inv = tsum * scale / s;
                        for (j, (gj, &v)) in g.iter_mut().zip(x).enumerate() {
                            *gj = (v - m).exp() * inv - tj(j) * scale;
                        }
                    }
                    RowStat {
                        loss: (lse * tsum - tx).to_f64(),
                        denom: 1.0,
                        correct: (pred == argmax(t)) as u32,
                    }
                }
            }
        }
        Loss::BinaryCrossEntropy => {
            let RowTarget::Values(t) = target else { return RowStat::default() };
            let mut l = 0.0f64;
            let mut correct = 0u32;
            let half = T::from_f64(0.5);
            let pw = |j: usize| cx.pos_weight.map_or(T::ONE, |w| T::from_f64(w[j]));
            for (j, (&v, &tj)) in x.iter().zip(t).enumerate() {
                // (1 - y) x + (1 + (p - 1) y) (log(1 + e^-|x|) + max(-x, 0))
                let soft = (-v.abs()).exp().ln_1p() + (-v).max(T::ZERO);
                l += ((T::ONE - tj) * v + (T::ONE + (pw(j) - T::ONE) * tj) * soft).to_f64();
                correct += ((v > T::ZERO) == (tj > half)) as u32;
            }
            if let Some(g) = g {
                for (j, ((gj, &v), &tj)) in g.iter_mut().zip(x).zip(t).enumerate() {
                    let sig = if v >= T::ZERO {
                        T::ONE / (T::ONE + (-v).exp())
                    } else {
                        let e = v.exp();
                        e / (T::ONE + e)
                    };
                    // sigma (1 + (p - 1) y) - p y
                    let p = pw(j);
                    *gj = (sig * (T::ONE + (p - T::ONE) * tj) - p * tj) * scale;
                }
            }
            RowStat { loss: l, denom: x.len() as f64, correct }
        }
        Loss::Mse => {
            let RowTarget::Values(t) = target else { return RowStat::default() };
            let mut l = 0.0f64;
            for (&v, &tj) in x.iter().zip(t) {
                let d = v - tj;
                l += (d * d).to_f64();
            }
            if let Some(g) = g {
                let two = T::from_f64(2.0) * scale;
                for ((gj, &v), &tj) in g.iter_mut().zip(x).zip(t) {
                    *gj = (v - tj) * two;
                }
            }
            RowStat { loss: l, denom: x.len() as f64, correct: 0 }
        }
    }
}

#[derive(Clone, Copy)]
enum RowTarget<'a, T> {
    Label(usize),
    Values(&'a [T]),
}

/// Computes the loss of `out` (`rows x cols`) against `target` and, when
/// `grad` is given, writes `dL/dout` of the *mean* loss into it. With
/// `sample_weight`, each row's term is multiplied by its weight (the mean
/// still divides by what it would without). `stats` is caller-owned
/// scratch of at least `rows` entries; totals are summed from it in row
/// order, so they do not depend on the thread count.
///
/// The target must have passed [`validate_target`] and the options
/// [`LossSpec::check_cols`]; a label out of range is still caught here and
/// reported instead of read out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn loss_grad<T: Float>(
    spec: &LossSpec,
    out: &[T],
    rows: usize,
    cols: usize,
    target: Target<'_, T>,
    sample_weight: Option<&[T]>,
    grad: Option<&mut [T]>,
    stats: &mut [RowStat],
) -> Result<LossTotals> {
    loss_grad_over(spec, out, rows, cols, target, sample_weight, grad, stats, None)
}

/// The denominator of the mean loss over the samples `rows` (indices into
/// `target`, a whole data set's): the samples, their class weights
/// (cross-entropy with `weight`) or the elements; summed in `rows`' order,
/// as [`loss_grad`] sums a batch's.
pub fn mean_denom<T: Float>(spec: &LossSpec, target: Target<'_, T>, rows: &[usize], cols: usize) -> f64 {
    match (spec.kind, target, spec.weight.as_deref()) {
        (Loss::CrossEntropy, Target::Labels(l), Some(w)) => rows
            .iter()
            .map(|&i| {
                l.get(i).and_then(|&c| usize::try_from(c).ok()).and_then(|c| w.get(c)).map_or(0.0, |&v| v)
            })
            .sum(),
        (Loss::CrossEntropy, _, _) => rows.len() as f64,
        _ => (rows.len() * cols) as f64,
    }
}

/// [`loss_grad`] whose gradient is that of the loss sum divided by `denom`
/// when given, instead of by this batch's own denominator: data-parallel
/// training gives each process's part of a batch the whole batch's
/// [`mean_denom`], so that the parts' gradients sum to the whole batch's.
/// The totals are this batch's own either way.
#[allow(clippy::too_many_arguments)]
pub fn loss_grad_over<T: Float>(
    spec: &LossSpec,
    out: &[T],
    rows: usize,
    cols: usize,
    target: Target<'_, T>,
    sample_weight: Option<&[T]>,
    grad: Option<&mut [T]>,
    stats: &mut [RowStat],
    denom: Option<f64>,
) -> Result<LossTotals> {
    let loss = spec.kind;
    if cols == 0 || rows == 0 {
        return Ok(LossTotals::default());
    }
    // Cheap checks that keep every index below in bounds; the full
    // validation (finiteness, ranges) is `validate_target`'s, done once per dataset.
    match target {
        Target::Labels(l) => {
            if loss != Loss::CrossEntropy || l.len() < rows {
                validate_target(loss, target, rows, cols)?;
                return Err(Error::shape(format!("expected {rows} labels, got {}", l.len())));
            }
            if let Some(&bad) = l[..rows].iter().find(|&&v| v < 0 || v as u64 >= cols as u64) {
                return Err(Error::value(format!("class label {bad} is out of range [0, {cols})")));
            }
        }
        Target::Values(v) if v.len() < rows * cols => {
            return Err(Error::shape(format!("targets have {} elements, expected {}", v.len(), rows * cols)));
        }
        Target::Values(_) => {}
    }
    if sample_weight.is_some_and(|w| w.len() < rows) {
        return Err(Error::shape(format!("expected {rows} sample weights")));
    }
    for w in [&spec.weight, &spec.pos_weight].into_iter().flatten() {
        if w.len() != cols {
            spec.check_cols(cols)?;
        }
    }
    let cx = RowCtx {
        kind: loss,
        weight: spec.weight.as_deref(),
        weight_sum: spec.weight.as_ref().map_or(cols as f64, |w| w.iter().sum()),
        smoothing: spec.label_smoothing,
        pos_weight: spec.pos_weight.as_deref(),
    };
    let acc_units = if loss == Loss::BinaryCrossEntropy { rows * cols } else { rows };
    let stats = &mut stats[..rows];
    let row_target = |i: usize| match target {
        Target::Labels(l) => RowTarget::Label(l[i] as usize),
        Target::Values(v) => RowTarget::Values(&v[i * cols..(i + 1) * cols]),
    };
    let x_row = |i: usize| &out[i * cols..(i + 1) * cols];
    let sw = |i: usize| sample_weight.map_or(T::ONE, |w| w[i]);
    // The mean's denominator: known before any gradient (it depends on
    // the targets only), and summed in row order.
    let own = || match (loss, target, cx.weight) {
        (Loss::CrossEntropy, Target::Labels(l), Some(w)) => l[..rows].iter().map(|&c| w[c as usize]).sum(),
        (Loss::CrossEntropy, _, _) => rows as f64,
        _ => (rows * cols) as f64,
    };
    let denom: f64 = denom.unwrap_or_else(own);
    let inv = if denom > 0.0 { T::from_f64(1.0 / denom) } else { T::ZERO };
    let parallel = rows * cols >= crate::kernels::PAR_MIN_WORK / 16
        && !crate::kernels::team::in_job()
        && rayon::current_num_threads() > 1;
    let one = |i: usize, g: Option<&mut [T]>| {
        let w = sw(i);
        let mut st = row(&cx, x_row(i), row_target(i), g, inv * w);
        st.loss *= w.to_f64();
        st
    };
    match grad {
        Some(grad) => {
            let grad = &mut grad[..rows * cols];
            if parallel {
                grad.par_chunks_mut(cols).zip(stats.par_iter_mut()).enumerate().for_each(|(i, (g, s))| {
                    *s = one(i, Some(g));
                });
            } else {
                for (i, (g, s)) in grad.chunks_mut(cols).zip(stats.iter_mut()).enumerate() {
                    *s = one(i, Some(g));
                }
            }
        }
        None => {
            if parallel {
                stats.par_iter_mut().enumerate().for_each(|(i, s)| *s = one(i, None));
            } else {
                for (i, s) in stats.iter_mut().enumerate() {
                    *s = one(i, None);
                }
            }
        }
    }
    let mut t = LossTotals { acc_units: acc_units as u64, ..Default::default() };
    for s in stats.iter() {
        t.loss_sum += s.loss;
        t.denom += s.denom;
        t.correct += s.correct as u64;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_check(loss: Loss, x: &[f64], rows: usize, cols: usize, target: Target<'_, f64>) {
        fd_spec(&loss.into(), None, x, rows, cols, target)
    }

    fn fd_spec(
        spec: &LossSpec,
        sw: Option<&[f64]>,
        x: &[f64],
        rows: usize,
        cols: usize,
        target: Target<'_, f64>,
    ) {
        let loss = spec.kind;
        let mut stats = vec![RowStat::default(); rows];
        let mut g = vec![0.0; x.len()];
        loss_grad(spec, x, rows, cols, target, sw, Some(&mut g), &mut stats).unwrap();
        let f = |xx: &[f64]| {
            let mut st = vec![RowStat::default(); rows];
            loss_grad(spec, xx, rows, cols, target, sw, None, &mut st).unwrap().mean()
        };
        let h = 1e-6;
        for i in 0..x.len() {
            let mut xp = x.to_vec();
            xp[i] += h;
            let mut xm = x.to_vec();
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let err = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-8));
            assert!(err < 1e-6 || (fd - g[i]).abs() < 1e-10, "{loss:?} [{i}]: fd {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = [0.3, -1.2, 2.0, 0.5, 0.1, -0.4, 1.5, -2.2, 0.0, 0.7, -0.9, 1.1];
        fd_check(Loss::CrossEntropy, &x, 3, 4, Target::Labels(&[2, 0, 3]));
        let p = [0.1, 0.2, 0.3, 0.4, 1.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25];
        fd_check(Loss::CrossEntropy, &x, 3, 4, Target::Values(&p));
        fd_check(Loss::BinaryCrossEntropy, &x, 3, 4, Target::Values(&p));
        fd_check(Loss::Mse, &x, 3, 4, Target::Values(&p));
    }

    /// Every option, and per-sample weights, against central differences.
    #[test]
    fn options_match_finite_differences() {
        let x = [0.3, -1.2, 2.0, 0.5, 0.1, -0.4, 1.5, -2.2, 0.0, 0.7, -0.9, 1.1];
        let p = [0.1, 0.2, 0.3, 0.4, 1.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25];
        let labels = Target::Labels(&[2, 0, 3]);
        let sw = [0.5, 2.0, 1.25];
        let ce = |weight: Option<Vec<f64>>, label_smoothing: f64| LossSpec {
            kind: Loss::CrossEntropy,
            weight,
            label_smoothing,
            pos_weight: None,
        };
        let w = Some(vec![2.0, 0.5, 1.0, 3.0]);
        for spec in [ce(w.clone(), 0.0), ce(None, 0.3), ce(w.clone(), 0.15), ce(w, 1.0)] {
            fd_spec(&spec, None, &x, 3, 4, labels);
            fd_spec(&spec, Some(&sw), &x, 3, 4, labels);
            fd_spec(&spec, Some(&sw), &x, 3, 4, Target::Values(&p));
        }
        let bce = LossSpec { pos_weight: Some(vec![3.0, 0.5, 1.0, 2.0]), ..Loss::BinaryCrossEntropy.into() };
        fd_spec(&bce, None, &x, 3, 4, Target::Values(&p));
        fd_spec(&bce, Some(&sw), &x, 3, 4, Target::Values(&p));
        fd_spec(&Loss::Mse.into(), Some(&sw), &x, 3, 4, Target::Values(&p));
    }

    /// torch.nn.functional in float64 (the script's values in comments).
    #[test]
    fn options_match_torch() {
        let mut st = vec![RowStat::default(); 2];
        let x = [0.0f64, 1.0, -0.5, 2.0, 0.0, 0.3];
        let spec =
            LossSpec { weight: Some(vec![2.0, 1.0, 0.5]), label_smoothing: 0.1, ..Loss::CrossEntropy.into() };
        // F.cross_entropy(x, [0, 1], weight=[2., 1., .5], label_smoothing=0.1)
        let t = loss_grad(&spec, &x, 2, 3, Target::Labels(&[0, 1]), None, None, &mut st).unwrap();
        assert!((t.mean() - 1.652_479_567_837_174_9).abs() < 1e-14, "{}", t.mean());
        // F.cross_entropy(x, [[.25, .75, 0], [1, 0, 0]], weight=[2., 1., .5], label_smoothing=0.2)
        let probs = [0.25, 0.75, 0.0, 1.0, 0.0, 0.0];
        let spec = LossSpec { label_smoothing: 0.2, ..spec };
        let t = loss_grad(&spec, &x, 2, 3, Target::Values(&probs), None, None, &mut st).unwrap();
        assert!((t.mean() - 0.926_146_313_616_642_3).abs() < 1e-14, "{}", t.mean());
        // F.binary_cross_entropy_with_logits([[.5, -1.]], [[1., 0.]], pos_weight=[3., 2.])
        let bce = LossSpec { pos_weight: Some(vec![3.0, 2.0]), ..Loss::BinaryCrossEntropy.into() };
        let t =
            loss_grad(&bce, &[0.5, -1.0], 1, 2, Target::Values(&[1.0, 0.0]), None, None, &mut st).unwrap();
        assert!((t.mean() - 0.867_746_320_029_271_4).abs() < 1e-14, "{}", t.mean());
        // Sample weights multiply each sample's term; the mean still divides
        // by the unweighted count: (2 * l0 + 0 * l1) / 2.
        let plain: LossSpec = Loss::CrossEntropy.into();
        let t =
            loss_grad(&plain, &x, 2, 3, Target::Labels(&[0, 1]), Some(&[2.0, 0.0]), None, &mut st).unwrap();
        let t0 = loss_grad(&plain, &x[..3], 1, 3, Target::Labels(&[0]), None, None, &mut st).unwrap();
        assert!((t.mean() - t0.mean()).abs() < 1e-15);
    }

    #[test]
    fn bad_options_are_errors() {
        let err = |text: &str| LossSpec::from_json(text).unwrap_err().message;
        assert!(err(r#"{"kind": "cross_entropy", "label_smoothing": 1.5}"#)
            .contains("label_smoothing must be in [0, 1]"));
        assert!(err(r#"{"kind": "mse", "label_smoothing": 0.1}"#).contains("applies to cross_entropy"));
        assert!(err(r#"{"kind": "mse", "pos_weight": [1.0]}"#).contains("applies to binary_cross_entropy"));
        assert!(err(r#"{"kind": "hinge"}"#).contains("invalid loss configuration"));
        let spec = LossSpec::from_json(r#"{"kind": "cross_entropy", "weight": [1.0, -2.0]}"#).unwrap();
        assert!(spec
            .check_cols(2)
            .unwrap_err()
            .message
            .contains("must be finite and >= 0, got -2 at index 1"));
        assert!(spec.check_cols(3).unwrap_err().message.contains("has 2 entries, expected 3"));
        assert!(check_sample_weights(&[1.0f32, f32::NAN], 2).unwrap_err().message.contains("index 1"));
        assert!(check_sample_weights(&[1.0f32], 2).is_err());
        assert_eq!(LossSpec::from_json("mse").unwrap(), Loss::Mse.into());
    }

    #[test]
    fn known_values() {
        let mut st = vec![RowStat::default(); 2];
        // log(1 + e) = 1.3132616875182228 (torch.nn.functional.cross_entropy([[0,1]], [0]))
        let t = loss_grad(
            &Loss::CrossEntropy.into(),
            &[0.0f64, 1.0, 0.0, 1.0],
            2,
            2,
            Target::Labels(&[0, 1]),
            None,
            None,
            &mut st,
        )
        .unwrap();
        let want = (1.313_261_687_518_222_8 + 0.313_261_687_518_222_8) / 2.0;
        assert!((t.mean() - want).abs() < 1e-12);
        assert_eq!(t.correct, 1);
        // BCE of logit 0 is ln 2 whatever the target.
        let t = loss_grad(
            &Loss::BinaryCrossEntropy.into(),
            &[0.0f64, 0.0],
            1,
            2,
            Target::Values(&[1.0, 0.0]),
            None,
            None,
            &mut st,
        )
        .unwrap();
        assert!((t.mean() - std::f64::consts::LN_2).abs() < 1e-12);
        let t = loss_grad(
            &Loss::Mse.into(),
            &[1.0f64, 3.0],
            1,
            2,
            Target::Values(&[0.0, 0.0]),
            None,
            None,
            &mut st,
        )
        .unwrap();
        assert_eq!(t.mean(), 5.0);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let mut st = vec![RowStat::default(); 1];
        let mut g = [0.0f32; 2];
        let t = loss_grad(
            &Loss::CrossEntropy.into(),
            &[1000.0f32, -1000.0],
            1,
            2,
            Target::Labels(&[1]),
            None,
            Some(&mut g),
            &mut st,
        )
        .unwrap();
        assert!((t.mean() - 2000.0).abs() < 1e-3 && g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_labels_are_errors() {
        let mut st = vec![RowStat::default(); 1];
        let r = loss_grad(
            &Loss::CrossEntropy.into(),
            &[0.0f32, 1.0],
            1,
            2,
            Target::Labels(&[2]),
            None,
            None,
            &mut st,
        );
        assert!(r.is_err());
        assert!(validate_target::<f32>(Loss::CrossEntropy, Target::Labels(&[-1]), 1, 2).is_err());
        assert!(validate_target::<f32>(Loss::Mse, Target::Labels(&[0]), 1, 2).is_err());
        assert!(validate_target(Loss::BinaryCrossEntropy, Target::Values(&[1.5f32, 0.0]), 1, 2).is_err());
        assert!(validate_target(Loss::Mse, Target::Values(&[f32::NAN, 0.0]), 1, 2).is_err());
    }
}
