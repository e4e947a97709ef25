//! Thread scaling of whole training epochs: `cargo bench -p ferrograd-core
//! --bench scaling -- [config] [threads...]`, e.g. `-- large 1 2 4 8 16`.
//!
//! Trains the same model from the same seed on synthetic MNIST-shaped data
//! (uint8 pixels, 10 classes) once per thread count; prints samples/s,
//! GFLOPS, the speed-up over the first thread count, and whether the weights
//! after training are bitwise identical to the first run's (they must be).

use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::rng::Rng;
use ferrograd::{threads, Data, EpochOptions, Features, Init, LayerSpec, Loss, Sequential, Target};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let config = args.first().cloned().unwrap_or_else(|| "large".into());
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![1, 2];
    }
    let (hidden, batch, adam): (Vec<usize>, usize, bool) = match config.as_str() {
        "small" => (vec![128], 32, false),
        "medium" => (vec![512, 512], 128, true),
        _ => (vec![1024, 1024], 256, true),
    };
    let n: usize = std::env::var("SCALING_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let epochs = 2;
    let mut r = Rng::new(1);
    let x: Vec<u8> = (0..n * 784).map(|_| (r.next_u64() >> 56) as u8).collect();
    let y: Vec<i64> = (0..n).map(|i| (x[i * 784 + 300] as i64 + x[i * 784 + 400] as i64) % 10).collect();
    let mut sizes = vec![784];
    sizes.extend_from_slice(&hidden);
    sizes.push(10);
    let flops: usize = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| 4 * w[0] * w[1] + if i > 0 { 2 * w[0] * w[1] } else { 0 })
        .sum();
    println!(
        "config {config}: 784-{}-10, batch {batch}, {}, {n} samples x {epochs} epochs (+1 warm-up)",
        hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
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
        let mut specs = vec![LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 }];
        let mut w = 784;
        for &h in &hidden {
            specs.push(LayerSpec::Dense { in_features: w, out_features: h, bias: true, init: Init::He });
            specs.push(LayerSpec::ReLU);
            w = h;
        }
        specs.push(LayerSpec::Dense { in_features: w, out_features: 10, bias: true, init: Init::Xavier });
        let mut model = Sequential::<f32>::new(specs, 0).expect("model");
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
            let data = Data { x: Features::U8(&x), n, shape: &[784], y: Target::Labels(&y) };
            let opts =
                EpochOptions { epoch: e, check: e == 0, ..EpochOptions::new(Loss::CrossEntropy, batch) };
            threads::install(|| model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(())))
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
            "| {t} | {sps:.0} | {:.0} | {speedup:.2}x | {} |",
            sps * flops as f64 / 1e9,
            if same { "yes" } else { "NO" }
        );
    }
}
