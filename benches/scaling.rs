//! Thread scaling of whole training epochs: `cargo bench -p ferrograd-core
//! --bench scaling -- [config] [threads...]`, e.g. `-- large 1 2 4 8 16`;
//! configs `small`, `medium`, `large` (the MLPs of `bench_train.py`) and
//! `cnn` (its CNN, batch 64, Adam).
//!
//! Trains the same model from the same seed on synthetic MNIST-shaped data
//! (uint8 pixels, 10 classes) once per thread count; prints samples/s,
//! GFLOPS, the speed-up over the first thread count, and whether the weights
//! after training are bitwise identical to the first run's (they must be).
//! `SCALING_SAMPLES` sets the samples per epoch (default 20,000; 4,000 for
//! the CNN).

use ferrograd::layers::{Conv2DSpec, DenseSpec, FlattenSpec, MaxPool2DSpec, ReLUSpec, RescalingSpec};
use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::rng::Rng;
use ferrograd::{
    threads, Data, EpochOptions, Features, Flow, Init, LayerSpec, Loss, Padding, Sequential, Target,
};
use std::time::Instant;

/// The benchmark CNN (`bench_train.py`'s), after a `Rescaling(1/255)`.
fn cnn() -> Vec<LayerSpec> {
    let conv = |cin, cout| {
        LayerSpec::Conv2D(Conv2DSpec {
            in_channels: cin,
            out_channels: cout,
            kernel_size: [5, 5],
            stride: [1, 1],
            padding: Padding::Same,
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        })
    };
    let pool = LayerSpec::MaxPool2D(MaxPool2DSpec { kernel_size: [2, 2], stride: [2, 2], padding: [0, 0] });
    vec![
        LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 }),
        conv(1, 32),
        LayerSpec::ReLU(ReLUSpec {}),
        pool.clone(),
        conv(32, 64),
        LayerSpec::ReLU(ReLUSpec {}),
        pool,
        LayerSpec::Flatten(FlattenSpec {}),
        LayerSpec::Dense(DenseSpec { in_features: 3136, out_features: 256, bias: true, init: Init::He }),
        LayerSpec::ReLU(ReLUSpec {}),
        LayerSpec::Dense(DenseSpec { in_features: 256, out_features: 10, bias: true, init: Init::Xavier }),
    ]
}

/// Forward, weight and input gradients per sample (the first layer needs
/// no input gradient).
fn cnn_flops() -> usize {
    let conv1 = 2 * 32 * 25 * 28 * 28;
    let conv2 = 2 * 64 * 800 * 14 * 14;
    2 * conv1 + 3 * conv2 + 3 * (2 * 3136 * 256 + 2 * 256 * 10)
}

fn mlp(hidden: &[usize]) -> (Vec<LayerSpec>, usize) {
    let mut specs = vec![LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 })];
    let mut w = 784;
    for &h in hidden {
        specs.push(LayerSpec::Dense(DenseSpec {
            in_features: w,
            out_features: h,
            bias: true,
            init: Init::He,
        }));
        specs.push(LayerSpec::ReLU(ReLUSpec {}));
        w = h;
    }
    specs.push(LayerSpec::Dense(DenseSpec {
        in_features: w,
        out_features: 10,
        bias: true,
        init: Init::Xavier,
    }));
    let mut sizes = vec![784];
    sizes.extend_from_slice(hidden);
    sizes.push(10);
    let flops = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| 4 * w[0] * w[1] + if i > 0 { 2 * w[0] * w[1] } else { 0 })
        .sum();
    (specs, flops)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let config = args.first().cloned().unwrap_or_else(|| "large".into());
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![1, 2];
    }
    let (specs, flops, batch, adam, shape, what): (Vec<LayerSpec>, usize, usize, bool, Vec<usize>, String) =
        match config.as_str() {
            "cnn" => (cnn(), cnn_flops(), 64, true, vec![1, 28, 28], "the benchmark CNN".into()),
            c => {
                let (hidden, batch, adam) = match c {
                    "small" => (vec![128], 32, false),
                    "medium" => (vec![512, 512], 128, true),
                    _ => (vec![1024, 1024], 256, true),
                };
                let (specs, flops) = mlp(&hidden);
                let name = hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-");
                (specs, flops, batch, adam, vec![784], format!("784-{name}-10"))
            }
        };
    let default_n = if config == "cnn" { 4_000 } else { 20_000 };
    let n: usize = std::env::var("SCALING_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_n);
    let epochs = 2;
    let mut r = Rng::new(1);
    let x: Vec<u8> = (0..n * 784).map(|_| (r.next_u64() >> 56) as u8).collect();
    let y: Vec<i64> = (0..n).map(|i| (x[i * 784 + 300] as i64 + x[i * 784 + 400] as i64) % 10).collect();
    println!(
        "config {config}: {what}, batch {batch}, {}, {n} samples x {epochs} epochs (+1 warm-up)",
        if adam { "Adam" } else { "SGD momentum" }
    );
    println!("| threads | samples/s | GFLOPS | speed-up | weights equal to first run |");
    println!("|---|---|---|---|---|");
    let mut first: Option<(f64, Vec<f32>)> = None;
    for &t in &counts {
        if let Err(e) = threads::set_num_threads(t) {
            eprintln!("skipping {t} threads: {e}");
            continue;
        }
        let mut model = Sequential::<f32>::new(specs.clone(), 0).expect("model");
        let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
        let cfg = if adam {
            OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
        } else {
            OptimConfig::Sgd { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
        };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let mut times = Vec::new();
        for e in 0..=epochs {
            let start = Instant::now();
            let data = Data::new(Features::U8(&x), n, &shape, Target::Labels(&y));
            let opts =
                EpochOptions { epoch: e, check: e == 0, ..EpochOptions::new(Loss::CrossEntropy, batch) };
            threads::install(|| model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)))
                .expect("pool")
                .expect("training");
            if e > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let sps = n as f64 / times[times.len() / 2];
        let params = model.params().to_vec();
        let (speedup, same) = match &first {
            None => (1.0, true),
            Some((base, p0)) => (sps / base, p0.iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits())),
        };
        if first.is_none() {
            first = Some((sps, params));
        }
        println!(
            "| {t} | {sps:.0} | {:.1} | {speedup:.2}x | {} |",
            sps * flops as f64 / 1e9,
            if same { "yes" } else { "NO" }
        );
    }
}
