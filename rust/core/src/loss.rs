//! Loss functions with mean reduction. Each computes its value and, in the
//! same pass, the gradient with respect to the model output.

use crate::error::{Error, Result};
use crate::float::Float;
use rayon::prelude::*;

/// A loss function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Sum of the loss over this sample's elements.
    pub loss: f64,
    /// Correct predictions in this sample (for accuracy).
    pub correct: u32,
}

/// Totals over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTotals {
    /// Sum of the loss terms (divide by `units` for the mean).
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u64,
    /// What the mean is taken over: samples for cross-entropy, elements otherwise.
    pub units: u64,
    /// What accuracy is taken over: samples, or elements for binary cross-entropy.
    pub acc_units: u64,
}

impl LossTotals {
    pub fn add(&mut self, o: &LossTotals) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.units += o.units;
        self.acc_units += o.acc_units;
    }
    /// The mean loss.
    pub fn mean(&self) -> f64 {
        if self.units == 0 {
            0.0
        } else {
            self.loss_sum / self.units as f64
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

/// One row of the loss: returns its stats and writes `scale * dL/dout` into `g`.
#[inline]
fn row<T: Float>(loss: Loss, x: &[T], target: RowTarget<'_, T>, g: Option<&mut [T]>, scale: T) -> RowStat {
    match loss {
        Loss::CrossEntropy => {
            let m = x.iter().copied().fold(x[0], T::max);
            let mut s = T::ZERO;
            for &v in x {
                s += (v - m).exp();
            }
            let lse = m + s.ln();
            let pred = argmax(x);
            match target {
                RowTarget::Label(l) => {
                    if let Some(g) = g {
                        let inv = scale / s;
                        for (gj, &v) in g.iter_mut().zip(x) {
                            *gj = (v - m).exp() * inv;
                        }
                        g[l] -= scale;
                    }
                    RowStat { loss: (lse - x[l]).to_f64(), correct: (pred == l) as u32 }
                }
                RowTarget::Values(t) => {
                    let tsum: T = t.iter().copied().sum();
                    let tx: T = t.iter().zip(x).map(|(&a, &b)| a * b).sum();
                    if let Some(g) = g {
                        let inv = tsum * scale / s;
                        for ((gj, &v), &tj) in g.iter_mut().zip(x).zip(t) {
                            *gj = (v - m).exp() * inv - tj * scale;
                        }
                    }
                    RowStat { loss: (lse * tsum - tx).to_f64(), correct: (pred == argmax(t)) as u32 }
                }
            }
        }
        Loss::BinaryCrossEntropy => {
            let RowTarget::Values(t) = target else { return RowStat::default() };
            let mut l = 0.0f64;
            let mut correct = 0u32;
            let half = T::from_f64(0.5);
            for (&v, &tj) in x.iter().zip(t) {
                l += (v.max(T::ZERO) - v * tj + (-v.abs()).exp().ln_1p()).to_f64();
                correct += ((v > T::ZERO) == (tj > half)) as u32;
            }
            if let Some(g) = g {
                for ((gj, &v), &tj) in g.iter_mut().zip(x).zip(t) {
                    let sig = if v >= T::ZERO {
                        T::ONE / (T::ONE + (-v).exp())
                    } else {
                        let e = v.exp();
                        e / (T::ONE + e)
                    };
                    *gj = (sig - tj) * scale;
                }
            }
            RowStat { loss: l, correct }
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
            RowStat { loss: l, correct: 0 }
        }
    }
}

#[derive(Clone, Copy)]
enum RowTarget<'a, T> {
    Label(usize),
    Values(&'a [T]),
}

/// Computes the loss of `out` (`rows x cols`) against `target` and, when
/// `grad` is given, writes `dL/dout` of the *mean* loss into it. `stats` is
/// caller-owned scratch of at least `rows` entries; totals are summed from it
/// in row order, so they do not depend on the thread count.
///
/// The target must have passed [`validate_target`]; a label out of range is
/// still caught here and reported instead of read out of bounds.
pub fn loss_grad<T: Float>(
    loss: Loss,
    out: &[T],
    rows: usize,
    cols: usize,
    target: Target<'_, T>,
    grad: Option<&mut [T]>,
    stats: &mut [RowStat],
) -> Result<LossTotals> {
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
    let units = if loss == Loss::CrossEntropy { rows } else { rows * cols };
    let acc_units = if loss == Loss::BinaryCrossEntropy { rows * cols } else { rows };
    let scale = T::ONE / T::from_usize(units);
    let stats = &mut stats[..rows];
    let row_target = |i: usize| match target {
        Target::Labels(l) => RowTarget::Label(l[i] as usize),
        Target::Values(v) => RowTarget::Values(&v[i * cols..(i + 1) * cols]),
    };
    let x_row = |i: usize| &out[i * cols..(i + 1) * cols];
    let parallel = rows * cols >= crate::kernels::PAR_MIN_WORK / 16
        && !crate::kernels::team::in_job()
        && rayon::current_num_threads() > 1;
    match grad {
        Some(grad) => {
            let grad = &mut grad[..rows * cols];
            if parallel {
                grad.par_chunks_mut(cols).zip(stats.par_iter_mut()).enumerate().for_each(|(i, (g, s))| {
                    *s = row(loss, x_row(i), row_target(i), Some(g), scale);
                });
            } else {
                for (i, (g, s)) in grad.chunks_mut(cols).zip(stats.iter_mut()).enumerate() {
                    *s = row(loss, x_row(i), row_target(i), Some(g), scale);
                }
            }
        }
        None => {
            if parallel {
                stats
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(i, s)| *s = row(loss, x_row(i), row_target(i), None, scale));
            } else {
                for (i, s) in stats.iter_mut().enumerate() {
                    *s = row(loss, x_row(i), row_target(i), None, scale);
                }
            }
        }
    }
    let mut t = LossTotals { units: units as u64, acc_units: acc_units as u64, ..Default::default() };
    for s in stats.iter() {
        t.loss_sum += s.loss;
        t.correct += s.correct as u64;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_check(loss: Loss, x: &[f64], rows: usize, cols: usize, target: Target<'_, f64>) {
        let mut stats = vec![RowStat::default(); rows];
        let mut g = vec![0.0; x.len()];
        loss_grad(loss, x, rows, cols, target, Some(&mut g), &mut stats).unwrap();
        let f = |xx: &[f64]| {
            let mut st = vec![RowStat::default(); rows];
            loss_grad(loss, xx, rows, cols, target, None, &mut st).unwrap().mean()
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

    #[test]
    fn known_values() {
        let mut st = vec![RowStat::default(); 2];
        // log(1 + e) = 1.3132616875182228 (torch.nn.functional.cross_entropy([[0,1]], [0]))
        let t = loss_grad(
            Loss::CrossEntropy,
            &[0.0f64, 1.0, 0.0, 1.0],
            2,
            2,
            Target::Labels(&[0, 1]),
            None,
            &mut st,
        )
        .unwrap();
        let want = (1.313_261_687_518_222_8 + 0.313_261_687_518_222_8) / 2.0;
        assert!((t.mean() - want).abs() < 1e-12);
        assert_eq!(t.correct, 1);
        // BCE of logit 0 is ln 2 whatever the target.
        let t = loss_grad(
            Loss::BinaryCrossEntropy,
            &[0.0f64, 0.0],
            1,
            2,
            Target::Values(&[1.0, 0.0]),
            None,
            &mut st,
        )
        .unwrap();
        assert!((t.mean() - std::f64::consts::LN_2).abs() < 1e-12);
        let t =
            loss_grad(Loss::Mse, &[1.0f64, 3.0], 1, 2, Target::Values(&[0.0, 0.0]), None, &mut st).unwrap();
        assert_eq!(t.mean(), 5.0);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let mut st = vec![RowStat::default(); 1];
        let mut g = [0.0f32; 2];
        let t = loss_grad(
            Loss::CrossEntropy,
            &[1000.0f32, -1000.0],
            1,
            2,
            Target::Labels(&[1]),
            Some(&mut g),
            &mut st,
        )
        .unwrap();
        assert!((t.mean() - 2000.0).abs() < 1e-3 && g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_labels_are_errors() {
        let mut st = vec![RowStat::default(); 1];
        let r = loss_grad(Loss::CrossEntropy, &[0.0f32, 1.0], 1, 2, Target::Labels(&[2]), None, &mut st);
        assert!(r.is_err());
        assert!(validate_target::<f32>(Loss::CrossEntropy, Target::Labels(&[-1]), 1, 2).is_err());
        assert!(validate_target::<f32>(Loss::Mse, Target::Labels(&[0]), 1, 2).is_err());
        assert!(validate_target(Loss::BinaryCrossEntropy, Target::Values(&[1.5f32, 0.0]), 1, 2).is_err());
        assert!(validate_target(Loss::Mse, Target::Values(&[f32::NAN, 0.0]), 1, 2).is_err());
    }
}
