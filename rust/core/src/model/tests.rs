//! Whole-model tests: the fused input prefix and thread-count independence.

use super::*;
use crate::data::Features;
use crate::float::Float;
use crate::loss::{Loss, Target};
use crate::optim::OptimConfig;
use crate::Init;

/// The input prefix (Flatten, one Rescaling) fused into the gather gives
/// the same bits as running those layers: a `Dropout(0)` in front (an
/// exact copy) keeps the same stack from being fused. Two Rescalings
/// fuse only the first.
#[test]
fn fused_input_prefix_matches_the_layers() {
    fn run<T: Float>(prefix: &[LayerSpec], fused: bool) -> (Vec<T>, Vec<T>) {
        let n = 300;
        let mut r = Rng::new(11);
        let x: Vec<u8> = (0..n * 196).map(|_| (r.next_u64() >> 56) as u8).collect();
        let y: Vec<i64> = (0..n).map(|i| (x[i * 196 + 50] as i64) % 10).collect();
        let mut specs = if fused { vec![] } else { vec![LayerSpec::Dropout { p: 0.0 }] };
        specs.extend_from_slice(prefix);
        specs.extend([
            LayerSpec::Dense { in_features: 196, out_features: 32, bias: true, init: Init::He },
            LayerSpec::ReLU,
            LayerSpec::Dense { in_features: 32, out_features: 10, bias: true, init: Init::Xavier },
        ]);
        let mut model = Sequential::<T>::new(specs, 2).expect("model");
        assert_eq!(model.prefix, if fused { prefix.len().min(2) } else { 0 });
        let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
        let cfg =
            OptimConfig::Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let x = Features::U8(&x);
        let data = Data { x, n, shape: &[14, 14], y: Target::Labels(&y) };
        let opts = EpochOptions { batch_size: 32, ..EpochOptions::new(Loss::CrossEntropy, 32) };
        model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(())).expect("epoch");
        let mut out = vec![T::ZERO; n * 10];
        model.predict_into(&x, n, &[14, 14], 64, &mut out).expect("predict");
        (model.params().to_vec(), out)
    }
    let one = [LayerSpec::Flatten, LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: -0.25 }];
    let two = [
        LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 },
        LayerSpec::Flatten,
        LayerSpec::Rescaling { scale: 3.0, offset: -1.0 },
    ];
    for prefix in [&one[..], &one[..1], &two[..]] {
        let (p, out) = run::<f32>(prefix, true);
        assert_eq!((p.clone(), out.clone()), run::<f32>(prefix, false), "{prefix:?}");
        // The model learned something (the comparison is not vacuous).
        assert!(p.iter().all(|v| v.is_finite()) && out.iter().any(|&v| v != 0.0));
        assert_eq!(run::<f64>(prefix, true), run::<f64>(prefix, false), "{prefix:?}, float64");
    }
}

/// A short epoch on 1, 2 and 3 threads gives bitwise-equal weights, at
/// batch sizes that take each split: fixed column blocks (32 rows; the
/// 160-wide layer would end in a narrow block, summed differently, if its
/// blocks followed the worker count), column blocks per worker (128 and
/// 256 rows), row chunks (the weight gradients), all on the team and, in
/// the tuner's probe steps, without it.
#[test]
fn training_independent_of_thread_count() {
    let n = 800;
    let mut r = Rng::new(3);
    let x: Vec<u8> = (0..n * 784).map(|_| (r.next_u64() >> 56) as u8).collect();
    let y: Vec<i64> = (0..n).map(|i| (x[i * 784 + 100] as i64) % 10).collect();
    for batch in [32, 128, 256] {
        let train = |threads: usize| {
            let specs = vec![
                LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 },
                LayerSpec::Dense { in_features: 784, out_features: 600, bias: true, init: Init::He },
                LayerSpec::ReLU,
                LayerSpec::Dense { in_features: 600, out_features: 160, bias: true, init: Init::He },
                LayerSpec::ReLU,
                LayerSpec::Dense { in_features: 160, out_features: 10, bias: true, init: Init::Xavier },
            ];
            let mut model = Sequential::<f32>::new(specs, 5).expect("model");
            let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
            let cfg = OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| {
                let data = Data { x: Features::U8(&x), n, shape: &[784], y: Target::Labels(&y) };
                let opts = EpochOptions::new(Loss::CrossEntropy, batch);
                model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(())).expect("epoch")
            });
            model.params().to_vec()
        };
        let one = train(1);
        assert_eq!(one, train(2), "batch {batch}, 2 threads");
        assert_eq!(one, train(3), "batch {batch}, 3 threads");
    }
}
