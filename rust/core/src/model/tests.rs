//! Whole-model tests: the fused input prefix and thread-count independence.

use super::*;
use crate::data::Features;
use crate::float::Float;
use crate::layers::{
    Conv2DSpec, DenseSpec, DropoutSpec, FlattenSpec, ReLUSpec, RescalingSpec, SigmoidSpec, TanhSpec,
};
use crate::loss::{loss_grad, Loss, Target};
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
        let mut specs = if fused { vec![] } else { vec![LayerSpec::Dropout(DropoutSpec { p: 0.0 })] };
        specs.extend_from_slice(prefix);
        specs.extend([
            LayerSpec::Dense(DenseSpec { in_features: 196, out_features: 32, bias: true, init: Init::He }),
            LayerSpec::ReLU(ReLUSpec {}),
            LayerSpec::Dense(DenseSpec { in_features: 32, out_features: 10, bias: true, init: Init::Xavier }),
        ]);
        let mut model = Sequential::<T>::new(specs, 2).expect("model");
        assert_eq!(model.prefix, if fused { prefix.len().min(2) } else { 0 });
        let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
        let cfg =
            OptimConfig::Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let x = Features::U8(&x);
        let data = Data::new(x, n, &[14, 14], Target::Labels(&y));
        let opts = EpochOptions { batch_size: 32, ..EpochOptions::new(Loss::CrossEntropy, 32) };
        model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch");
        let mut out = vec![T::ZERO; n * 10];
        model.predict_into(&x, n, &[14, 14], 64, &mut out).expect("predict");
        (model.params().to_vec(), out)
    }
    let one = [
        LayerSpec::Flatten(FlattenSpec {}),
        LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: -0.25 }),
    ];
    let two = [
        LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 }),
        LayerSpec::Flatten(FlattenSpec {}),
        LayerSpec::Rescaling(RescalingSpec { scale: 3.0, offset: -1.0 }),
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
                LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 }),
                LayerSpec::Dense(DenseSpec {
                    in_features: 784,
                    out_features: 600,
                    bias: true,
                    init: Init::He,
                }),
                LayerSpec::ReLU(ReLUSpec {}),
                LayerSpec::Dense(DenseSpec {
                    in_features: 600,
                    out_features: 160,
                    bias: true,
                    init: Init::He,
                }),
                LayerSpec::ReLU(ReLUSpec {}),
                LayerSpec::Dense(DenseSpec {
                    in_features: 160,
                    out_features: 10,
                    bias: true,
                    init: Init::Xavier,
                }),
            ];
            let mut model = Sequential::<f32>::new(specs, 5).expect("model");
            let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
            let cfg = OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| {
                let data = Data::new(Features::U8(&x), n, &[784], Target::Labels(&y));
                let opts = EpochOptions::new(Loss::CrossEntropy, batch);
                model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch")
            });
            model.params().to_vec()
        };
        let one = train(1);
        assert_eq!(one, train(2), "batch {batch}, 2 threads");
        assert_eq!(one, train(3), "batch {batch}, 3 threads");
    }
}

fn small_mlp(act: LayerSpec, seed: u64) -> Sequential<f64> {
    let specs = vec![
        LayerSpec::Dense(DenseSpec { in_features: 12, out_features: 16, bias: true, init: Init::He }),
        act,
        LayerSpec::Dense(DenseSpec { in_features: 16, out_features: 3, bias: true, init: Init::Xavier }),
    ];
    Sequential::<f64>::new(specs, seed).expect("model")
}

fn toy_data(n: usize) -> (Vec<f64>, Vec<i64>) {
    let mut r = Rng::new(9);
    let x: Vec<f64> =
        (0..n * 12).map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0).collect();
    let y: Vec<i64> = (0..n).map(|i| (x[i * 12] > 0.0) as i64 + (x[i * 12 + 1] > 0.5) as i64).collect();
    (x, y)
}

/// `EpochOptions::clip` in the fused step gives the bits of the step API:
/// forward, loss gradient, backward, per-parameter norms, total norm,
/// scaling, update; for the 2-norm, the 1-norm and the max-norm.
#[test]
fn clipped_epoch_matches_manual_clipping() {
    let n = 40;
    let (x, y) = toy_data(n);
    let cfg = OptimConfig::Sgd { lr: 0.5, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    for norm_type in [2.0, 1.0, f64::INFINITY] {
        let clip = crate::ClipNorm::new(0.05, norm_type).expect("clip");
        let mut fused = small_mlp(LayerSpec::Tanh(TanhSpec {}), 4);
        let mut manual = small_mlp(LayerSpec::Tanh(TanhSpec {}), 4);
        let ranges: Vec<_> = fused.entries().iter().map(|e| e.range.clone()).collect();
        let mut o1 = Optimizer::new(cfg.clone(), ranges.clone()).expect("optimizer");
        let mut o2 = Optimizer::new(cfg.clone(), ranges).expect("optimizer");
        let data = Data::new(Features::F64(&x), n, &[12], Target::Labels(&y));
        let opts =
            EpochOptions { shuffle: false, clip: Some(clip), ..EpochOptions::new(Loss::CrossEntropy, n) };
        let all: Vec<usize> = (0..manual.entries().len()).collect();
        for _ in 0..3 {
            fused.train_epoch(data, &mut o1, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch");
            let out = manual.forward(&Features::F64(&x), n, &[12], true).expect("forward").to_vec();
            let mut dout = vec![0.0; n * 3];
            let mut stats = vec![crate::loss::RowStat::default(); n];
            loss_grad(
                &Loss::CrossEntropy.into(),
                &out,
                n,
                3,
                Target::Labels(&y),
                None,
                Some(&mut dout),
                &mut stats,
            )
            .expect("loss");
            manual.zero_grad();
            manual.backward(&dout, &[n, 3]).expect("backward");
            let norms = manual.grad_norms(&all, norm_type).expect("norms");
            let total = crate::clip::total_norm(&norms, norm_type).expect("total");
            assert!(total > 0.05, "the test must clip (total norm {total})");
            let coef = clip.coef(total);
            manual.scale_grads(&all, coef).expect("scale");
            let after =
                crate::clip::total_norm(&manual.grad_norms(&all, norm_type).expect("norms"), norm_type);
            assert!((after.expect("total") - 0.05).abs() < 1e-6, "clipped to max_norm");
            manual.optimizer_step(&mut o2).expect("step");
        }
        assert_eq!(fused.params(), manual.params(), "norm_type {norm_type}");
    }
}

/// Diagnostics of one step equal the norms of the gradient, the weights
/// before the step and the update, computed here from the step API; dead
/// units and saturation count what they document.
#[test]
fn diagnostics_of_one_step() {
    let n = 40;
    let (x, y) = toy_data(n);
    let cfg = OptimConfig::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut model = small_mlp(LayerSpec::ReLU(ReLUSpec {}), 1);
    let mut probe = small_mlp(LayerSpec::ReLU(ReLUSpec {}), 1);
    // Kill units 0..4 of the hidden layer: weights and bias negative, inputs
    // in [-2, 2], so the pre-activation is below 0 for every sample.
    let w = model.entries()[0].range.clone();
    let b = model.entries()[1].range.clone();
    for m in [&mut model, &mut probe] {
        for u in 0..4 {
            for k in 0..12 {
                m.params[w.start + u * 12 + k] = 0.0;
            }
            m.params[b.start + u] = -1.0;
        }
    }
    let ranges: Vec<_> = model.entries().iter().map(|e| e.range.clone()).collect();
    let mut opt = Optimizer::new(cfg.clone(), ranges.clone()).expect("optimizer");
    let data = Data::new(Features::F64(&x), n, &[12], Target::Labels(&y));
    let opts = EpochOptions { shuffle: false, diagnostics: true, ..EpochOptions::new(Loss::CrossEntropy, n) };
    model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch");
    let d = model.last_diagnostics().expect("diagnostics").clone();
    assert_eq!(d.steps, 1);
    // The same step by hand.
    let before = probe.params().to_vec();
    let out = probe.forward(&Features::F64(&x), n, &[12], true).expect("forward").to_vec();
    let hidden: Vec<f64> = probe.ws.acts[1][..n * 16].to_vec();
    let mut dout = vec![0.0; n * 3];
    let mut stats = vec![crate::loss::RowStat::default(); n];
    loss_grad(&Loss::CrossEntropy.into(), &out, n, 3, Target::Labels(&y), None, Some(&mut dout), &mut stats)
        .expect("loss");
    probe.zero_grad();
    probe.backward(&dout, &[n, 3]).expect("backward");
    let mut o2 = Optimizer::new(cfg, ranges).expect("optimizer");
    probe.optimizer_step(&mut o2).expect("step");
    let l2 = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    for (e, s) in probe.entries().iter().zip(&d.params) {
        let r = e.range.clone();
        let g = l2(&probe.grads()[r.clone()]);
        let wn = l2(&before[r.clone()]);
        let diff: Vec<f64> = probe.params()[r.clone()].iter().zip(&before[r]).map(|(a, b)| a - b).collect();
        assert_eq!(s.name, e.name);
        assert!((s.grad_norm - g).abs() <= 1e-12 * g, "{}: {} vs {g}", e.name, s.grad_norm);
        assert!((s.weight_norm - wn).abs() <= 1e-12 * wn);
        if wn == 0.0 {
            assert!(s.update_ratio.is_nan(), "zero weights: no ratio");
            continue;
        }
        let ratio = l2(&diff) / wn;
        assert!((s.update_ratio - ratio).abs() <= 1e-9 * ratio, "{}: {} vs {ratio}", e.name, s.update_ratio);
    }
    assert_eq!(model.params(), probe.params(), "diagnostics do not change the step");
    // Dead units: at least the 4 killed ones, and exactly those all-zero.
    let dead = (0..16).filter(|&u| (0..n).all(|r| hidden[r * 16 + u] == 0.0)).count();
    assert!(dead >= 4);
    assert_eq!(d.activations.len(), 1);
    assert_eq!((d.activations[0].layer, d.activations[0].stat), (1, ActivationStat::Dead));
    assert_eq!(d.activations[0].fraction, dead as f64 / 16.0);

    // A one-batch report changes nothing and matches the epoch's norms.
    let mut fresh = small_mlp(LayerSpec::Sigmoid(SigmoidSpec {}), 1);
    let (p0, g0, rng0) = (fresh.params().to_vec(), fresh.grads().to_vec(), fresh.rng_state());
    let rep = fresh.diagnose(data, &Loss::CrossEntropy.into()).expect("diagnose");
    assert_eq!((fresh.params(), fresh.grads(), fresh.rng_state()), (&p0[..], &g0[..], rng0));
    assert!(rep.params.iter().all(|p| p.update_ratio.is_nan() && p.grad_norm > 0.0));
    let out = fresh.forward(&Features::F64(&x), n, &[12], false).expect("forward").to_vec();
    let _ = out;
    let sig = &fresh.ws.acts[1][..n * 16];
    let sat = sig.iter().filter(|&&v| !(0.01..=0.99).contains(&v)).count() as f64 / (n * 16) as f64;
    assert_eq!(rep.activations[0].stat, ActivationStat::Saturated);
    assert_eq!(rep.activations[0].fraction, sat);
}

/// Diagnostics of a CNN (channels-last between its convolutions, fused
/// ReLU) count channels as units, and collecting them leaves the training
/// bits unchanged; a clipped epoch with a non-finite norm is an error.
#[test]
fn cnn_diagnostics_and_bits() {
    let n = 16;
    let mut r = Rng::new(5);
    let x: Vec<f32> = (0..n * 64).map(|_| (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let build = || {
        let conv = |i, o| {
            LayerSpec::Conv2D(Conv2DSpec {
                in_channels: i,
                out_channels: o,
                kernel_size: [3, 3],
                stride: [1, 1],
                padding: crate::Padding::Explicit([1, 1]),
                dilation: [1, 1],
                bias: true,
                init: Init::He,
            })
        };
        let specs = vec![
            conv(1, 4),
            LayerSpec::ReLU(ReLUSpec {}),
            conv(4, 6),
            LayerSpec::ReLU(ReLUSpec {}),
            LayerSpec::Flatten(FlattenSpec {}),
            LayerSpec::Dense(DenseSpec {
                in_features: 6 * 64,
                out_features: 3,
                bias: true,
                init: Init::Xavier,
            }),
        ];
        Sequential::<f32>::new(specs, 2).expect("model")
    };
    let run = |diagnostics: bool| {
        let mut m = build();
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let cfg =
            OptimConfig::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let data = Data::new(Features::F32(&x), n, &[1, 8, 8], Target::Labels(&y));
        let opts = EpochOptions { diagnostics, ..EpochOptions::new(Loss::CrossEntropy, 8) };
        m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch");
        (m.params().to_vec(), m.last_diagnostics().cloned())
    };
    let (p1, d) = run(true);
    let (p2, none) = run(false);
    assert_eq!(p1, p2);
    assert!(none.is_none());
    let d = d.expect("diagnostics");
    assert_eq!(d.steps, 2);
    assert_eq!(d.activations.iter().map(|a| a.layer).collect::<Vec<_>>(), vec![1, 3]);
    assert!(d.activations.iter().all(|a| (0.0..=1.0).contains(&a.fraction)));
    // Units are channels: fractions are multiples of 1/4 and 1/6 per step.
    let f = d.activations[0].fraction * 4.0 * 2.0;
    assert!((f - f.round()).abs() < 1e-9);

    let mut m = build();
    let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
    let cfg = OptimConfig::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
    let mut bad = x.clone();
    bad[3] = 1e30;
    let data = Data::new(Features::F32(&bad), n, &[1, 8, 8], Target::Labels(&y));
    let clip = Some(crate::ClipNorm::new(1.0, 2.0).expect("clip"));
    let opts = EpochOptions { clip, ..EpochOptions::new(Loss::CrossEntropy, 8) };
    let before = m.params().to_vec();
    let r = m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue));
    if let Err(e) = r {
        assert!(e.message.contains("gradient norm") || e.message.contains("loss"), "{}", e.message);
        assert_eq!(m.params(), &before[..], "the failed first step changed nothing");
    }
}
