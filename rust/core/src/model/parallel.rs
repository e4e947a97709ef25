//! Data-parallel training: which part of each step a process computes.
//!
//! The core moves no data between processes; it computes this process's
//! part of each step and hands the flat gradient buffer to a reduction hook
//! (see [`Sequential::train_epoch_reduced`](super::Sequential::train_epoch_reduced)),
//! which the caller implements with its transport (MPI's all-reduce in the
//! Python package).

use crate::error::{Error, Result};
use std::ops::Range;

/// The per-step gradient hook of
/// [`Sequential::train_epoch_reduced`](super::Sequential::train_epoch_reduced):
/// called with the flat gradient buffer, to change it in place (e.g. sum it
/// across processes).
pub type GradHook<'a, T> = &'a mut dyn FnMut(&mut [T]) -> Result<()>;

/// How a training epoch shares its steps with other processes ("ranks").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallel {
    /// Every rank holds the whole data set and draws the same shuffled
    /// order; rank `rank` of `ranks` takes a contiguous slice of every
    /// batch (of `batch_size`, the global batch), and its loss gradient is
    /// divided by the whole batch's denominator, so the ranks' gradients
    /// sum to the single-process gradient. A batch smaller than `ranks`
    /// leaves some ranks without samples: they contribute zero.
    Split { rank: usize, ranks: usize },
    /// Every rank holds its own part of the data, of any size, and takes
    /// whole batches of `batch_size` from it (the per-rank batch, as
    /// PyTorch's DDP); the epoch ends after `steps` steps (the smallest
    /// part's count, which every rank must pass), and the loss gradient is
    /// divided by `ranks` so the sum over ranks is the mean of their means.
    Shard { ranks: usize, steps: usize },
}

impl Parallel {
    /// Checks the fields: `rank < ranks`, `steps >= 1`.
    pub fn check(&self) -> Result<()> {
        match *self {
            Parallel::Split { rank, ranks } if rank >= ranks => {
                Err(Error::value(format!("rank {rank} is out of range for {ranks} ranks")))
            }
            Parallel::Shard { ranks: 0, .. } => Err(Error::value("ranks must be >= 1, got 0")),
            Parallel::Shard { steps: 0, .. } => Err(Error::value("steps must be >= 1, got 0")),
            _ => Ok(()),
        }
    }

    /// This rank's rows of a batch of `m` samples (positions in the batch).
    pub fn part(&self, m: usize) -> Range<usize> {
        match *self {
            Parallel::Split { rank, ranks } => rank * m / ranks..(rank + 1) * m / ranks,
            Parallel::Shard { .. } => 0..m,
        }
    }

    /// The steps of an epoch that takes `steps` batches of its data.
    pub fn steps(&self, steps: usize) -> usize {
        match *self {
            Parallel::Split { .. } => steps,
            Parallel::Shard { steps: s, .. } => s.min(steps),
        }
    }

    /// The sizes of every rank's part of a batch of `m` samples.
    pub(crate) fn part_sizes(&self, m: usize) -> Vec<usize> {
        match *self {
            Parallel::Split { ranks, .. } => {
                (0..ranks).map(|r| (r + 1) * m / ranks - r * m / ranks).collect()
            }
            Parallel::Shard { .. } => vec![m],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Features;
    use crate::layers::{DenseSpec, TanhSpec};
    use crate::loss::{Loss, LossSpec, Target};
    use crate::model::{Data, EpochOptions, Flow, Sequential};
    use crate::optim::{OptimConfig, Optimizer};
    use crate::rng::Rng;
    use crate::{Init, LayerSpec};
    use std::sync::{Barrier, Mutex};

    fn mlp(seed: u64) -> Sequential<f64> {
        let specs = vec![
            LayerSpec::Dense(DenseSpec { in_features: 5, out_features: 7, bias: true, init: Init::He }),
            LayerSpec::Tanh(TanhSpec {}),
            LayerSpec::Dense(DenseSpec { in_features: 7, out_features: 3, bias: true, init: Init::Xavier }),
        ];
        Sequential::new(specs, seed).expect("model")
    }

    /// Two epochs of `n` samples in batches of `bs`, on `ranks` simulated
    /// ranks (threads) whose hook sums the gradients in rank order; returns
    /// every rank's parameters (one set for `ranks == 0`: no parallelism).
    fn train(n: usize, bs: usize, ranks: usize, spec: &LossSpec, clip: bool) -> Vec<Vec<f64>> {
        let mut r = Rng::new(5);
        let x: Vec<f64> =
            (0..n * 5).map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5).collect();
        let y: Vec<i64> = (0..n).map(|i| (x[i * 5] > 0.0) as i64 + (x[i * 5 + 1] > 0.2) as i64).collect();
        let run = |rank: usize, hook: Option<GradHook<'_, f64>>| {
            let mut m = mlp(3);
            let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
            let cfg = OptimConfig::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
            let data = Data::new(Features::F64(&x), n, &[5], Target::Labels(&y));
            let mut opts = EpochOptions::new(spec.clone(), bs);
            opts.parallel = (ranks > 0).then_some(Parallel::Split { rank, ranks });
            opts.clip = clip.then(|| crate::ClipNorm::new(0.1, 2.0).expect("clip"));
            let mut hook = hook;
            for epoch in 1..=2 {
                opts.epoch = epoch;
                let h = hook.as_mut().map(|h| &mut **h as GradHook<'_, f64>);
                m.train_epoch_reduced(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue), h).expect("epoch");
            }
            m.params().to_vec()
        };
        if ranks == 0 {
            return vec![run(0, None)];
        }
        let parts: Mutex<Vec<Option<Vec<f64>>>> = Mutex::new(vec![None; ranks]);
        let sum: Mutex<Vec<f64>> = Mutex::new(Vec::new());
        let barrier = Barrier::new(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..ranks)
                .map(|rank| {
                    let (parts, sum, barrier) = (&parts, &sum, &barrier);
                    s.spawn(move || {
                        let mut hook = |g: &mut [f64]| {
                            parts.lock().expect("lock")[rank] = Some(g.to_vec());
                            if barrier.wait().is_leader() {
                                let mut p = parts.lock().expect("lock");
                                let mut total = vec![0.0; g.len()];
                                for part in p.iter_mut() {
                                    for (t, v) in total.iter_mut().zip(part.take().expect("part")) {
                                        *t += v;
                                    }
                                }
                                *sum.lock().expect("lock") = total;
                            }
                            barrier.wait();
                            g.copy_from_slice(&sum.lock().expect("lock"));
                            barrier.wait();
                            Ok(())
                        };
                        run(rank, Some(&mut hook))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("rank")).collect()
        })
    }

    /// Split training on 2 and 3 ranks equals one process to rounding, with
    /// a last batch smaller than the rank count (ranks without samples),
    /// class weights (the denominator of the whole batch) and clipping; every
    /// rank ends with the same bits.
    #[test]
    fn split_training_matches_one_process() {
        let weighted = LossSpec { weight: Some(vec![0.5, 2.0, 1.0]), ..Loss::CrossEntropy.into() };
        for (spec, clip) in [(LossSpec::from(Loss::CrossEntropy), false), (weighted, true)] {
            for (n, bs) in [(43, 8), (41, 8), (20, 20)] {
                let one = train(n, bs, 0, &spec, clip).remove(0);
                for ranks in [1, 2, 3] {
                    let all = train(n, bs, ranks, &spec, clip);
                    for p in &all[1..] {
                        assert_eq!(p, &all[0], "ranks differ: n={n} bs={bs} ranks={ranks}");
                    }
                    let scale = one.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                    let err = one.iter().zip(&all[0]).fold(0.0f64, |a, (u, v)| a.max((u - v).abs()));
                    assert!(err <= 1e-12 * scale, "n={n} bs={bs} ranks={ranks}: max error {err}");
                    assert!(all[0] != mlp(3).params(), "the weights moved");
                }
            }
        }
    }

    /// A hook's error ends the epoch with it; a parallel epoch without a
    /// hook is refused.
    #[test]
    fn hook_errors_end_the_epoch() {
        let mut m = mlp(1);
        let before = m.params().to_vec();
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let cfg =
            OptimConfig::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let x = vec![0.25; 4 * 5];
        let y = vec![0i64, 1, 2, 1];
        let data = Data::new(Features::F64(&x), 4, &[5], Target::Labels(&y));
        let mut opts = EpochOptions::new(Loss::CrossEntropy, 2);
        opts.parallel = Some(Parallel::Split { rank: 0, ranks: 2 });
        let e = m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect_err("no hook");
        assert!(e.message.contains("hook"), "{}", e.message);
        let mut hook = |_: &mut [f64]| Err(crate::Error::value("peer gone"));
        let e = m.train_epoch_reduced(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue), Some(&mut hook));
        assert_eq!(e.expect_err("hook error").message, "peer gone");
        assert_eq!(m.params(), &before[..]);
        // A NaN from another rank (here: the hook) ends the epoch, naming it.
        let mut poison = |g: &mut [f64]| {
            g[0] = f64::NAN;
            Ok(())
        };
        let e = m.train_epoch_reduced(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue), Some(&mut poison));
        let msg = e.expect_err("non-finite").message;
        assert!(msg.contains("another process"), "{msg}");
        assert_eq!(m.params(), &before[..]);
    }

    #[test]
    fn split_parts_tile_the_batch() {
        for ranks in 1..6 {
            for m in 0..13 {
                let mut next = 0;
                for rank in 0..ranks {
                    let r = Parallel::Split { rank, ranks }.part(m);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, m);
                let sizes = Parallel::Split { rank: 0, ranks }.part_sizes(m);
                assert_eq!(sizes.iter().sum::<usize>(), m);
            }
        }
        assert!(Parallel::Split { rank: 2, ranks: 2 }.check().is_err());
        assert!(Parallel::Shard { ranks: 2, steps: 0 }.check().is_err());
    }
}
